"""Loading and saving models: the published VAR state dicts, our safetensors format, presets, the Hub.

Published files (`vae_ch160v4096z32.pth`, `var_d16.pth` ...) are plain state dicts; their architecture
is inferred from tensor shapes. Our format is a folder with `config.json` and `model.safetensors`
(a transformer folder may hold its tokenizer in `tokenizer/`).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nextscale.tokenizer.vqvae import PATCH_NUMS_256, PATCH_NUMS_512, VQVAE, VQVAEConfig
from nextscale.transformer.var import VAR, VARConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_SUBDIR = "tokenizer"

# Named presets: architecture, and the published file on the Hub for users with the internet.
VAE_PRESETS: dict[str, VQVAEConfig] = {"vae-f16c32": VQVAEConfig()}
VAR_PRESETS: dict[str, VARConfig] = {
    "var-d16": VARConfig(depth=16),
    "var-d20": VARConfig(depth=20),
    "var-d24": VARConfig(depth=24),
    "var-d30": VARConfig(depth=30),
    "var-d36": VARConfig(depth=36, shared_adaln=True, patch_nums=PATCH_NUMS_512),
}
HUB_REPO = "FoundationVision/var"
HUB_FILES = {"vae-f16c32": "vae_ch160v4096z32.pth", "var-d16": "var_d16.pth", "var-d20": "var_d20.pth",
             "var-d24": "var_d24.pth", "var-d30": "var_d30.pth", "var-d36": "var_d36.pth"}
KNOWN_SCHEDULES = {sum(p * p for p in pn): pn for pn in (PATCH_NUMS_256, PATCH_NUMS_512)}


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the model."""


