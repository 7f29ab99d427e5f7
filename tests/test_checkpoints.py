"""Checkpoint loading: presets vs the published manifest, our format, and bad files."""

import json
from pathlib import Path

import pytest
import torch

import nextscale
from nextscale.checkpoints import _architectures, _load_strict, infer_vae_config, infer_var_config
from nextscale.model_folder import CheckpointError
from nextscale.tokenizer import VQVAE
from tiny_models import TINY_TOKENIZER, TINY_TRANSFORMER
from nextscale.transformer import VAR

VAE_PRESETS, VAR_PRESETS = _architectures("vqvae"), _architectures("var")

MANIFEST_NAMES = {"vae-f16c32": "vae_ch160v4096z32", "var-d16": "var_d16", "var-d20": "var_d20",
                  "var-d24": "var_d24", "var-d30": "var_d30", "var-d36": "var_d36"}


@pytest.fixture(scope="module")
def manifest(reference_file):
    return json.loads(reference_file("official_checkpoint_manifest.json").read_text())


def _meta_state_dict(entries: dict) -> dict:
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    return {k: torch.empty(v["shape"], dtype=dtypes[v["dtype"]], device="meta")
            for k, v in entries.items() if not k.startswith("__")}


@pytest.mark.parametrize("preset", list(MANIFEST_NAMES))
def test_preset_state_dict_equals_published_manifest(preset, manifest):
    entries = manifest[MANIFEST_NAMES[preset]]
    build = VQVAE if preset in VAE_PRESETS else VAR
    config = VAE_PRESETS.get(preset) or VAR_PRESETS[preset]
    with torch.device("meta"):
        model = build(config)
    ours = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    theirs = {k: (v["shape"], v["dtype"]) for k, v in entries.items() if not k.startswith("__")}
    assert sorted(set(theirs) - set(ours)) == [] and sorted(set(ours) - set(theirs)) == []
    assert ours == theirs
    if "count" in entries.get("__params__", {}):
        assert sum(p.numel() for p in model.parameters()) + sum(
            b.numel() for n, b in model.named_buffers() if "ema_vocab" in n) >= entries["__params__"]["count"] * 0.99


@pytest.mark.parametrize("preset", list(MANIFEST_NAMES))
def test_synthesized_published_state_dict_loads_and_infers_the_preset(preset, manifest):
    sd = _meta_state_dict(manifest[MANIFEST_NAMES[preset]])
    if preset in VAE_PRESETS:
        config, presets, build = infer_vae_config(sd), VAE_PRESETS, VQVAE
    else:
        config, presets, build = infer_var_config(sd), VAR_PRESETS, VAR
    assert config == presets[preset]
    with torch.device("meta"):
        model = build(config)
    _load_strict(model, sd, presets, build, preset)  # raises on any missing/unexpected key or shape


