"""The data of `nextscale train`: which items each rank reads at each step, and the tokens they become.

Determinism: the data a rank reads at optimizer step s is a function of (seed, s) only (a seeded permutation per
epoch, sliced into the global batch, then by rank, then by accumulation step), and random augmentations of an
item are seeded by (seed, epoch, item), so a checkpoint restores the data order with the step. The held-out
batches are tokenized once at setup and draw no random numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nextscale.config_schema import ConfigError
from nextscale.data.datasets import DataConfig, NoHeldOutData, build_dataset
from nextscale.training import distributed as D
from nextscale.training.token_cache import TokenCache
from nextscale.training.var_config import TrainConfig


class DataOrder:
    """Which dataset items each rank reads at each optimizer step: a function of (seed, step) only.

    Every epoch is a seeded permutation of the items, cut into global batches (the remainder is
    dropped); rank r of W takes the r-th slice of each global batch, which it reads in
    `accum` micro-batches. The union over ranks is the same whatever W, so a 2-process run
    matches a 1-process run with the same global batch. Each item also gets a flip bit and a
    seed for its random augmentations.
    """

    def __init__(self, num_items: int, global_batch: int, seed: int):
        self.num_items = num_items
        self.global_batch = global_batch
        self.seed = seed
        self.steps_per_epoch = num_items // global_batch
        self._cached_epoch = None

    def _epoch(self, epoch: int):
        if self._cached_epoch is None or self._cached_epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(self.num_items)
            flips = rng.random(self.num_items) < 0.5
            item_seeds = rng.integers(0, 2**62, self.num_items)
            self._cached_epoch = (epoch, perm, flips, item_seeds)
        return self._cached_epoch[1:]

    def micro_batches(self, step: int, rank: int, world_size: int, accum: int):
        """[(indices, flips, item_seeds)] * accum for this rank at optimizer step `step`."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        perm, flips, item_seeds = self._epoch(epoch)
        per_rank = self.global_batch // world_size
        start = pos * self.global_batch + rank * per_rank
        micro = per_rank // accum
        out = []
        for a in range(accum):
            sl = slice(start + a * micro, start + (a + 1) * micro)
            out.append((perm[sl], flips[sl], item_seeds[sl]))
        return out


class SeededItems(torch.utils.data.Dataset):
    """Wraps a dataset so that item `(index, seed)` draws its random augmentations from `seed`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return self.dataset[int(index)]


class _MicroBatchKeys:
    """Batch sampler for a DataLoader: this rank's micro-batches from `start_step` on, forever."""

    def __init__(self, order: DataOrder, start_step: int, rank: int, world_size: int, accum: int):
        self.order, self.start_step, self.rank, self.world_size, self.accum = order, start_step, rank, world_size, accum

    def __iter__(self):
        step = self.start_step
        while True:
            for idx, _, seeds in self.order.micro_batches(step, self.rank, self.world_size, self.accum):
                yield list(zip(idx.tolist(), seeds.tolist()))
            step += 1


class TokenSource:
    """Micro-batches of (tokens (B, L) int64, labels (B,)) on the device, from a cache or from images."""

    def __init__(self, config: TrainConfig, vae, order: DataOrder, dataset, cache: TokenCache | None, device,
                 start_step: int, rank: int, world_size: int, accum: int):
        self.vae, self.order, self.cache, self.device = vae, order, cache, device
        self.rank, self.world_size, self.accum = rank, world_size, accum
        self.flip = config.data.hflip
        self.step = start_step
        self._loader_iter = None
        if cache is None:
            loader = torch.utils.data.DataLoader(
                SeededItems(dataset), batch_sampler=_MicroBatchKeys(order, start_step, rank, world_size, accum),
                num_workers=config.data.num_workers, pin_memory=device.type == "cuda",
                persistent_workers=config.data.num_workers > 0,
                # Its own generator: creating the iterator must not draw from the global random stream,
                # or a resumed run's class dropout would diverge from the uninterrupted run's.
                generator=torch.Generator().manual_seed(config.seed))
            self._loader_iter = iter(loader)

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The `accum` micro-batches of the next optimizer step."""
        out = []
        if self.cache is not None:
            for idx, flips, _ in self.order.micro_batches(self.step, self.rank, self.world_size, self.accum):
                tokens, labels = self.cache.rows(idx, flips if self.flip else None)
                out.append((tokens.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)))
        else:
            for _ in range(self.accum):
                images, labels = next(self._loader_iter)
                images = images.to(self.device, non_blocking=True)
                with torch.no_grad():
                    tokens = torch.cat(self.vae.encode_tokens(images), dim=1)
                out.append((tokens, torch.as_tensor(labels).to(self.device)))
        self.step += 1
        return out



# ============================================================================ held-out data
def _data_source(data: DataConfig) -> tuple[str, str | None]:
    """(kind, absolute folder) of a data config; Fashion-MNIST's folder does not matter (None)."""
    kind = data.resolved_kind()
    return kind, str(Path(data.path).resolve()) if data.path and kind == "image_folder" else None


