"""Where the command line writes (issue 14): one check of every output before any work (a file or a read-only
folder in the way, a full disk, names that collide, existing files), writes that are all or nothing, and
memory that does not grow with the number of images."""

import errno
import os
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nextscale
from conftest import TINY_TOKENIZER, TINY_TRANSFORMER
from nextscale.cli import main
from nextscale.editing import inpaint_keep_mask
from nextscale.images import load_images, to_model_input, to_uint8_hwc
from refusals import refused


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random tokenizer and transformer, and the transformer's model folder (tokenizer/ inside)."""
    torch.manual_seed(0)
    vae = nextscale.VQVAE(nextscale.VQVAEConfig(**TINY_TOKENIZER)).eval()
    var = nextscale.VAR(nextscale.VARConfig(**TINY_TRANSFORMER)).eval()
    var.init_weights()
    var.attach_tokenizer(vae)
    folder = nextscale.save_pretrained(var, tmp_path_factory.mktemp("models") / "tiny")
    return vae, var, folder


@pytest.fixture
def model_dir(tiny):
    return tiny[2]


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if an image is generated or edited: every refusal here must come before that."""
    def refuse(*args, **kwargs):
        raise AssertionError("an image was computed before the output location was refused")
    monkeypatch.setattr(nextscale, "sample", refuse)
    monkeypatch.setattr(nextscale, "edit", refuse)


def snapshot(folder):
    """{relative path: bytes} of every file under `folder`, hidden ones (temp files) included."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_image(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------- sample