# ---------------------------------------------------------------------------------------- reading
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a `.pth`/`.pt` (pickled, with weights_only=True) or `.safetensors` state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a valid safetensors file ({e}); it may be truncated") from e
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing to load {path}: it is not a plain tensor checkpoint and would run code "
                              f"when unpickled (weights_only=True blocked: {str(e).splitlines()[0]})") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {str(e).splitlines()[0]} (truncated or not a checkpoint?)") from e
    if isinstance(sd, Mapping):
        for key in ("model", "state_dict", "trainer"):  # training checkpoints wrap the weights
            if key in sd and isinstance(sd[key], Mapping) and not isinstance(sd[key], torch.Tensor):
                sd = sd[key]
                break
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(sd)


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
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong_shape:
        lines = [f"{source} does not fit the model it describes:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", wrong_shape)):
            if keys:
                shown = keys[:10] + ([f"... {len(keys) - 10} more"] if len(keys) > 10 else [])
                lines.append(f"  {title} ({len(keys)}): {', '.join(shown)}")
        lines.append(f"  closest preset: {_closest_preset(sd, presets, build)}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------------------------------- our format
def save_pretrained(model: VQVAE | VAR, folder: str | os.PathLike) -> Path:
    """Write `config.json` + `model.safetensors` (and the attached tokenizer of a VAR in `tokenizer/`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kind = model.model_type
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(sd, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "model_type": kind})
    (folder / CONFIG_NAME).write_text(json.dumps({"model_type": kind, "config": model.config.to_dict(),
                                                  **getattr(model, "extra_config", {})}, indent=2) + "\n")
    tokenizer = getattr(model, "tokenizer", None)
    if kind != "vqvae" and tokenizer is not None:
        save_pretrained(tokenizer, folder / TOKENIZER_SUBDIR)
    return folder


def _read_folder(folder: Path, expected_kind: str) -> tuple[dict, dict[str, torch.Tensor]]:
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{folder} is not a nextscale model folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        meta = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path} is not valid JSON: {e}") from e
    if meta.get("model_type") != expected_kind:
        raise CheckpointError(f"{folder} holds a {meta.get('model_type')!r} model, not a {expected_kind!r}")
    return meta, read_state_dict(weights_path)


def _resolve(path_or_name: str | os.PathLike, presets: Mapping) -> Path:
    """A local path, a preset name (published weights from the Hub), or a Hub repo id."""
    p = Path(path_or_name)
    if p.exists():
        return p
    name = str(path_or_name)
    try:
        if name in presets and name in HUB_FILES:
            from huggingface_hub import hf_hub_download
            return Path(hf_hub_download(HUB_REPO, HUB_FILES[name]))
        if name.count("/") == 1 and not name.startswith((".", "/")):
            from huggingface_hub import snapshot_download
            return Path(snapshot_download(name))
    except Exception as e:  # no internet, no such repo, huggingface_hub missing ...
        raise CheckpointError(f"could not fetch {name!r} from the Hugging Face Hub ({type(e).__name__}: {e}); "
                              f"download the file elsewhere and pass its local path") from e
    raise CheckpointError(f"checkpoint not found: {name!r} is neither a file, a folder, a preset "
                          f"({', '.join(presets)}) nor a Hub repo id")


# ---------------------------------------------------------------------------------------- public API
def build_vae(preset: str = "vae-f16c32", **overrides) -> VQVAE:
    """A randomly initialized tokenizer of a named preset."""
    if preset not in VAE_PRESETS:
        raise ValueError(f"unknown tokenizer preset {preset!r}; presets: {', '.join(VAE_PRESETS)}")
    return VQVAE(VAE_PRESETS[preset], **overrides)


def build_var(preset: str = "var-d16", **overrides) -> VAR:
    """A transformer of a named preset (weights initialized for training from scratch)."""
    if preset not in VAR_PRESETS:
        raise ValueError(f"unknown transformer preset {preset!r}; presets: {', '.join(VAR_PRESETS)}")
    return VAR(VAR_PRESETS[preset], **overrides)


def load_vae(path: str | os.PathLike, patch_nums=None, **overrides) -> VQVAE:
    """Load a tokenizer: a published `.pth`, a `.safetensors` file, a nextscale folder, a preset or Hub id.

    The architecture comes from the folder's config or the tensors' shapes; keyword arguments
    override it (e.g. `patch_nums` for a schedule other than 256px, `lookup="cosine"`).
    """
    path = _resolve(path, VAE_PRESETS)
    overrides = dict(overrides, patch_nums=tuple(patch_nums) if patch_nums is not None else None)
    if path.is_dir():
        meta, sd = _read_folder(path, "vqvae")
        config = VQVAEConfig.from_dict({**meta["config"], **{k: v for k, v in overrides.items() if v is not None}})
    else:
        sd = read_state_dict(path)
        config = infer_vae_config(sd, **overrides)
    model = VQVAE(config)
    _load_strict(model, sd, VAE_PRESETS, VQVAE, str(path))
    return model.eval()


def load_var(path: str | os.PathLike, vae: VQVAE | None = None, patch_nums=None, **overrides) -> VAR:
    """Load a transformer and attach its tokenizer (`vae`, or the folder's own `tokenizer/`).

    With a tokenizer given, `patch_nums` defaults to the schedule the checkpoint's token count implies,
    and the tokenizer is switched to it (the published tokenizer serves both 256px and 512px).
    """
    path = _resolve(path, VAR_PRESETS)
    extra = {}
    if path.is_dir():
        meta, sd = _read_folder(path, "var")
        extra = {k: v for k, v in meta.items() if k not in ("model_type", "config")}
        config_dict = dict(meta["config"])
        if patch_nums is not None:
            config_dict["patch_nums"] = list(patch_nums)
        config = VARConfig.from_dict({**config_dict, **overrides})
        if vae is None and (path / TOKENIZER_SUBDIR).is_dir():
            vae = load_vae(path / TOKENIZER_SUBDIR)
    else:
        sd = read_state_dict(path)
        config = infer_var_config(sd, patch_nums=patch_nums or _vae_schedule_if_fits(sd, vae), **overrides)
    model = VAR(config)
    _load_strict(model, sd, VAR_PRESETS, VAR, str(path))
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