def _cache_data_source(cache: TokenCache | None) -> tuple[str, str | None] | None:
    """(kind, absolute path or None) of the data a cache was made from; None when unknown (no cache, old header)."""
    source = cache.header.get("source", "") if cache is not None else ""
    if source.count(":") < 2:
        return None
    kind, rest = source.split(":", 1)
    path = rest.rsplit(":", 1)[0]
    if kind not in ("fashion_mnist", "image_folder"):
        return None
    return kind, None if path == "default" or kind == "fashion_mnist" else str(Path(path).resolve())


def _held_out_dataset(config: TrainConfig, vae, cache: TokenCache | None):
    """The held-out images, or None (with the reason printed) when they cannot be told from the training data."""
    if config.data.resolution != vae.resolution or config.data.channels != vae.config.image_channels:
        D.print_main(f"held-out metrics skipped: data.resolution/channels ({config.data.resolution} px, "
                     f"{config.data.channels} ch) do not match the tokenizer's ({vae.resolution} px, "
                     f"{vae.config.image_channels} ch)")
        return None
    made_from = _cache_data_source(cache)
    if made_from is not None and made_from != _data_source(config.data):
        name = lambda src: "Fashion-MNIST" if src[0] == "fashion_mnist" else f"the image folder {src[1]}"
        D.print_main(f"held-out metrics skipped: the token cache was made from {name(made_from)}, data.* "
                     f"describes {name(_data_source(config.data))}: set data.path to the data the cache was made from")
        return None
    try:
        dataset = build_dataset(config.data, train=False)
    except NoHeldOutData as e:
        D.print_main(f"held-out metrics skipped: {e}")
        return None
    cache_data = (cache.header.get("data") or {}) if cache is not None else {}
    if (config.data.eval_path is None and config.data.resolved_kind() == "image_folder" and cache_data
            and cache_data.get("eval_fraction", 0.0) != config.data.eval_fraction):
        D.print_main(f"held-out metrics skipped: the token cache was made with data.eval_fraction="
                     f"{cache_data.get('eval_fraction', 0.0)}, not {config.data.eval_fraction}, so the held-out "
                     f"images may be in it: rebuild it (nextscale tokenize ... "
                     f"data.eval_fraction={config.data.eval_fraction} --overwrite)")
        return None
    cache_classes = cache.header.get("classes") if cache is not None else None
    if cache_classes and list(cache_classes) != list(dataset.classes):
        D.print_main(f"held-out metrics skipped: the held-out images have the classes {list(dataset.classes)[:5]}"
                     f"..., the training data {list(cache_classes)[:5]}...")
        return None
    return dataset


def held_out_batches(config: TrainConfig, vae, cache: TokenCache | None, rank: int, world_size: int, micro: int,
                     num_classes: int, device) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """This rank's share of the held-out images as (tokens (B, L), labels (B,)) on the device, encoded once.

    Every rank gets the same number of images (and batches), as FSDP needs for its collective forwards."""
    if config.eval_every <= 0 or config.eval_images <= 0:
        return None
    dataset = _held_out_dataset(config, vae, cache)
    if dataset is None:
        return None
    n = min(config.eval_images, len(dataset)) // world_size * world_size
    if n == 0:
        D.print_main(f"held-out metrics skipped: fewer held-out images ({len(dataset)}) than processes")
        return None
    per_rank = n // world_size
    start = rank * per_rank
    batches = []
    with torch.no_grad():
        for i in range(start, start + per_rank, micro):
            items = [dataset[j] for j in range(i, min(i + micro, start + per_rank))]
            images = torch.stack([im for im, _ in items]).to(device)
            labels = torch.as_tensor([label for _, label in items], device=device)
            if int(labels.max()) >= num_classes:
                raise ConfigError(f"the held-out images have class ids up to {int(labels.max())} but the model has "
                                  f"{num_classes} classes: the held-out folder must have the training "
                                  f"folder's class subfolders")
            batches.append((torch.cat(vae.encode_tokens(images), dim=1), labels))
    D.print_main(f"held-out metrics on {n} images every {config.eval_every} steps")
    return batches
