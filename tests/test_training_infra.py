"""Shared training infrastructure: configs, checkpoints, metrics, datasets and transforms."""

import os
import random
import stat
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from PIL import Image

from nextscale.data.datasets import (DataConfig, EmptyDatasetError, ImageFolderDataset, ImageTransform,
                                     build_dataset)
from nextscale.files import atomic_write
from nextscale.training.checkpointing import (CheckpointManager, capture_rng_state, load_checkpoint,
                                              restore_rng_state)
from nextscale.config_schema import ConfigError, config_to_dict
from nextscale.training.config import load_config, save_config
from nextscale.training.metrics import MetricsLogger, plot_curves, read_jsonl
from refusals import png_claiming, refused


@dataclass
class Inner:
    lr: float = 1e-4
    betas: tuple[float, ...] = (0.9, 0.95)


@dataclass
class Outer:
    steps: int = 10
    name: str | None = None
    flag: bool = False
    optim: Inner = field(default_factory=Inner)


# ---------------------------------------------------------------------------- config
def test_config_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 7\noptim:\n  betas: [0.5, 0.9]\n")
    cfg = load_config(Outer, path, ["optim.lr=3e-4", "name=run1", "flag=true"])
    assert cfg == Outer(steps=7, name="run1", flag=True, optim=Inner(lr=3e-4, betas=(0.5, 0.9)))
    assert load_config(Outer, path, ["optim.betas=0.1,0.2"]).optim.betas == (0.1, 0.2)


