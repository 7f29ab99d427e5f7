"""Token cache: a dataset tokenized once, so that training never runs the tokenizer's encoder.

A cache is a folder:
  header.json       format version, the tokenizer's identity, patch_nums, counts, dtype
  tokens.npy        (N, L) token indices of all scales concatenated (scale 1 first, row-major within a scale)
  tokens_flip.npy   (N, L) the same for the horizontally flipped images (only when built with flip)
  labels.npy        (N,) int64 class ids

The `.npy` files are opened memory-mapped, so a cache larger than RAM works and every worker of a
data loader shares the page cache. Indices are uint16 when the vocabulary fits (<= 65536 codes).

The tokenizer's identity is its architecture hash (`VQVAEConfig.identity_hash()`) plus a hash of the
weights that decide the tokens; training refuses a cache whose identity differs from its tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

FORMAT_VERSION = 1
HEADER_NAME = "header.json"


class TokenCacheError(ValueError):
    """A token cache is missing, damaged, or was made by another tokenizer."""


# ---------------------------------------------------------------------------------------- identity
def tokenizer_weights_hash(vae) -> str:
    """sha256 over the tensors that decide the tokens and the teacher-forcing input.

    The codebook-usage buffer is left out: it is training statistics and changes nothing the
    transformer sees. The decoder is left out too (tokens do not depend on it), so a tokenizer
    whose decoder was fine-tuned keeps its caches.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        if name.startswith("decoder.") or name.startswith("post_quant_conv.") or name.endswith("ema_vocab_hit_SV"):
            continue
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def tokenizer_identity(vae) -> dict:
    """What a cache records about the tokenizer that made it."""
    return {"config_hash": vae.config.identity_hash(), "weights_hash": tokenizer_weights_hash(vae),
            "config": vae.config.to_dict()}


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


