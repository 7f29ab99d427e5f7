"""Loading and saving models: the published VAR state dicts, our safetensors format, presets, the Hub.

Published files (`vae_ch160v4096z32.pth`, `var_d16.pth` ...) are plain state dicts; their architecture
is inferred from tensor shapes. Our format is a folder with `config.json` and `model.safetensors`
(a transformer folder may hold its tokenizer in `tokenizer/`).

One rule for what `load_vae` / `load_var` accept (`resolve_model_path`): a model folder; a training run
folder, which stands for the model it wrote (RUN/model, or RUN/export of older tokenizer runs; load_vae
of a transformer run or model folder takes its tokenizer/); a state dict file; a preset name or Hub repo
id. A training checkpoint (checkpoints/step_N.pt, optimizer state included) is refused with the way to
a model: RUN/model or `nextscale export`. Without internet, presets fail fast (one short reachability
check, no retries) with the file to download and how to pass it; a copy in the Hugging Face cache is used.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Mapping

import torch

from nextscale import hub
from nextscale.baseline.raster_ar import RasterAR
from nextscale.model_folder import (CHECKPOINTS_SUBDIR, CONFIG_NAME, TOKENIZER_SUBDIR, WEIGHTS_NAME, CheckpointError,
                                    _as_state_dict, _checkpoint_files, _folder_kind, _model_subdir, _torch_load,
                                    _training_checkpoint_kind, _training_checkpoint_message, read_model_folder,
                                    read_state_dict, save_pretrained)
from nextscale.registry import HUB_PAGE, HUB_REPO, MODEL_TYPES, PRESETS, presets_of
from nextscale.tokenizer.vqvae import PATCH_NUMS_256, PATCH_NUMS_512, VQVAE, VQVAEConfig
from nextscale.transformer.var import VAR, VARConfig

__all__ = ["CheckpointError", "build_vae", "build_var", "load_vae", "load_var", "load_raster_ar", "load_pretrained",
           "resolve_model_path", "infer_vae_config", "infer_var_config", "read_state_dict", "save_pretrained"]

KNOWN_SCHEDULES = {sum(p * p for p in pn): pn for pn in (PATCH_NUMS_256, PATCH_NUMS_512)}
CONFIG_CLASSES = {name: t.config_class for name, t in MODEL_TYPES.items()}


def _architectures(kind: str) -> dict[str, object]:
    """preset name -> architecture, of the presets of one model type that have one (for "closest preset")."""
    return {name: p.config for name, p in presets_of(kind, with_config=True).items()}


def resolve_model_path(path: str | os.PathLike, kind: str) -> Path:
    """The model folder or weights file that a local `path` stands for, for a `kind` ('var' or 'vqvae') model.

    A model folder is itself; a training run folder stands for RUN/model (RUN/export of older tokenizer
    runs); for a tokenizer, a transformer model folder or run stands for its tokenizer/. A run with no model
    yet, a training checkpoint, or a folder of the other kind raises a CheckpointError that says what to pass.
    """
    if kind not in ("var", "vqvae"):
        raise ValueError(f"kind must be 'var' or 'vqvae', got {kind!r}")
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_file():
        if p.name == WEIGHTS_NAME and (p.parent / CONFIG_NAME).is_file():  # the weights of a model folder
            return resolve_model_path(p.parent, kind)
        return p
    what = "tokenizer" if kind == "vqvae" else "transformer"
    loader = "load_vae" if kind == "vqvae" else "load_var"
    if p.name == CHECKPOINTS_SUBDIR and not (p / CONFIG_NAME).is_file() and _checkpoint_files(p):
        return resolve_model_path(p.parent, kind)  # RUN/checkpoints stands for RUN
    if (p / CONFIG_NAME).is_file():  # a model folder
        found = _folder_kind(p)
        if kind == "vqvae" and found not in (None, "vqvae"):
            if (p / TOKENIZER_SUBDIR / CONFIG_NAME).is_file():
                return p / TOKENIZER_SUBDIR  # a transformer folder carries its tokenizer
            raise CheckpointError(f"{p} holds a {found!r} model, not a tokenizer, and no {TOKENIZER_SUBDIR}/ of its "
                                  f"own: pass the tokenizer it was trained with")
        if kind == "var" and found == "vqvae":
            raise CheckpointError(f"{p} holds a tokenizer, not a transformer: load it with load_vae({str(p)!r})")
        return p
    model = _model_subdir(p)
    run_tokenizer = p / TOKENIZER_SUBDIR if (p / TOKENIZER_SUBDIR / CONFIG_NAME).is_file() else None
    if kind == "vqvae":
        if model is not None and _folder_kind(model) == "vqvae":
            return model  # a tokenizer run
        if run_tokenizer is not None:
            return run_tokenizer  # a transformer run: the tokenizer it trains with
        if model is not None and (model / TOKENIZER_SUBDIR / CONFIG_NAME).is_file():
            return model / TOKENIZER_SUBDIR
        if model is not None:
            raise CheckpointError(f"{p} is a training run of a {_folder_kind(model)!r} model with no tokenizer/: pass "
                                  f"the tokenizer it was trained with")
    else:
        if model is not None:
            if _folder_kind(model) == "vqvae":
                raise CheckpointError(f"{p} is a tokenizer training run ({model.name}/ holds a tokenizer, not a "
                                      f"transformer): load it with load_vae({str(p)!r}), or train a transformer on it "
                                      f"with `nextscale train CONFIG tokenizer={shlex.quote(str(p))}`")
            return model
    checkpoints = _checkpoint_files(p)
    if checkpoints:
        run = p if (p / CHECKPOINTS_SUBDIR).is_dir() else p.parent
        if kind == "var":
            raise CheckpointError(f"{run} holds training checkpoints but no model/ yet (training has not finished): "
                                  f"`nextscale export {shlex.quote(str(run))} {shlex.quote(str(run / 'model'))}` "
                                  f"writes the newest checkpoint as a model folder")
        raise CheckpointError(f"{run} holds training checkpoints but no model/ yet: the tokenizer trainer writes "
                              f"{run / 'model'} with each checkpoint; run the same `nextscale train-tokenizer` "
                              f"command again to resume and write it")
    if run_tokenizer is not None or any((p / name).exists() for name in ("config.yaml", "metrics.jsonl",
                                                                            CHECKPOINTS_SUBDIR)):
        raise CheckpointError(f"{p} is a training run folder without a model or a checkpoint yet: training writes "
                              f"{p / 'model'} when it finishes (and checkpoints/ every checkpoint_every steps)")
    raise CheckpointError(f"{p} is not a {what} model folder ({CONFIG_NAME} + {WEIGHTS_NAME}) nor a training run "
                          f"folder (with model/); pass what `nextscale train{'-tokenizer' if kind == 'vqvae' else ''}` "
                          f"or `nextscale export` wrote, a .pth/.safetensors file, or a preset to {loader}")


def _read_weights(path: Path, kind: str) -> dict[str, torch.Tensor]:
    """A state dict file's tensors; a training checkpoint is refused with the way to a model."""
    if path.suffix == ".safetensors" or not path.is_file():
        return read_state_dict(path)
    obj = _torch_load(path)
    found = _training_checkpoint_kind(obj)
    if found is not None:
        raise CheckpointError(_training_checkpoint_message(path, found, kind))
    return _as_state_dict(obj, path)