def test_config_round_trip(tmp_path):
    cfg = load_config(Outer, None, ["steps=3", "optim.betas=[0.8, 0.7]"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(Outer, tmp_path / "saved.yaml") == cfg
    assert config_to_dict(cfg)["optim"]["betas"] == [0.8, 0.7]


@pytest.mark.parametrize("override, message", [
    ("stepz=3", "unknown config key(s): stepz"),
    ("optim.lrr=1", "optim.lrr"),
    ("steps=many", "steps must be an integer"),
    ("flag=3", "flag must be true or false"),
    ("noequals", "key=value"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(Outer, None, [override])


# ---------------------------------------------------------------------------- checkpoints
def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"good")

    def fail(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, fail)
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)], ids=["022", "002", "077"])
def test_atomic_writes_get_the_permissions_of_a_plain_open(umask, mode, tmp_path):
    """atomic_write's temp file comes from mkstemp (0600): checkpoints, their .yaml, a run's config.yaml and
    rewritten metrics.jsonl stayed private to their owner whatever the umask."""
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
        checkpoint = CheckpointManager(tmp_path / "checkpoints").save(1, {"step": 1}, config=Outer())
        save_config(Outer(), tmp_path / "config.yaml")
    finally:
        os.umask(old)
    for path in (tmp_path / "a.bin", checkpoint, checkpoint.with_suffix(".yaml"), tmp_path / "config.yaml"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, (path, oct(path.stat().st_mode))


def test_checkpoint_manager_keeps_last_k_and_config(tmp_path):
    manager = CheckpointManager(tmp_path / "ck", keep_last=2)
    assert manager.latest() is None
    for step in (5, 10, 15):
        manager.save(step, {"w": torch.full((2,), float(step))}, config=Outer(steps=step))
    assert [s for s, _ in manager.all()] == [10, 15]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "step_00000010.pt", "step_00000010.yaml", "step_00000015.pt", "step_00000015.yaml"]
    assert load_checkpoint(manager.latest())["w"].tolist() == [15.0, 15.0]
    assert load_config(Outer, tmp_path / "ck" / "step_00000015.yaml").steps == 15


def test_random_states_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(123)
    state = capture_rng_state({"data": gen})
    first = (random.random(), np.random.rand(), torch.rand(3).tolist(), torch.rand(2, generator=gen).tolist())
    CheckpointManager(tmp_path).save(1, {"rng": state})
    random.random(), np.random.rand(), torch.rand(5), torch.rand(5, generator=gen)  # move every stream on
    restore_rng_state(load_checkpoint(tmp_path / "step_00000001.pt")["rng"], {"data": gen})
    again = (random.random(), np.random.rand(), torch.rand(3).tolist(), torch.rand(2, generator=gen).tolist())
    assert again == first


# ---------------------------------------------------------------------------- metrics
def test_metrics_jsonl_and_plot(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    for step in range(1, 31):
        logger.log(step, loss=torch.tensor(1.0 / step), acc=step / 30)
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 31, "loss"')  # a crash mid-line is ignored when reading
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(records) == 30 and records[-1]["loss"] == pytest.approx(1 / 30) and records[0]["acc"] == pytest.approx(1 / 30)
    png = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png", ["loss", "acc", "missing"], log_y=["loss"])
    with Image.open(png) as im:  # drawn by matplotlib (metrics.py tests the panels themselves)
        assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 200


def test_disabled_logger_writes_nothing(tmp_path):
    logger = MetricsLogger(tmp_path / "x", enabled=False)
    logger.log(1, loss=1.0)
    logger.close()
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------- data
def _write_images(folder, names, size=(12, 10), seed=0):
    rng = np.random.default_rng(seed)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_image_folder_labels_from_class_subfolders(tmp_path):
    _write_images(tmp_path, ["cat/a.png", "cat/deep/b.jpg", "dog/c.png"])
    ds = ImageFolderDataset(tmp_path, ImageTransform(8, train=False))
    assert ds.classes == ["cat", "dog"] and sorted(ds.labels) == [0, 0, 1]
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1


def test_image_folder_without_subfolders_is_unlabelled(tmp_path):
    _write_images(tmp_path, ["a.png", "b.png", "sub/c.png"])
    ds = ImageFolderDataset(tmp_path, ImageTransform(8, train=False))
    assert ds.labels == [0, 0, 0] and ds.num_classes == 1


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    _write_images(tmp_path, ["a/good1.png", "a/good2.png"])
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "a" / "truncated.jpg").write_bytes((tmp_path / "a" / "good1.png").read_bytes()[:40])
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        verified = ImageFolderDataset(tmp_path, ImageTransform(8, train=False), verify=True)
    assert len(verified) == 2 and verified.num_skipped == 2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lazy = ImageFolderDataset(tmp_path, ImageTransform(8, train=False))
        assert len(lazy) == 4
        images = [lazy[i][0] for i in range(len(lazy))]  # no exception: bad files are replaced by the next one
    assert lazy.num_skipped == 2 and all(x.shape == (3, 8, 8) for x in images)


def test_images_over_the_pixel_cap_are_skipped_from_their_header(tmp_path, capsys):
    """A PNG claiming 50000x50000 met Pillow's DecompressionBombError and one claiming 20 megapixels (under Pillow's
    own cap) was decoded whole: both are now refused from the header by images.open_image's cap, skipped with one
    warning line naming the file and the limit; a folder of nothing else is a one-line error."""
    _write_images(tmp_path / "data", ["a/good1.png", "b/good2.png"])
    big = png_claiming(tmp_path / "data" / "a" / "big.png", 5000, 4000)
    bomb = png_claiming(tmp_path / "data" / "b" / "bomb.png", 50000, 50000)
    with pytest.warns(UserWarning) as record:
        verified = ImageFolderDataset(tmp_path / "data", ImageTransform(8, train=False), verify=True)
    assert len(verified) == 2 and sorted(verified.skipped) == [str(big), str(bomb)]
    messages = [str(w.message) for w in record]
    assert messages[0].startswith(f"skipping unreadable image {big} (is 5000x4000 = 20.0 megapixels; the limit is "
                                  f"16 megapixels: make it smaller first)")
    assert messages[1].startswith(f"skipping unreadable image {bomb} (claims more than")
    assert "the limit is 16 megapixels" in messages[1] and all("\n" not in m for m in messages)

    lazy = ImageFolderDataset(tmp_path / "data", ImageTransform(8, train=False))
    index = lazy.files.index(big)
    with pytest.warns(UserWarning, match=r"big.png \(is 5000x4000 = 20.0 megapixels; the limit is 16 megapixels"):
        x, label = lazy[index]  # replaced by the next file
    assert torch.equal(x, lazy[index + 1][0]) and lazy.skipped == [str(big)]

    only = tmp_path / "only"
    png_claiming(only / "a" / "big.png", 5000, 4000)
    png_claiming(only / "b" / "bomb.png", 50000, 50000)
    with pytest.warns(UserWarning, match="the limit is 16 megapixels"):
        refused(["train-tokenizer", f"out_dir={tmp_path / 'run'}", f"data.path={only}", "data.kind=image_folder",
                 "data.verify=true", "data.resolution=8", "model.ch_mult=1,2", "model.patch_nums=1,2,4", "steps=1",
                 "threads=1"], capsys, f"no readable image found under {only}", "2 unreadable file(s) skipped")


def test_empty_dataset_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(EmptyDatasetError, match="no readable image found"):
        ImageFolderDataset(tmp_path, ImageTransform(8, train=False))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(EmptyDatasetError, match="1 unreadable"):
        ImageFolderDataset(tmp_path, ImageTransform(8, train=False), verify=True)
    with pytest.raises(EmptyDatasetError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", ImageTransform(8, train=False))


def test_transforms_resize_crop_flip():
    arr = np.zeros((20, 40), dtype=np.uint8)
    arr[:, :20] = 255  # left half white
    im = Image.fromarray(arr)
    center = ImageTransform(10, train=False, channels=1)(im)
    assert center.shape == (1, 10, 10)
    assert center[0, :, 0].min() == 1.0 and center[0, :, -1].max() == -1.0  # the crop straddles the edge
    torch.manual_seed(0)
    crops = {tuple(ImageTransform(10, train=True, channels=1)(im).flatten().tolist()) for _ in range(20)}
    assert len(crops) > 1  # random crops move
    square = Image.fromarray(np.ascontiguousarray(arr[:10, 15:25]))  # 10x10: left half white, no crop freedom
    flips = {ImageTransform(10, train=True, channels=3, hflip=True)(square)[0, 5, 0].item() for _ in range(30)}
    assert flips == {-1.0, 1.0}
    assert {ImageTransform(10, train=True, channels=3)(square)[0, 5, 0].item() for _ in range(10)} == {1.0}
    assert ImageTransform(10, train=False, channels=3)(im).shape == (3, 10, 10)


@pytest.mark.usefixtures("fashion_mnist")
def test_fashion_mnist_dataset_channels():
    ds3 = build_dataset(DataConfig(kind="fashion_mnist", channels=3), train=False)
    ds1 = build_dataset(DataConfig(kind="fashion_mnist", channels=1), train=False)
    x3, y3 = ds3[0]
    x1, y1 = ds1[0]
    assert len(ds3) == 10000 and ds3.num_classes == 10 and y1 == y3
    assert x3.shape == (3, 32, 32) and x1.shape == (1, 32, 32)
    assert torch.equal(x3[0], x1[0]) and torch.equal(x3[1], x3[2])
    assert x1.min() == -1.0 and x1[0, :2].max() == -1.0  # black 2-pixel padding


# ---------------------------------------------------------------------------- data.kind=auto, held-out split
def test_kind_auto_picks_an_image_folder_or_fashion_mnist(tmp_path, request):
    from nextscale.data.datasets import FashionMNISTDataset
    _write_images(tmp_path / "imgs", ["cat/a.png", "dog/b.png"])
    assert DataConfig().kind == "auto"
    folder = build_dataset(DataConfig(path=str(tmp_path / "imgs"), resolution=8), train=True)
    assert isinstance(folder, ImageFolderDataset) and folder.classes == ["cat", "dog"]
    assert DataConfig().resolved_kind() == "fashion_mnist"
    idx = tmp_path / "fmnist"
    idx.mkdir()
    (idx / "train-images-idx3-ubyte.gz").write_bytes(b"")
    assert DataConfig(path=str(idx)).resolved_kind() == "fashion_mnist"
    # An explicit fashion_mnist with a folder of images says what to set.
    with pytest.raises(ValueError, match=r"set data.kind=image_folder \(or auto\)"):
        build_dataset(DataConfig(kind="fashion_mnist", path=str(tmp_path / "imgs")), train=True)
    with pytest.raises(ValueError, match="data.kind must be auto, fashion_mnist or image_folder"):
        build_dataset(DataConfig(kind="folder", path=str(tmp_path / "imgs")), train=True)
    request.getfixturevalue("fashion_mnist")
    fm = build_dataset(DataConfig(max_images=100), train=False)
    assert isinstance(fm, FashionMNISTDataset) and len(fm) == 100 and len(set(fm.labels)) == 10


def test_eval_fraction_holds_out_the_same_images_of_each_class(tmp_path):
    from nextscale.data.datasets import NoHeldOutData
    _write_images(tmp_path, [f"{c}/{i}.png" for c in ("a", "b", "c") for i in range(10)])
    cfg = DataConfig(path=str(tmp_path), resolution=8, eval_fraction=0.2)
    train, held = build_dataset(cfg, train=True), build_dataset(cfg, train=False)
    assert len(train) == 24 and len(held) == 6 and sorted(held.labels) == [0, 0, 1, 1, 2, 2]
    assert not set(train.files) & set(held.files)
    again = build_dataset(DataConfig(path=str(tmp_path), resolution=8, eval_fraction=0.2), train=False)
    assert again.files == held.files  # deterministic: tokenize and train agree on the split
    with pytest.raises(NoHeldOutData, match="set data.eval_path=FOLDER or data.eval_fraction"):
        build_dataset(DataConfig(path=str(tmp_path), resolution=8), train=False)
    spread = build_dataset(DataConfig(path=str(tmp_path), resolution=8, max_images=6), train=True)
    assert len(spread) == 6 and sorted(set(spread.labels)) == [0, 1, 2]  # spread over the classes


def test_help_of_the_training_commands_documents_the_image_folder_convention(capsys):
    from nextscale.cli import main
    for command in ("train", "train-tokenizer", "tokenize"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for needed in ("one subfolder per class", "class names = subfolder names", "sorted order", ".jpg", ".webp",
                       "skipped with a warning and counted", "resized (shorter side", "data.resolution"):
            assert needed in text, (command, needed)


@pytest.mark.parametrize("argv, message", [
    (["train", "steps=-5"], "steps must be at least 1, got -5"),
    (["train", "log_every=0"], "log_every must be at least 1, got 0"),
    (["train", "eval_every=-1"], "eval_every must be 0 (off) or more, got -1"),
    (["train-tokenizer", "steps=0"], "steps must be at least 1, got 0"),
    (["train-tokenizer", "global_batch=0"], "global_batch must be at least 1, got 0"),
    (["train-tokenizer", "checkpoint_every=-2"], "checkpoint_every must be 0 (only at the end) or more, got -2"),
])
def test_counts_out_of_range_are_refused_before_any_work(argv, message, tmp_path, capsys):
    """steps=-5 used to "train" 0 steps and export; log_every=0 crashed with ZeroDivisionError mid-run."""
    refused([*argv, f"out_dir={tmp_path / 'run'}"], capsys, message, alone=True)
    assert not (tmp_path / "run").exists()