# ---------------------------------------------------------------------------------------- reading
@dataclass
class TokenCache:
    """An opened cache: memory-mapped token rows, labels and the header."""

    path: Path
    header: dict
    tokens: np.ndarray          # (N, L) memmap
    tokens_flip: np.ndarray | None
    labels: np.ndarray          # (N,)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "TokenCache":
        path = Path(path)
        header_path = path / HEADER_NAME
        if not header_path.is_file():
            raise TokenCacheError(f"{path} is not a token cache (no {HEADER_NAME}); make one with `nextscale tokenize`")
        try:
            header = json.loads(header_path.read_text())
        except json.JSONDecodeError as e:
            raise TokenCacheError(f"{header_path} is not valid JSON ({e}); rebuild the cache") from e
        if header.get("format_version") != FORMAT_VERSION:
            raise TokenCacheError(f"{path} has cache format {header.get('format_version')}, this version reads "
                                  f"{FORMAT_VERSION}; rebuild it with `nextscale tokenize`")
        try:
            tokens = np.load(path / "tokens.npy", mmap_mode="r")
            labels = np.load(path / "labels.npy")
            tokens_flip = np.load(path / "tokens_flip.npy", mmap_mode="r") if header.get("flip") else None
        except (OSError, ValueError) as e:
            raise TokenCacheError(f"cannot read the token cache {path}: {e}; rebuild it") from e
        n, L = header["num_images"], header["seq_len"]
        shapes_ok = tokens.shape == (n, L) and labels.shape == (n,) and (tokens_flip is None or tokens_flip.shape == (n, L))
        if not shapes_ok:
            raise TokenCacheError(f"{path} is damaged: the header says {n} images of {L} tokens but the arrays have "
                                  f"shapes {tokens.shape} / {labels.shape}; rebuild it")
        return cls(path, header, tokens, tokens_flip, labels)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return tuple(self.header["patch_nums"])

    @property
    def has_flip(self) -> bool:
        return self.tokens_flip is not None

    def check_tokenizer(self, vae) -> None:
        """Raise TokenCacheError unless this cache was made by exactly this tokenizer."""
        made_by = self.header["tokenizer"]
        problems = []
        if made_by["config_hash"] != vae.config.identity_hash():
            differ = sorted(k for k, v in vae.config.to_dict().items() if made_by["config"].get(k) != v)
            problems.append(f"architecture differs ({', '.join(differ) or 'config hash'})")
        elif made_by["weights_hash"] != tokenizer_weights_hash(vae):
            problems.append(f"weights differ (hash {made_by['weights_hash']} in the cache vs "
                            f"{tokenizer_weights_hash(vae)} of the tokenizer)")
        if problems:
            raise TokenCacheError(f"the token cache {self.path} was made by another tokenizer: {'; '.join(problems)}. "
                                  f"Rebuild it with `nextscale tokenize --tokenizer <the tokenizer you train with>`, "
                                  f"or train with the tokenizer named in its header.json")

    def rows(self, indices: np.ndarray, flipped: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, L) int64 and labels (B,) of the given rows; `flipped[i]` picks the flipped copy."""
        indices = np.asarray(indices)
        toks = np.asarray(self.tokens[indices], dtype=np.int64)
        if flipped is not None and self.tokens_flip is not None and flipped.any():
            toks[flipped] = np.asarray(self.tokens_flip[indices[flipped]], dtype=np.int64)
        return torch.from_numpy(toks), torch.from_numpy(np.asarray(self.labels[indices], dtype=np.int64))


def split_scales(tokens_BL: torch.Tensor, patch_nums) -> list[torch.Tensor]:
    """(B, L) concatenated tokens -> one (B, pn*pn) tensor per scale."""
    return list(torch.split(tokens_BL, [pn * pn for pn in patch_nums], dim=1))


# ---------------------------------------------------------------------------------------- writing
@torch.no_grad()
def build_token_cache(vae, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_images: int,
                      out: str | os.PathLike, flip: bool = False, source: str = "", overwrite: bool = False,
                      device: torch.device | str = "cpu", progress: bool = True,
                      classes: list[str] | None = None, data: dict | None = None) -> Path:
    """Encode `batches` of (images (B, C, H, W) in [-1, 1], labels (B,)) into a cache folder `out`.

    `classes`: the dataset's class names (their count is the number of classes training defaults to).
    `data`: what the images were read with (e.g. the DataConfig as a dict), recorded in the header so that
    training can tell whether its held-out images were left out of the cache.

    The folder is written under a temporary name and renamed when complete, so an interrupted run
    never leaves a cache that looks valid.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise TokenCacheError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    if num_images <= 0:
        raise TokenCacheError("the dataset is empty: nothing to tokenize")
    vae = vae.to(device).eval()
    L = sum(pn * pn for pn in vae.patch_nums)
    dtype = token_dtype(vae.vocab_size)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tokens = np.lib.format.open_memmap(tmp / "tokens.npy", mode="w+", dtype=dtype, shape=(num_images, L))
    tokens_flip = (np.lib.format.open_memmap(tmp / "tokens_flip.npy", mode="w+", dtype=dtype, shape=(num_images, L))
                   if flip else None)
    labels = np.zeros(num_images, dtype=np.int64)
    bar = None
    if progress:
        from nextscale.progress import progress_bar
        bar = progress_bar(total=num_images, desc="tokenizing", unit="img")
    n = 0
    try:
        for images, batch_labels in batches:
            b = images.shape[0]
            if n + b > num_images:
                raise TokenCacheError(f"the data gave more than the announced {num_images} images")
            images = images.to(device)
            tokens[n:n + b] = torch.cat(vae.encode_tokens(images), dim=1).cpu().numpy().astype(dtype)
            if flip:
                tokens_flip[n:n + b] = torch.cat(vae.encode_tokens(images.flip(-1)), dim=1).cpu().numpy().astype(dtype)
            labels[n:n + b] = np.asarray(batch_labels, dtype=np.int64)
            n += b
            if bar is not None:
                bar.update(b)
        if n != num_images:
            raise TokenCacheError(f"the data gave {n} images, {num_images} were announced")
        for arr in (tokens, tokens_flip):
            if arr is not None:
                arr.flush()
        del tokens, tokens_flip
        np.save(tmp / "labels.npy", labels)
        header = {"format_version": FORMAT_VERSION, "num_images": num_images, "seq_len": L,
                  "patch_nums": list(vae.patch_nums), "vocab_size": vae.vocab_size, "dtype": dtype.name,
                  "flip": bool(flip), "num_classes": len(classes) if classes else int(labels.max()) + 1,
                  "classes": list(classes) if classes else None, "source": source, "data": data,
                  "tokenizer": tokenizer_identity(vae)}
        (tmp / HEADER_NAME).write_text(json.dumps(header, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return out


def iterate_array_batches(images_NCHW: np.ndarray | torch.Tensor, labels_N, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of an in-memory dataset (images already in [-1, 1])."""
    images = torch.as_tensor(images_NCHW)
    labels = torch.as_tensor(labels_N)
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size], labels[i:i + batch_size]