def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of consecutive indexed children `prefix.0`, `prefix.1`, ... in a state dict."""
    n = 0
    while any(k.startswith(f"{prefix}.{n}.") for k in sd):
        n += 1
    return n


def _require(sd, keys, what):
    missing = [k for k in keys if k not in sd]
    if missing:
        raise CheckpointError(f"this is not a {what} checkpoint: it lacks {missing[:5]} "
                              f"(its first keys: {list(sd)[:5]})")


# ---------------------------------------------------------------------------------------- inference
def infer_vae_config(sd: Mapping[str, torch.Tensor], **overrides) -> VQVAEConfig:
    """Tokenizer architecture from the tensor shapes of a state dict."""
    _require(sd, ["encoder.conv_in.weight", "quantize.embedding.weight", "quant_conv.weight"], "tokenizer")
    ch = sd["encoder.conv_in.weight"].shape[0]
    levels = _count(sd, "encoder.down")
    ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in range(levels))
    num_scales = sd["quantize.ema_vocab_hit_SV"].shape[0] if "quantize.ema_vocab_hit_SV" in sd else 10
    inferred = dict(
        ch=ch, ch_mult=ch_mult, num_res_blocks=_count(sd, "encoder.down.0.block"),
        z_channels=sd["quant_conv.weight"].shape[0], vocab_size=sd["quantize.embedding.weight"].shape[0],
        phi_count=_count(sd, "quantize.quant_resi.qresi_ls"), image_channels=sd["encoder.conv_in.weight"].shape[1],
        patch_nums=PATCH_NUMS_256 if num_scales == 10 else tuple(range(1, num_scales + 1)),
    )
    inferred.update({k: v for k, v in overrides.items() if v is not None})
    return VQVAEConfig(**inferred)


def infer_var_config(sd: Mapping[str, torch.Tensor], patch_nums=None, **overrides) -> VARConfig:
    """Transformer architecture from the tensor shapes of a state dict."""
    _require(sd, ["pos_1LC", "class_emb.weight", "head.weight", "word_embed.weight"], "VAR transformer")
    C = sd["pos_1LC"].shape[-1]
    L = sd["pos_1LC"].shape[1]
    depth = _count(sd, "blocks")
    l2 = "blocks.0.attn.scale_mul_1H11" in sd
    if patch_nums is None:
        if L not in KNOWN_SCHEDULES:
            raise CheckpointError(f"the checkpoint has {L} token positions, which matches no known schedule "
                                  f"(680 = 256px, 2240 = 512px): pass patch_nums=... explicitly")
        patch_nums = KNOWN_SCHEDULES[L]
    patch_nums = tuple(patch_nums)
    if sum(p * p for p in patch_nums) != L:
        raise CheckpointError(f"patch_nums {list(patch_nums)} give {sum(p * p for p in patch_nums)} tokens "
                              f"but the checkpoint has {L}")
    inferred = dict(
        depth=depth, embed_dim=C,
        num_heads=sd["blocks.0.attn.scale_mul_1H11"].shape[1] if l2 else max(1, C // 64),
        num_classes=sd["class_emb.weight"].shape[0] - 1, vocab_size=sd["head.weight"].shape[0],
        vae_channels=sd["word_embed.weight"].shape[1], patch_nums=patch_nums,
        shared_adaln="shared_ada_lin.1.weight" in sd, attn_l2_norm=l2,
        mlp_ratio=sd["blocks.0.ffn.fc1.weight"].shape[0] / C if depth else 4.0,
    )
    inferred.update({k: v for k, v in overrides.items() if v is not None})
    return VARConfig(**inferred)


def _closest_preset(sd: Mapping[str, torch.Tensor], presets: Mapping[str, torch.nn.Module | object], build) -> str:
    best, best_score = None, -1.0
    for name, config in presets.items():
        with torch.device("meta"):
            ref = build(config).state_dict()
        same = sum(1 for k, v in sd.items() if k in ref and tuple(ref[k].shape) == tuple(v.shape))
        score = same / max(len(ref), len(sd))
        if score > best_score:
            best, best_score = name, score
    return f"{best} ({best_score:.0%} of keys match in name and shape)"


def _load_strict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], presets, build, source) -> None:
    _refuse_mismatch(model.state_dict(), sd, presets, build, source)
    model.load_state_dict(sd, strict=True)


def _build_fitting(build, config, sd: Mapping[str, torch.Tensor], presets, source) -> torch.nn.Module:
    """`build(config)` with the weights `sd`. The shapes are compared on the meta device first, so a config
    that claims a huge architecture is refused by the weights actually there before any memory is allocated."""
    with torch.device("meta"):
        _refuse_mismatch(build(config).state_dict(), sd, presets, build, source)
    model = build(config)
    model.load_state_dict(sd, strict=True)
    return model


def _refuse_mismatch(own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], presets, build,
                     source) -> None:
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong_shape:
        lines = [f"{source} does not fit the model it describes:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", wrong_shape)):
            if keys:
                shown = keys[:10] + ([f"... {len(keys) - 10} more"] if len(keys) > 10 else [])
                lines.append(f"  {title} ({len(keys)}): {', '.join(shown)}")
        if presets:
            lines.append(f"  closest preset: {_closest_preset(sd, presets, build)}")
        raise CheckpointError("\n".join(lines))


def _fetch_preset(name: str, kind: str) -> Path:
    """The published weights of preset `name` (from the Hugging Face cache, else downloaded)."""
    filename = PRESETS[name].hub_file
    loader = "load_vae" if kind == "vqvae" else "load_var"
    option = "--tokenizer" if kind == "vqvae" else "--transformer"
    how = (f"download {filename} from {HUB_PAGE} ({HUB_PAGE}/resolve/main/{filename}) and pass its path: "
           f"{loader}('/path/{filename}') (on the command line: {option} /path/{filename}); a copy already in the "
           f"Hugging Face cache is used without the internet")
    return hub.fetch_file(HUB_REPO, filename, name, how)


def _resolve(path_or_name: str | os.PathLike, kind: str) -> Path:
    """A local path (see resolve_model_path), a preset name (published weights from the Hub), or a Hub repo id."""
    presets = presets_of(kind)
    p = Path(path_or_name).expanduser()
    if p.exists():
        return resolve_model_path(p, kind)
    name = str(path_or_name)
    if name in presets and presets[name].hub_file:
        return _fetch_preset(name, kind)
    if name in PRESETS and PRESETS[name].asset:  # a model shipped with the package (its tokenizer inside)
        return resolve_model_path(PRESETS[name].asset_path(), kind)
    other = presets_of("var" if kind == "vqvae" else "vqvae")
    if name in other:
        raise CheckpointError(f"{name!r} is a {'transformer' if kind == 'vqvae' else 'tokenizer'} preset; "
                              f"{'load_vae' if kind == 'vqvae' else 'load_var'} takes one of: {', '.join(presets)}")
    first = name.split("/")[0]
    if name.count("/") == 1 and not name.startswith((".", "/", "~")) and "\\" not in name and not Path(first).is_dir():
        return resolve_model_path(hub.fetch_repo(name), kind)
    raise CheckpointError(f"checkpoint not found: {name!r} is neither a file, a folder, a preset "
                          f"({', '.join(sorted({*presets, *(n for n, p in PRESETS.items() if p.asset)}))}) nor a Hub repo "
                          f"id")


# ---------------------------------------------------------------------------------------- public API
def build_vae(preset: str = "vae-f16c32", **overrides) -> VQVAE:
    """A randomly initialized tokenizer of a named preset."""
    presets = _architectures("vqvae")
    if preset not in presets:
        raise ValueError(f"unknown tokenizer preset {preset!r}; presets: {', '.join(presets)}")
    return VQVAE(presets[preset], **overrides)


def build_var(preset: str = "var-d16", **overrides) -> VAR:
    """A transformer of a named preset (weights initialized for training from scratch)."""
    presets = _architectures("var")
    if preset not in presets:
        raise ValueError(f"unknown transformer preset {preset!r}; presets: {', '.join(presets)}")
    return VAR(presets[preset], **overrides)


def load_vae(path: str | os.PathLike, patch_nums=None, **overrides) -> VQVAE:
    """Load a tokenizer: a published `.pth`, a `.safetensors` file, a nextscale folder, a preset or Hub id.

    A training run folder stands for its tokenizer: RUN/model of `nextscale train-tokenizer` (RUN/export of
    older runs), RUN/tokenizer of `nextscale train`; a transformer model folder for its tokenizer/.

    The architecture comes from the folder's config or the tensors' shapes; keyword arguments
    override it (e.g. `patch_nums` for a schedule other than 256px, `lookup="cosine"`).
    """
    path = _resolve(path, "vqvae")
    overrides = dict(overrides, patch_nums=tuple(patch_nums) if patch_nums is not None else None)
    if path.is_dir():
        meta, sd = read_model_folder(path, "vqvae", CONFIG_CLASSES)
        config = VQVAEConfig.from_dict({**meta["config"], **{k: v for k, v in overrides.items() if v is not None}})
    else:
        sd = _read_weights(path, "vqvae")
        config = infer_vae_config(sd, **overrides)
    return _build_fitting(VQVAE, config, sd, _architectures("vqvae"), str(path)).eval()


def load_var(path: str | os.PathLike, vae: VQVAE | None = None, patch_nums=None, **overrides) -> VAR:
    """Load a transformer and attach its tokenizer (`vae`, or the folder's own `tokenizer/`).

    `path`: a model folder, a `nextscale train` run folder (its model/), a `.pth`/`.safetensors` state dict,
    a preset (var-d16 ...) or a Hub repo id. A training checkpoint is refused: export it (`nextscale export`).

    With a tokenizer given, `patch_nums` defaults to the schedule the checkpoint's token count implies,
    and the tokenizer is switched to it (the published tokenizer serves both 256px and 512px).
    """
    path = _resolve(path, "var")
    extra = {}
    if path.is_dir():
        meta, sd = read_model_folder(path, "var", CONFIG_CLASSES)
        extra = {k: v for k, v in meta.items() if k not in ("model_type", "config")}
        config = VARConfig.from_dict({**meta["config"], **overrides})
        if patch_nums is not None and tuple(patch_nums) != tuple(config.patch_nums):
            # The folder records its schedule; another one would not fit the weights (or silently be ignored).
            raise CheckpointError(f"{path} is a model of the scale schedule {','.join(map(str, config.patch_nums))}"
                                  f", not {','.join(map(str, patch_nums))}: leave patch_nums out (a model folder "
                                  f"records its own)")
        if vae is None and (path / TOKENIZER_SUBDIR).is_dir():
            vae = load_vae(path / TOKENIZER_SUBDIR)
    else:
        sd = _read_weights(path, "var")
        config = infer_var_config(sd, patch_nums=patch_nums or _vae_schedule_if_fits(sd, vae), **overrides)
    model = _build_fitting(VAR, config, sd, _architectures("var"), str(path))
    model.extra_config = extra
    if vae is not None:
        model.attach_tokenizer(vae)
    return model.eval()


def _vae_schedule_if_fits(sd, vae: VQVAE | None):
    """Use the tokenizer's schedule when its token count matches the checkpoint's (custom schedules)."""
    if vae is None or "pos_1LC" not in sd:
        return None
    L = sd["pos_1LC"].shape[1]
    if L in KNOWN_SCHEDULES:
        return None
    return vae.patch_nums if sum(p * p for p in vae.patch_nums) == L else None


def load_raster_ar(folder: str | os.PathLike, vae: VQVAE | None = None) -> RasterAR:
    """Load a raster-scan AR baseline model folder (`nextscale export` of a `model.kind: raster_ar` run) and attach
    its tokenizer (`vae`, or the folder's own `tokenizer/`)."""
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file() and (folder / "model" / CONFIG_NAME).is_file():
        folder = folder / "model"  # a training run folder stands for its model/, as for load_var
    meta, sd = read_model_folder(folder, "raster_ar", CONFIG_CLASSES)
    model = _build_fitting(RasterAR, MODEL_TYPES["raster_ar"].config_class.from_dict(meta["config"]), sd, {},
                           str(folder))
    model.extra_config = {k: v for k, v in meta.items() if k not in ("model_type", "config")}
    if vae is None and (folder / TOKENIZER_SUBDIR / CONFIG_NAME).is_file():
        vae = load_vae(folder / TOKENIZER_SUBDIR)
    if vae is not None:
        model.attach_tokenizer(vae)
    return model.eval()


def load_pretrained(name: str = "fashion-mnist", device=None) -> VAR:
    """A transformer shipped with the package, by name, with its tokenizer attached, in eval mode.

    `var.extra_config` holds `class_names` and the recommended `sampling` settings (cfg, top_k, top_p).
    """
    shipped = {n: p for n, p in PRESETS.items() if p.asset and p.model_type == "var"}
    if name not in shipped:
        raise CheckpointError(f"unknown pretrained model {name!r}; shipped: {', '.join(shipped)}")
    var = load_var(shipped[name].asset_path())
    return var.to(device) if device is not None else var