def test_published_var_patch_nums_come_from_token_count(manifest):
    assert infer_var_config(_meta_state_dict(manifest["var_d36"])).patch_nums == (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
    assert infer_var_config(_meta_state_dict(manifest["var_d16"])).patch_nums == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def test_save_load_round_trip_is_exact(tiny_models, tmp_path):
    vae, var = tiny_models
    with torch.no_grad():
        vae.quantize.ema_vocab_hit_SV.uniform_()
    var.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "tokenizer" / "model.safetensors").is_file()
    loaded = nextscale.load_var(tmp_path / "model")
    assert loaded.config == var.config and loaded.tokenizer.config == vae.config
    for a, b in ((var, loaded), (vae, loaded.tokenizer)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    loaded_vae = nextscale.load_vae(tmp_path / "model" / "tokenizer")
    assert loaded_vae.config == vae.config


def test_reference_pth_loads_with_inferred_config(ref_vae, ref_var, ref_config):
    c = ref_config
    assert ref_vae.config.ch == c["vae"]["ch"] and list(ref_vae.config.ch_mult) == c["vae"]["ch_mult"]
    assert ref_vae.config.z_channels == c["vae"]["z_channels"] and ref_vae.vocab_size == c["vae"]["vocab_size"]
    assert ref_var.config.depth == c["var"]["depth"] and ref_var.config.embed_dim == c["var"]["embed_dim"]
    assert ref_var.num_classes == c["var"]["num_classes"] and ref_var.config.num_heads == c["var"]["num_heads"]


def test_plain_state_dicts_load_with_inferred_config(tiny_pth, tiny_vae, tiny_var):
    """Files saved like the released ones (plain state dicts, no config): the architecture is inferred from the
    keys and shapes, the weights are the saved ones."""
    assert tiny_vae.config == nextscale.VQVAEConfig(**TINY_TOKENIZER)
    # drop_path_rate is for training, not in the weights: the default for the depth
    assert tiny_var.config == nextscale.VARConfig(**{**TINY_TRANSFORMER, "drop_path_rate": None})
    for model, path in ((tiny_vae, tiny_pth["vae"]), (tiny_var, tiny_pth["var"])):
        saved, loaded = torch.load(path, map_location="cpu"), model.state_dict()
        assert saved.keys() == loaded.keys() and all(torch.equal(loaded[k], v) for k, v in saved.items())


def test_unknown_token_count_asks_for_patch_nums(tiny_pth):
    with pytest.raises(CheckpointError, match="pass patch_nums"):
        nextscale.load_var(tiny_pth["var"])


def test_wrong_file_lists_keys_and_closest_preset(tiny_pth):
    with pytest.raises(CheckpointError, match="not a VAR transformer checkpoint"):
        nextscale.load_var(tiny_pth["vae"])


def test_mismatched_state_dict_names_missing_unexpected_and_closest_preset(tiny_models, tmp_path):
    _, var = tiny_models
    sd = var.state_dict()
    sd.pop("head.bias")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        nextscale.load_var(path, patch_nums=(1, 2, 3, 4))
    msg = str(err.value)
    assert "missing keys (1): head.bias" in msg and "unexpected keys (1): extra.weight" in msg
    assert "closest preset: var-d" in msg


def test_truncated_files_are_clear_errors(tiny_models, tmp_path):
    vae, _ = tiny_models
    torch.save(vae.state_dict(), tmp_path / "vae.pth")
    data = (tmp_path / "vae.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        nextscale.load_vae(tmp_path / "cut.pth")
    vae.save_pretrained(tmp_path / "folder")
    weights = tmp_path / "folder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        nextscale.load_vae(tmp_path / "folder")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_that_runs_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"weight": torch.zeros(1), "payload": _RunsCode(marker)}, f)
    with pytest.raises(CheckpointError, match="would run code"):
        nextscale.load_vae(path)
    assert not marker.exists()
    # The payload really does run under an unsafe loader: the test would catch a regression.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        nextscale.load_vae(tmp_path / "nope.pth")


# ---------------------------------------------------------------------------------------- presets offline
def _load_in_fresh_process(tmp_path, call: str, **env) -> dict:
    """Run `call` (e.g. load_var('var-d16')) in a fresh interpreter with an empty Hugging Face cache under
    tmp_path (unless HF_HOME is given); returns {"ok", "seconds" (the call alone), "error", "type"}."""
    import os
    import subprocess
    import sys
    code = ("import json, sys, time\n"
            "import nextscale\n"
            "from nextscale import load_var, load_vae\n"
            "t = time.perf_counter()\n"
            "try:\n"
            f"    m = {call}\n"
            "    out = {'ok': True, 'type': type(m).__name__}\n"
            "except Exception as e:\n"
            "    out = {'ok': False, 'type': type(e).__name__, 'error': str(e)}\n"
            "out['seconds'] = time.perf_counter() - t\n"
            "print('RESULT' + json.dumps(out))\n")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full_env.update({"HF_HOME": str(tmp_path / "hf")}, **env)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=full_env)
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, done.stderr[-2000:]
    return json.loads(line[-1][len("RESULT"):])


def _assert_says_how_to_get(result: dict, filename: str, loader: str):
    assert not result["ok"] and result["type"] == "CheckpointError", result
    msg = result["error"]
    assert filename in msg and "https://huggingface.co/FoundationVision/var" in msg
    assert f"{loader}('/path/{filename}')" in msg
    assert "Hugging Face cache" in msg and "\n" not in msg


def test_preset_with_hf_hub_offline_fails_at_once_naming_the_file(tmp_path):
    result = _load_in_fresh_process(tmp_path, "load_var('var-d16')", HF_HUB_OFFLINE="1",
                                    HF_ENDPOINT="http://127.0.0.1:9")  # would be refused if tried anyway
    _assert_says_how_to_get(result, "var_d16.pth", "load_var")
    assert "HF_HUB_OFFLINE" in result["error"]
    assert result["seconds"] < 1.5, result


def test_preset_without_network_fails_fast_naming_the_file(tmp_path):
    # Nothing listens on port 9: like a machine without network (no retries, no 25 s of backoff).
    result = _load_in_fresh_process(tmp_path, "load_vae('vae-f16c32')", HF_ENDPOINT="http://127.0.0.1:9")
    _assert_says_how_to_get(result, "vae_ch160v4096z32.pth", "load_vae")
    assert "cannot be reached" in result["error"]
    assert result["seconds"] < 2.0, result


def test_preset_on_this_machine_without_network(tmp_path):
    from nextscale.hub import hub_unreachable
    if hub_unreachable() is None:
        pytest.skip("the Hugging Face Hub is reachable from here: the preset would be downloaded")
    result = _load_in_fresh_process(tmp_path, "load_var('var-d16')")
    _assert_says_how_to_get(result, "var_d16.pth", "load_var")
    assert result["seconds"] < 5.0, result


def test_preset_with_a_hub_that_never_answers_gives_up_after_one_short_wait(tmp_path):
    import socket
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts connections into the backlog, never answers
    try:
        port = server.getsockname()[1]
        result = _load_in_fresh_process(tmp_path, "load_var('var-d16')", HF_ENDPOINT=f"http://127.0.0.1:{port}")
    finally:
        server.close()
    _assert_says_how_to_get(result, "var_d16.pth", "load_var")
    assert "timed out" in result["error"] or "did not answer" in result["error"]
    assert result["seconds"] < 4.5, result  # one wait of HUB_CHECK_TIMEOUT_S (2.5 s), no retries


def test_preset_file_already_in_the_hugging_face_cache_is_used_offline(tiny_models, tmp_path):
    vae, _ = tiny_models
    snapshot = tmp_path / "hf" / "hub" / "models--FoundationVision--var" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    torch.save(vae.state_dict(), snapshot / "vae_ch160v4096z32.pth")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    result = _load_in_fresh_process(tmp_path, "load_vae('vae-f16c32')", HF_HUB_OFFLINE="1")
    assert result["ok"] and result["type"] == "VQVAE", result
    result = _load_in_fresh_process(tmp_path, "load_vae('vae-f16c32')", HF_ENDPOINT="http://127.0.0.1:9")
    assert result["ok"], result  # the cache is looked at before the network


def test_preset_of_the_other_kind_and_unknown_names(tmp_path):
    with pytest.raises(CheckpointError, match="'var-d16' is a transformer preset; load_vae takes one of: vae-f16c32"):
        nextscale.load_vae("var-d16")
    with pytest.raises(CheckpointError, match="neither a file, a folder, a preset"):
        nextscale.load_var(tmp_path / "nope")


def test_shipped_model_loads_by_name():
    var = nextscale.load_var("fashion-mnist")
    assert var.tokenizer is not None and var.extra_config.get("class_names")
    assert isinstance(nextscale.load_vae("fashion-mnist"), VQVAE)


# ---------------------------------------------------------------------------------------- config.json schema
def test_every_architecture_field_has_a_rule_in_the_config_schema():
    """check_model_config checks the type of every field and the range of every numeric one: a new numeric field
    of VARConfig, VQVAEConfig or RasterARConfig without a range fails here."""
    import dataclasses
    import typing

    from nextscale.config_schema import ranges_of
    from nextscale.model_folder import CONFIG_CHOICES
    from nextscale.registry import MODEL_TYPES
    for kind, cls in ((k, t.config_class) for k, t in MODEL_TYPES.items()):
        hints = typing.get_type_hints(cls)
        ranges = ranges_of(cls)
        for field in dataclasses.fields(cls):
            text = str(hints[field.name])
            if hints[field.name] is bool:
                continue
            if hints[field.name] is str or "str" in text:
                assert field.name in CONFIG_CHOICES, f"{kind}: config.{field.name} has no allowed values"
            else:
                assert field.name in ranges, f"{kind}: config.{field.name} has no range"


def test_a_config_claiming_a_huge_model_is_refused_by_its_weights_before_any_allocation(tiny_models, tmp_path,
                                                                                        monkeypatch):
    """The architecture is built on the meta device and compared with the weights first: a config.json that
    claims a model far larger than its weights costs no memory."""
    import nextscale.checkpoints as checkpoints
    _, var = tiny_models
    var.save_pretrained(tmp_path / "model")
    path = tmp_path / "model" / "config.json"
    meta = json.loads(path.read_text())
    meta["config"].update(embed_dim=1024, num_heads=2)
    path.write_text(json.dumps(meta))
    devices = []
    real_var = checkpoints.VAR

    def recording(*args, **kwargs):
        devices.append(torch.empty(0).device.type)
        return real_var(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "VAR", recording)
    with pytest.raises(CheckpointError, match="does not fit the model it describes"):
        nextscale.load_var(tmp_path / "model")
    assert devices and set(devices) == {"meta"}


def test_a_model_folder_keeps_its_schedule(tiny_models, tmp_path):
    _, var = tiny_models
    var.save_pretrained(tmp_path / "model")
    assert nextscale.load_var(tmp_path / "model", patch_nums=(1, 2, 3, 4)).patch_nums == (1, 2, 3, 4)
    with pytest.raises(CheckpointError, match="is a model of the scale schedule 1,2,3,4, not 1,2,3"):
        nextscale.load_var(tmp_path / "model", patch_nums=(1, 2, 3))


def test_empty_files_say_so(tmp_path):
    for name in ("vae.pth", "vae.safetensors"):
        (tmp_path / name).touch()
        with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)"):
            nextscale.load_vae(tmp_path / name)


def test_save_pretrained_replaces_files_whole(tiny_models, tmp_path, monkeypatch):
    """An interrupted save (the trainers write model/ with every checkpoint) leaves the previous files whole."""
    import nextscale.checkpoints as checkpoints
    import nextscale.model_folder as model_folder
    vae, _ = tiny_models
    vae.save_pretrained(tmp_path / "tok")
    before = {p.name: p.read_bytes() for p in (tmp_path / "tok").iterdir()}

    def interrupted(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(model_folder, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_pretrained(vae, tmp_path / "tok")
    assert {p.name: p.read_bytes() for p in (tmp_path / "tok").iterdir()} == before
