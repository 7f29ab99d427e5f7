"""Checks before `nextscale train` trains: every problem that would otherwise surface mid-run, as one error."""

from __future__ import annotations

import numpy as np

from nextscale.config_schema import ConfigError
from nextscale.training.common import PRECISIONS
from nextscale.training.token_cache import TokenCache, TokenCacheError
from nextscale.training.var_config import TrainConfig


def check_inputs(config: TrainConfig, vae, labels: np.ndarray, num_items: int, num_classes: int, world_size: int,
                 cache: TokenCache | None) -> None:
    """Every problem that would otherwise surface mid-run, as one clear error before the first step."""
    if num_items == 0:
        raise ConfigError("the dataset is empty: no image to train on")
    if cache is not None:
        cache.check_tokenizer(vae)
        if cache.patch_nums != tuple(vae.patch_nums):
            raise TokenCacheError(f"the token cache holds scales {list(cache.patch_nums)} but the model uses "
                                  f"{list(vae.patch_nums)}; rebuild the cache or set model.patch_nums")
        if config.data.hflip and not cache.has_flip:
            raise TokenCacheError(f"data.hflip is on but the token cache {cache.path} was built without flipped "
                                  f"copies: rebuild it with `nextscale tokenize --flip` or set data.hflip=false")
    else:
        if config.data.resolution != vae.resolution or config.data.channels != vae.config.image_channels:
            raise ConfigError(f"the data gives {config.data.channels}-channel {config.data.resolution}px images but "
                              f"the tokenizer takes {vae.config.image_channels}-channel {vae.resolution}px ones: set "
                              f"data.resolution={vae.resolution} data.channels={vae.config.image_channels}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ConfigError(f"{bad.size} label(s) outside the model's classes 0..{num_classes - 1} (e.g. "
                          f"{sorted(set(bad.tolist()))[:5]}): set model.num_classes to at least {int(labels.max()) + 1}")
    if config.global_batch % world_size:
        raise ConfigError(f"global_batch {config.global_batch} is not divisible by the {world_size} processes")
    micro = config.micro_batch or config.global_batch // world_size
    if (config.global_batch // world_size) % micro:
        raise ConfigError(f"micro_batch {micro} does not divide the per-process batch "
                          f"{config.global_batch // world_size} (global_batch / processes)")
    if num_items < config.global_batch:
        raise ConfigError(f"the dataset has {num_items} images, fewer than one global batch "
                          f"({config.global_batch}): lower global_batch")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"precision must be float32, bfloat16 or float16, got {config.precision!r}")
    if config.parallel not in ("ddp", "fsdp"):
        raise ConfigError(f"parallel must be ddp or fsdp, got {config.parallel!r}")
    if config.optim.label_smoothing < 0 or config.optim.label_smoothing >= 1:
        raise ConfigError(f"optim.label_smoothing must be in [0, 1), got {config.optim.label_smoothing}")