def test_sample_out_that_is_a_file_is_refused_before_sampling(model_dir, tmp_path, capsys, no_work):
    """Found only after all the sampling work (a FileExistsError at the first write)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    refused(["sample", "--model", model_dir, "--out", blocker], capsys, f"--out {blocker}", "is a file",
            "choose another --out")
    refused(["sample", "--model", model_dir, "--out", blocker / "deeper"], capsys, f"{blocker} is a file")
    assert blocker.read_text() == "keep me"


def test_sample_out_that_cannot_be_written_is_refused_before_sampling(model_dir, tmp_path, capsys, no_work,
                                                                      monkeypatch):
    """A read-only folder: the probe file written (and deleted) by the check fails, before any image."""
    import tempfile
    real_mkstemp = tempfile.mkstemp

    def read_only(*args, **kwargs):
        if str(kwargs.get("prefix", "")).startswith(".nextscale-write-test-"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    refused(["sample", "--model", model_dir, "--out", tmp_path / "new" / "out"], capsys,
            f"cannot write in {tmp_path / 'new' / 'out'} (Permission denied)", "choose another --out")
    assert not (tmp_path / "new").exists()  # the folders the check made for nothing are gone again


def _a_folder_nobody_here_may_write(tmp_path):
    """A real folder where creating a file fails: a 0555 folder, or for root (who writes into those) /sys,
    which Linux refuses to root too. None where neither holds."""
    if os.name != "posix":
        return None
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    import tempfile
    for candidate in (Path("/sys/kernel"), Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(probe)
    return None


def test_sample_into_a_real_read_only_folder(model_dir, tmp_path, capsys, no_work):
    folder = _a_folder_nobody_here_may_write(tmp_path)
    if folder is None:
        pytest.skip("no folder here refuses writes to this user")
    try:
        refused(["sample", "--model", model_dir, "--out", folder], capsys, f"cannot write in {folder}")
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(0o755)


def test_sample_onto_a_full_disk_is_refused_before_sampling(model_dir, tmp_path, capsys, no_work, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5000, 5000))
    refused(["sample", "--model", model_dir, "--npz", "--out", tmp_path / "o"], capsys,
            "--out", "to write but only 5.0 kB free on that disk", "free some space")


def test_a_disk_that_fills_up_while_writing_leaves_the_previous_outputs(model_dir, tmp_path, capsys, monkeypatch):
    """Writes are all or nothing: the grid, each image folder and the .npz appear whole or not at all (temp files
    renamed into place), so a failure during --overwrite keeps the previous run's outputs as they were."""
    out = tmp_path / "o"
    argv = ["sample", "--model", model_dir, "--class", "1,2", "--num-per-class", "2", "--npz", "--out", out]
    assert main([str(a) for a in argv]) == 0
    before = snapshot(out)
    real_save = Image.Image.save
    calls = []

    def disk_full_at_the_third_image(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", disk_full_at_the_third_image)
    refused([*argv, "--seed", "9", "--overwrite"], capsys, "No space left on device")
    assert snapshot(out) == before  # nothing replaced, no temp file left behind


def test_sample_overwrite_replaces_the_images_folder_whole(model_dir, tmp_path, capsys):
    """A smaller rerun with --overwrite left the first run's extra images beside the new ones (eval read both)."""
    out = tmp_path / "o"
    assert main(["sample", "--model", str(model_dir), "--class", "3", "--num-per-class", "3", "--no-grid",
                 "--out", str(out)]) == 0
    assert main(["sample", "--model", str(model_dir), "--class", "4", "--num-per-class", "1", "--no-grid",
                 "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["class004_00000.png"]
    # A folder holding anything else is not replaced, --overwrite or not.
    (out / "images" / "notes.txt").write_text("mine")
    refused(["sample", "--model", model_dir, "--class", "4", "--num-per-class", "1", "--no-grid", "--out", out,
             "--overwrite"], capsys, f"{out / 'images'} holds files this command does not write (notes.txt)")
    assert (out / "images" / "notes.txt").read_text() == "mine"


def test_sample_streams_batches_to_disk(tiny, tmp_path, monkeypatch):
    """Bounded memory: one sampler call per batch (each image still from seed + i), images written as they come;
    the .npz is the one np.savez would write, and equals the PNGs and Python's per-image-seed images."""
    _, var, model_dir = tiny
    sizes = []
    real_sample = nextscale.sample

    def recording(var, labels=None, **kwargs):
        sizes.append(kwargs["num_samples"] if labels is None else len(labels))
        return real_sample(var, labels, **kwargs)

    monkeypatch.setattr(nextscale, "sample", recording)
    out = tmp_path / "o"
    assert main(["sample", "--model", str(model_dir), "--num-images", "5", "--batch-size", "2", "--seed", "3",
                 "--npz", "--out", str(out)]) == 0
    assert sizes == [2, 2, 1]
    with np.load(out / "samples.npz", allow_pickle=False) as data:
        arr, labels = data["arr_0"], data["labels"]
    python = real_sample(var, None, seed=3, per_image_seeds=True, num_samples=5, batch_size=2)
    assert labels.tolist() == python.labels.tolist() and arr.shape == (5, 64, 64, 3)
    assert np.array_equal(arr, to_uint8_hwc(python.images))
    names = sorted(p.name for p in (out / "images").iterdir())
    assert len(names) == 5 and not [p for p in out.iterdir() if p.name.startswith(".")]


def test_the_grid_of_many_images_shows_the_first_ones(model_dir, tmp_path, monkeypatch, capsys):
    import nextscale.commands.sample as sample_command
    monkeypatch.setattr(sample_command, "GRID_MAX_PIXELS", 5 * 66 * 66)
    assert main(["sample", "--model", str(model_dir), "--class", "1,2,3", "--num-per-class", "2", "--no-images",
                 "--out", str(tmp_path)]) == 0
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (2 * 66 + 2, 2 * 66 + 2)  # 4 images: whole rows of 2, at most 5 cells
    assert "grid.png (the first 4)" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- edit
def test_edit_out_that_is_a_file_is_refused_before_editing(model_dir, tmp_path, capsys, no_work):
    image = write_image(tmp_path / "in.png")
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    refused(["edit", "--model", model_dir, "--image", image, "--box", "0,0,0.5,0.5", "--out", blocker], capsys,
            f"--out {blocker}", "is a file")
    assert blocker.read_text() == "keep me"


def test_edit_checks_every_output_before_the_first_edit(model_dir, tmp_path, capsys, no_work):
    """The outputs were checked per image: with two images it wrote the first and then refused the second."""
    first, second = write_image(tmp_path / "a.png"), write_image(tmp_path / "b.png", 1)
    out = tmp_path / "edits"
    out.mkdir()
    (out / "b_compare.png").write_text("an earlier edit")
    refused(["edit", "--model", model_dir, "--image", first, "--image", second, "--box", "0,0,0.5,0.5",
             "--out", out], capsys, f"{out / 'b_compare.png'} already exists", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["b_compare.png"]


def test_edit_inputs_with_the_same_name_are_refused_before_the_first_edit(model_dir, tmp_path, capsys, no_work):
    first, second = write_image(tmp_path / "x" / "in.png"), write_image(tmp_path / "y" / "in.png", 1)
    refused(["edit", "--model", model_dir, "--image", first, "--image", second, "--box", "0,0,0.5,0.5",
             "--out", tmp_path / "edits"], capsys,
            f"--image {first} and --image {second} would both write {tmp_path / 'edits' / 'in_edited.png'}")
    assert not (tmp_path / "edits").exists()


def test_edit_variations_come_in_batches_with_their_own_seeds(tiny, tmp_path):
    """--num up to 100, regenerated 16 at a time: variation j is still the one of seed + j."""
    _, var, model_dir = tiny
    image = write_image(tmp_path / "in.png")
    assert main(["edit", "--model", str(model_dir), "--image", str(image), "--box", "0,0,0.5,1", "--num", "18",
                 "--seed", "4", "--save-tokens", "--out", str(tmp_path / "e")]) == 0
    tokens = np.load(tmp_path / "e" / "in_tokens.npz")
    assert tokens["scale_3"].shape == (18, 16)
    keep = inpaint_keep_mask((0, 0, 0.5, 1), 4)
    picture = to_model_input(load_images(image), 64, 3)
    last = nextscale.edit(var, picture, keep, seed=4 + 17, per_image_seeds=True)
    assert np.array_equal(tokens["scale_3"][17], last.tokens[3][0].numpy())


# ---------------------------------------------------------------------------------------- export
@pytest.fixture
def run_dir(tiny, tmp_path):
    """A `nextscale train` run folder as the trainer leaves it before the end: tokenizer/ and one checkpoint."""
    from nextscale.training.token_cache import tokenizer_identity
    vae, var, _ = tiny
    run = tmp_path / "run"
    vae.save_pretrained(run / "tokenizer")
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": var.state_dict(), "model_config": var.config.to_dict(), "optimizer": {}, "step": 3,
                "tokenizer": tokenizer_identity(vae)}, run / "checkpoints" / "step_00000003.pt")
    return run


def test_export_refuses_to_replace_a_model_without_overwrite(run_dir, tmp_path, capsys):
    """It silently replaced the config.json and model.safetensors of an existing model folder."""
    out = tmp_path / "model"
    assert main(["export", str(run_dir), str(out)]) == 0
    assert nextscale.load_var(out).extra_config["trained_steps"] == 3
    before = snapshot(out)
    refused(["export", run_dir, out], capsys, f"{out} already exists", "pass --overwrite")
    assert snapshot(out) == before
    assert main(["export", str(run_dir), str(out), "--overwrite"]) == 0
    assert nextscale.load_var(out).extra_config["trained_steps"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "run"]  # no temp folder left


def test_export_to_a_file_is_one_line_before_reading_the_checkpoint(run_dir, tmp_path, capsys, monkeypatch):
    """It was a traceback, after the checkpoint was read."""
    import nextscale.training.var_trainer as var_trainer

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the output was checked")

    monkeypatch.setattr(var_trainer, "checkpoint_to_model", refuse)
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    refused(["export", run_dir, blocker], capsys, f"{blocker} is a file", "choose another OUT")
    assert blocker.read_text() == "keep me"


def test_export_of_a_run_whose_newest_checkpoint_is_damaged_uses_the_newest_that_loads(run_dir, tmp_path, capsys):
    """A truncated newest checkpoint made export of the run fail, while resume=auto falls back past it: export now
    falls back the same way, says which it skipped and which step it exported, and leaves the run as it is."""
    from nextscale.training.checkpointing import DamagedCheckpointWarning
    checkpoints = run_dir / "checkpoints"
    data = (checkpoints / "step_00000003.pt").read_bytes()
    damaged = checkpoints / "step_00000005.pt"
    damaged.write_bytes(data[:len(data) // 2])
    with pytest.warns(DamagedCheckpointWarning, match=f"skipping the damaged checkpoint {damaged}, using an older "
                                                      f"one if any: cannot read checkpoint"):
        assert main(["export", str(run_dir), str(tmp_path / "model")]) == 0
    assert f"wrote {tmp_path / 'model'} from the checkpoint of step 3" in capsys.readouterr().out
    assert nextscale.load_var(tmp_path / "model").extra_config["trained_steps"] == 3
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000003.pt", "step_00000005.pt"]  # untouched
    assert damaged.read_bytes() == data[:len(data) // 2]
    # The damaged checkpoint named itself: one line, no fallback.
    refused(["export", damaged, tmp_path / "other"], capsys, f"cannot read checkpoint {damaged}",
            "pass the run folder to use its newest checkpoint that loads")
    # None loads: one line.
    (checkpoints / "step_00000003.pt").write_bytes(data[:100])
    with pytest.warns(DamagedCheckpointWarning):
        refused(["export", run_dir, tmp_path / "other"], capsys,
                f"none of the 2 checkpoint(s) in {checkpoints} can be read (the newest, step_00000005.pt")
    assert not (tmp_path / "other").exists()


def test_export_never_replaces_a_folder_holding_other_files(run_dir, capsys):
    before = snapshot(run_dir)
    refused(["export", run_dir, run_dir, "--overwrite"], capsys,
            f"{run_dir} holds files this command does not write (checkpoints)")
    assert snapshot(run_dir) == before


def test_an_interrupted_export_leaves_no_half_written_model(run_dir, tmp_path, monkeypatch):
    import nextscale.checkpoints as checkpoints
    real_save = checkpoints.save_pretrained

    def interrupted(model, folder):
        real_save(model.tokenizer, folder)  # some files written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save_pretrained", interrupted)
    assert main(["export", str(run_dir), str(tmp_path / "model")]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_outputs_written_through_temp_files_keep_the_usual_permissions(run_dir, tmp_path):
    """Temp files and folders are made private (0600 / 0700), as are safetensors files; renamed into place they
    must not stay so."""
    mask = os.umask(0o022)
    try:
        assert main(["export", str(run_dir), str(tmp_path / "model")]) == 0
        assert main(["sample", "--model", str(tmp_path / "model"), "--class", "1", "--num-per-class", "1", "--npz",
                     "--out", str(tmp_path / "s")]) == 0
    finally:
        os.umask(mask)
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777
             for p in [*(tmp_path / "model").rglob("*"), *(tmp_path / "s").rglob("*"), tmp_path / "model",
                       tmp_path / "s" / "images"]}
    assert {name: mode for name, mode in modes.items() if mode != (0o755 if (tmp_path / name).is_dir() else 0o644)} \
        == {}
