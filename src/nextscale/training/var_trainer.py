"""Training the VAR transformer (spec §5), from one CPU to many GPUs.

    from nextscale.training.var_trainer import TrainConfig, train
    cfg = load_config(TrainConfig, "configs/var_fashion_mnist.yaml", ["steps=100"])
    summary = train(cfg)

Teacher forcing over all scales at once: the tokenizer turns an image (or a token-cache row) into
its K token maps and the transformer input (the area-downsampled cumulative f_hat), the transformer
predicts every token under the block-causal mask, and the loss is the cross-entropy averaged over
all tokens. The same loop trains the raster-scan AR baseline (`model.kind: raster_ar`).

Determinism: the data a rank reads at optimizer step s is a function of (seed, s) only (a seeded
permutation per epoch, sliced into the global batch, then by rank, then by accumulation step), and
random augmentations of an item are seeded by (seed, epoch, item). A checkpoint therefore restores
the data order with the step; with the model, optimizer, scheduler, gradient scaler and every
rank's random states it makes a resumed run continue exactly as an uninterrupted one.

Held-out metrics: every `eval_every` steps and at the end, the loss and token accuracy (overall and
per scale: eval_loss, eval_acc, eval_loss_s{k}, eval_acc_s{k}) on up to `eval_images` held-out images (Fashion-MNIST's
test split, data.eval_path or data.eval_fraction of an image folder), tokenized once at setup. They
draw no random numbers, so resuming stays exact.

Run folder (`out_dir`): config.yaml, tokenizer/ (the tokenizer trained with, so that the run is
self-contained), checkpoints/step_*.pt (+ .yaml), metrics.jsonl, samples/step_*.png, curves.png
and, at the end, model/ (the inference format `nextscale.load_var` reads).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from nextscale.data.datasets import DataConfig, build_dataset
from nextscale.training import distributed as D
from nextscale.training.checkpointing import CheckpointManager, load_checkpoint, restore_rng_state
from nextscale.config_schema import (AT_LEAST_1, BELOW_ONE, FRACTION, NON_NEGATIVE, POSITIVE, SEED, ConfigError,
                                     Range, check_ranges, config_to_dict, from_dict, off_at_zero)
from nextscale.training.config import check_overrides_take_effect, load_config, save_config
from nextscale.training.metrics import MetricsLogger, drop_records_after, plot_curves, progress_bar
from nextscale.training.optim import build_adamw, build_scheduler, scaled_lr
from nextscale.training.token_cache import TokenCache, TokenCacheError, split_scales, tokenizer_identity


# ============================================================================ configuration
@dataclass
class ModelConfig:
    """The transformer to train. Vocabulary, latent channels and scales come from the tokenizer."""

    RANGES = {"depth": AT_LEAST_1, "embed_dim": AT_LEAST_1, "num_heads": AT_LEAST_1, "mlp_ratio": POSITIVE,
              "drop_path_rate": BELOW_ONE, "class_drop_prob": FRACTION, "num_classes": AT_LEAST_1,
              "patch_nums": Range(low=1, min_items=1), "init_adaln_gamma": NON_NEGATIVE,
              "init_head_scale": NON_NEGATIVE}

    kind: str = "var"  # "var" or "raster_ar" (the next-token baseline, same blocks)
    depth: int = 16
    embed_dim: int | None = None  # None: 64 * depth
    num_heads: int | None = None  # None: depth
    mlp_ratio: float = 4.0
    drop_path_rate: float | None = None  # None: 0.1 * depth / 24
    shared_adaln: bool = False
    attn_l2_norm: bool = True
    class_drop_prob: float = 0.1
    num_classes: int | None = None  # None: the dataset's (or the token cache's) number of classes
    patch_nums: tuple[int, ...] | None = None  # None: the tokenizer's; else the tokenizer is switched to it
    init_adaln_gamma: float | None = None  # None: 1e-3 at depth 16 ... 5e-6 at depth 36
    init_head_scale: float = 0.02
    init_from: str | None = None  # start from these transformer weights (fine-tuning): a folder or .pth


@dataclass
class OptimConfig:
    SHADOWED_BY = {"base_lr": "lr", "warmup_epochs": "warmup_steps"}
    RANGES = {"base_lr": POSITIVE, "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "final_weight_decay": NON_NEGATIVE,
              "betas": Range(low=0, high=1, high_open=True, items=2), "eps": POSITIVE,
              "grad_clip": off_at_zero("no clipping"), "warmup_epochs": NON_NEGATIVE,
              "warmup_steps": off_at_zero("no warmup"), "warmup_start": FRACTION, "final_lr_ratio": FRACTION,
              "label_smoothing": BELOW_ONE}

    base_lr: float = 1e-4  # peak lr = base_lr * global_batch / 256 (used while lr is null)
    lr: float | None = None  # an absolute peak lr instead of the scaled one (as in train-tokenizer)
    weight_decay: float = 0.05
    final_weight_decay: float | None = None  # weight decay at the last step, linearly from weight_decay (None: constant)
    betas: tuple[float, ...] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 2.0  # max global gradient norm; 0 disables clipping
    warmup_epochs: float = 0.0
    warmup_steps: int | None = None  # overrides warmup_epochs (0: no warmup)
    warmup_start: float = 0.005  # lr multiplier at step 0
    final_lr_ratio: float = 0.0  # lr multiplier at the last step
    label_smoothing: float = 0.0


@dataclass
class SampleConfig:
    """The sample grid written every `every` steps (rank 0)."""

    RANGES = {"every": off_at_zero("only at the end"), "per_class": AT_LEAST_1, "classes": Range(low=0),
              "cfg": NON_NEGATIVE, "top_k": off_at_zero(), "top_p": FRACTION, "seed": SEED}

    every: int = 0  # 0: never (a grid is still written at the end when classes are known)
    per_class: int = 4
    classes: tuple[int, ...] | None = None  # None: up to 10 classes spread over the label range
    cfg: float = 1.5
    top_k: int = 0  # 0: off
    top_p: float = 0.0  # 0: off
    seed: int = 0


@dataclass
class TrainConfig:
    SHADOWED_BY = {"epochs": "steps"}
    RANGES = {"global_batch": AT_LEAST_1, "micro_batch": AT_LEAST_1, "epochs": POSITIVE, "steps": AT_LEAST_1,
              "seed": SEED, "threads": off_at_zero("torch's default"), "log_every": AT_LEAST_1,
              "eval_every": off_at_zero(), "eval_images": off_at_zero(),
              "checkpoint_every": off_at_zero("only at the end"),
              "keep_checkpoints": AT_LEAST_1}

    out_dir: str = "runs/var"
    tokenizer: str | None = None  # a train-tokenizer run folder, a tokenizer folder / .pth / preset (required)
    token_cache: str | None = None  # a folder written by `nextscale tokenize`; None: tokenize on the fly
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    global_batch: int = 256  # images per optimizer step, over all ranks and accumulation steps (>= 1)
    micro_batch: int | None = None  # images per forward pass per rank; None: global_batch / world_size
    epochs: float = 1.0  # > 0
    steps: int | None = None  # overrides epochs (>= 1)
    seed: int = 0
    device: str | None = None  # None: cuda when available
    threads: int = 0  # torch CPU threads per process (0: torch's default)
    precision: str = "float32"  # float32, bfloat16 or float16 (autocast; float16 with a gradient scaler)
    compile: bool = False  # torch.compile the model
    parallel: str = "ddp"  # ddp, or fsdp (parameters, gradients and optimizer state sharded over ranks)
    log_every: int = 10  # >= 1 (the last step is always logged)
    eval_every: int = 500  # held-out loss/accuracy every this many steps and at the end (0: never)
    eval_images: int = 512  # held-out images evaluated (tokenized once at setup; 0: no held-out metrics)
    checkpoint_every: int = 1000  # 0: only the final checkpoint (at the end or on SIGTERM / Ctrl-C)
    keep_checkpoints: int = 3  # >= 1
    resume: str | bool = "auto"  # auto: continue from the newest checkpoint in out_dir; never; or a checkpoint path
    export_at_end: bool = True  # write out_dir/model (inference format) when training finishes
    tensorboard: bool = True  # also log to TensorBoard when it is installed
    progress: bool = True

    def __post_init__(self):
        from nextscale.training.tokenizer_trainer import normalize_precision, normalize_resume
        self.precision = normalize_precision(self.precision)
        self.resume = normalize_resume(self.resume)


def config_from(config, overrides=()) -> TrainConfig:
    """A TrainConfig from a TrainConfig, a dict, or a YAML path (+ key=value overrides).

    An override that would not take effect (e.g. optim.base_lr while optim.lr is set) is a ConfigError."""
    if isinstance(config, TrainConfig):
        config = config_to_dict(config)
    if isinstance(config, dict):
        cfg = from_dict(TrainConfig, _merge_overrides(config, overrides))
        check_overrides_take_effect(cfg, overrides)
        return cfg
    return load_config(TrainConfig, config, overrides)


def _merge_overrides(base: dict, overrides) -> dict:
    from nextscale.config_schema import merge
    from nextscale.training.config import parse_overrides
    return merge(base, parse_overrides(overrides))


# ============================================================================ data order
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

    def __init__(self, cfg: TrainConfig, vae, order: DataOrder, dataset, cache: TokenCache | None, device,
                 start_step: int, rank: int, world_size: int, accum: int):
        self.vae, self.order, self.cache, self.device = vae, order, cache, device
        self.rank, self.world_size, self.accum = rank, world_size, accum
        self.flip = cfg.data.hflip
        self.step = start_step
        self._loader_iter = None
        if cache is None:
            loader = torch.utils.data.DataLoader(
                SeededItems(dataset), batch_sampler=_MicroBatchKeys(order, start_step, rank, world_size, accum),
                num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                persistent_workers=cfg.data.num_workers > 0,
                # Its own generator: creating the iterator must not draw from the global random stream,
                # or a resumed run's class dropout would diverge from the uninterrupted run's.
                generator=torch.Generator().manual_seed(cfg.seed))
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


# ============================================================================ models
def load_tokenizer(path: str | None, patch_nums=None):
    """The tokenizer `path` names: a train-tokenizer run folder (its model/), a tokenizer folder, a .pth, a preset."""
    import nextscale
    if not path:
        raise ConfigError("no tokenizer given: set tokenizer=PATH (a run folder written by `nextscale train-tokenizer`, "
                          "a tokenizer folder, a .pth, or the preset vae-f16c32)")
    vae = nextscale.load_vae(path)  # the one rule for run folders and checkpoints (checkpoints.resolve_model_path)
    if patch_nums is not None and tuple(patch_nums) != tuple(vae.patch_nums):
        try:
            vae.set_patch_nums(patch_nums)
        except ValueError as e:
            raise ConfigError(f"model.patch_nums {list(patch_nums)} does not fit the tokenizer: {e}") from None
    for p in vae.parameters():
        p.requires_grad_(False)
    return vae.eval()


def build_model(mcfg: ModelConfig, vae, num_classes: int):
    """A freshly initialized transformer (VAR or the raster baseline) that fits the tokenizer."""
    common = dict(depth=mcfg.depth, embed_dim=mcfg.embed_dim, num_heads=mcfg.num_heads, num_classes=num_classes,
                  vocab_size=vae.vocab_size, attn_l2_norm=mcfg.attn_l2_norm, mlp_ratio=mcfg.mlp_ratio,
                  drop_path_rate=mcfg.drop_path_rate, class_drop_prob=mcfg.class_drop_prob)
    if mcfg.kind == "var":
        from nextscale.transformer.var import VAR, VARConfig
        model = VAR(VARConfig(**common, vae_channels=vae.latent_channels, patch_nums=vae.patch_nums,
                              shared_adaln=mcfg.shared_adaln))
        model.init_weights(mcfg.init_adaln_gamma, mcfg.init_head_scale)
    elif mcfg.kind == "raster_ar":
        from nextscale.baseline.raster_ar import RasterAR, RasterARConfig
        model = RasterAR(RasterARConfig(**common, seq_len=sum(p * p for p in vae.patch_nums)))
        model.init_weights(mcfg.init_adaln_gamma or 1e-3, mcfg.init_head_scale)
    else:
        raise ConfigError(f"model.kind must be 'var' or 'raster_ar', got {mcfg.kind!r}")
    if mcfg.init_from:
        _load_initial_weights(model, mcfg.init_from, vae)
    model.attach_tokenizer(vae)
    return model


def _load_initial_weights(model, path: str, vae) -> None:
    """Fine-tuning: copy the weights of a trained transformer; it must fit the tokenizer and the classes."""
    from nextscale.checkpoints import load_var
    if model.model_type != "var":
        raise ConfigError("model.init_from is only supported for model.kind=var")
    try:
        src = load_var(path, patch_nums=model.patch_nums)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"model.init_from: {e}") from None
    sc, mc = src.config, model.config
    problems = [f"{name} {getattr(sc, name)} vs {getattr(mc, name)}"
                for name in ("vocab_size", "vae_channels", "patch_nums", "num_classes", "depth", "embed_dim",
                             "num_heads", "shared_adaln")
                if getattr(sc, name) != getattr(mc, name)]
    if problems:
        raise ConfigError(f"model.init_from {path} does not match the model to train (checkpoint vs config/tokenizer): "
                          + "; ".join(problems))
    model.load_state_dict(src.state_dict())


def model_targets(model, vae, tokens_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(model input, target tokens (B, L)) of a batch of concatenated token maps."""
    if model.model_type == "raster_ar":
        return tokens_BL, tokens_BL
    with torch.no_grad():
        teacher_BLCv = vae.teacher_forcing_input(split_scales(tokens_BL, vae.patch_nums))
    return teacher_BLCv, tokens_BL


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


# ============================================================================ checks before training (bad input)
def check_inputs(cfg: TrainConfig, vae, labels: np.ndarray, num_items: int, num_classes: int, world_size: int,
                 cache: TokenCache | None) -> None:
    """Every problem that would otherwise surface mid-run, as one clear error before the first step."""
    if num_items == 0:
        raise ConfigError("the dataset is empty: no image to train on")
    if cache is not None:
        cache.check_tokenizer(vae)
        if cache.patch_nums != tuple(vae.patch_nums):
            raise TokenCacheError(f"the token cache holds scales {list(cache.patch_nums)} but the model uses "
                                  f"{list(vae.patch_nums)}; rebuild the cache or set model.patch_nums")
        if cfg.data.hflip and not cache.has_flip:
            raise TokenCacheError(f"data.hflip is on but the token cache {cache.path} was built without flipped "
                                  f"copies: rebuild it with `nextscale tokenize --flip` or set data.hflip=false")
    else:
        if cfg.data.resolution != vae.resolution or cfg.data.channels != vae.config.image_channels:
            raise ConfigError(f"the data gives {cfg.data.channels}-channel {cfg.data.resolution}px images but the "
                              f"tokenizer takes {vae.config.image_channels}-channel {vae.resolution}px ones: set "
                              f"data.resolution={vae.resolution} data.channels={vae.config.image_channels}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ConfigError(f"{bad.size} label(s) outside the model's classes 0..{num_classes - 1} (e.g. "
                          f"{sorted(set(bad.tolist()))[:5]}): set model.num_classes to at least {int(labels.max()) + 1}")
    if cfg.global_batch % world_size:
        raise ConfigError(f"global_batch {cfg.global_batch} is not divisible by the {world_size} processes")
    micro = cfg.micro_batch or cfg.global_batch // world_size
    if (cfg.global_batch // world_size) % micro:
        raise ConfigError(f"micro_batch {micro} does not divide the per-process batch "
                          f"{cfg.global_batch // world_size} (global_batch / processes)")
    if num_items < cfg.global_batch:
        raise ConfigError(f"the dataset has {num_items} images, fewer than one global batch ({cfg.global_batch}): "
                          f"lower global_batch")
    if cfg.precision not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"precision must be float32, bfloat16 or float16, got {cfg.precision!r}")
    if cfg.parallel not in ("ddp", "fsdp"):
        raise ConfigError(f"parallel must be ddp or fsdp, got {cfg.parallel!r}")
    if cfg.optim.label_smoothing < 0 or cfg.optim.label_smoothing >= 1:
        raise ConfigError(f"optim.label_smoothing must be in [0, 1), got {cfg.optim.label_smoothing}")


# ============================================================================ state (checkpoints)
def _state_dicts(model, optimizer, parallel: str):
    """Full (unsharded) model and optimizer state dicts keyed by parameter names, on CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _load_state_dicts(model, optimizer, model_sd, optim_sd) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=StateDictOptions(full_state_dict=True))


class LossNotFinite(ValueError):
    """Training diverged (reported as a one-line error by the command line)."""


# ============================================================================ the loop
@dataclass
class StepStats:
    """Per-scale sums of loss, correct predictions and token counts since the last log line."""

    loss_sum_S: torch.Tensor
    correct_S: torch.Tensor
    count_S: torch.Tensor


def segment_sizes(model, vae) -> list[int]:
    """Token counts of the per-scale segments that accuracy and loss are reported on."""
    return [pn * pn for pn in vae.patch_nums]


def forward_and_stats(model, labels_B, inputs, target_BL, segments, label_smoothing: float):
    """Mean cross-entropy over all tokens, and per-scale sums of loss and correct predictions."""
    logits_BLV = model(labels_B, inputs)
    B, L, V = logits_BLV.shape
    loss_BL = F.cross_entropy(logits_BLV.reshape(-1, V).float(), target_BL.reshape(-1),
                              label_smoothing=label_smoothing, reduction="none").view(B, L)
    with torch.no_grad():
        correct_BL = (logits_BLV.argmax(-1) == target_BL).float()
        loss_S = torch.stack([seg.sum() for seg in loss_BL.detach().split(segments, dim=1)])
        correct_S = torch.stack([seg.sum() for seg in correct_BL.split(segments, dim=1)])
    return loss_BL.mean(), loss_S, correct_S


def train(config, overrides=(), on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Train a transformer as `config` (a TrainConfig, dict or YAML path) says. Returns a summary dict.

    `on_step(step, record)` is called on every rank after every optimizer step (tests, custom hooks).
    """
    cfg = config_from(config, overrides)
    check_ranges(cfg)  # every value in its range before any work (RANGES of the config classes above)
    info = D.init_distributed(cfg.device)
    try:
        return _Trainer(cfg, info, on_step).run()
    finally:
        D.cleanup_distributed()


class _Trainer:
    def __init__(self, cfg: TrainConfig, info: D.DistInfo, on_step):
        self.cfg, self.info, self.on_step = cfg, info, on_step
        self.out = Path(cfg.out_dir)
        self.device = info.device
        self.world = info.world_size
        self.main = info.is_main

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.vae = load_tokenizer(cfg.tokenizer, cfg.model.patch_nums).to(self.device)
        self.cache, self.dataset = None, None
        if cfg.token_cache:
            self.cache = TokenCache.open(cfg.token_cache)
            labels = np.asarray(self.cache.labels)
            data_classes = self.cache.header.get("num_classes") or int(labels.max()) + 1
            self.class_names = self.cache.header.get("classes")
        else:
            self.dataset = build_dataset(cfg.data, train=True)
            labels = np.asarray(self.dataset.labels)
            data_classes = self.dataset.num_classes
            self.class_names = list(self.dataset.classes)
        self.num_classes = cfg.model.num_classes or data_classes
        self.num_items = len(labels)
        check_inputs(cfg, self.vae, labels, self.num_items, self.num_classes, self.world, self.cache)
        self.micro = cfg.micro_batch or cfg.global_batch // self.world
        self.accum = cfg.global_batch // self.world // self.micro
        self.order = DataOrder(self.num_items, cfg.global_batch, cfg.seed)
        self.total_steps = cfg.steps if cfg.steps is not None else max(1, round(cfg.epochs * self.order.steps_per_epoch))
        warmup = cfg.optim.warmup_steps if cfg.optim.warmup_steps is not None else \
            round(cfg.optim.warmup_epochs * self.order.steps_per_epoch)

        if cfg.precision == "float16" and self.device.type != "cuda":
            raise ConfigError("precision float16 needs a GPU; on CPU use float32 (or bfloat16)")

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = build_model(cfg.model, self.vae, self.num_classes).to(self.device)
        self.raw_model = self.model
        self.train_model = self._wrap(self.model)
        peak_lr = cfg.optim.lr if cfg.optim.lr is not None else scaled_lr(cfg.optim.base_lr, cfg.global_batch)
        self.optimizer = build_adamw(self.model, peak_lr, cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.eps)
        self.scheduler = build_scheduler(self.optimizer, warmup, self.total_steps, cfg.optim.warmup_start,
                                         cfg.optim.final_lr_ratio)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "float16")
        self.autocast = (torch.autocast(self.device.type, dtype=getattr(torch, cfg.precision))
                         if cfg.precision != "float32" else contextlib.nullcontext())
        self.segments = segment_sizes(self.model, self.vae)
        self.ckpts = CheckpointManager(self.out / "checkpoints", keep_last=cfg.keep_checkpoints)
        if self.main:  # what a kill during a checkpoint write left behind
            self.ckpts.remove_stale_temp_files()
        self.tokenizer_id = tokenizer_identity(self.vae)
        self.step = 0
        self._maybe_resume()
        if self.main:  # the steps after the checkpoint are trained (and logged) again: log each step once
            dropped = drop_records_after(self.out / "metrics.jsonl", self.step)
            if dropped:
                D.print_main(f"metrics.jsonl: dropped {dropped} line(s) after step {self.step}, which this run "
                             f"trains again")
        if self.step == 0:  # every rank its own random stream (class dropout, drop path)
            torch.manual_seed(cfg.seed * 1000 + 1 + self.info.rank)
        self.source = TokenSource(cfg, self.vae, self.order, self.dataset, self.cache, self.device, self.step,
                                  self.info.rank, self.world, self.accum)
        self.eval_batches = self._held_out_batches()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml")
            if not (self.out / "tokenizer").is_dir():
                self.vae.save_pretrained(self.out / "tokenizer")
        D.barrier()

    def _held_out_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """This rank's share of the held-out images as (tokens (B, L), labels (B,)) on the device, encoded once.

        Every rank gets the same number of images (and batches), as FSDP needs for its collective forwards."""
        cfg = self.cfg
        if cfg.eval_every <= 0 or cfg.eval_images <= 0:
            return None
        from nextscale.data.datasets import NoHeldOutData
        if cfg.data.resolution != self.vae.resolution or cfg.data.channels != self.vae.config.image_channels:
            D.print_main(f"held-out metrics skipped: data.resolution/channels ({cfg.data.resolution} px, "
                         f"{cfg.data.channels} ch) do not match the tokenizer's ({self.vae.resolution} px, "
                         f"{self.vae.config.image_channels} ch)")
            return None
        made_from = _cache_data_source(self.cache)
        if made_from is not None and made_from != _data_source(cfg.data):
            name = lambda src: "Fashion-MNIST" if src[0] == "fashion_mnist" else f"the image folder {src[1]}"
            D.print_main(f"held-out metrics skipped: the token cache was made from {name(made_from)}, data.* "
                         f"describes {name(_data_source(cfg.data))}: set data.path to the data the cache was made from")
            return None
        try:
            dataset = build_dataset(cfg.data, train=False)
        except NoHeldOutData as e:
            D.print_main(f"held-out metrics skipped: {e}")
            return None
        cache_data = (self.cache.header.get("data") or {}) if self.cache is not None else {}
        if (cfg.data.eval_path is None and cfg.data.resolved_kind() == "image_folder" and cache_data
                and cache_data.get("eval_fraction", 0.0) != cfg.data.eval_fraction):
            D.print_main(f"held-out metrics skipped: the token cache was made with data.eval_fraction="
                         f"{cache_data.get('eval_fraction', 0.0)}, not {cfg.data.eval_fraction}, so the held-out images "
                         f"may be in it: rebuild it (nextscale tokenize ... data.eval_fraction={cfg.data.eval_fraction} "
                         f"--overwrite)")
            return None
        cache_classes = self.cache.header.get("classes") if self.cache is not None else None
        if cache_classes and list(cache_classes) != list(dataset.classes):
            D.print_main(f"held-out metrics skipped: the held-out images have the classes {list(dataset.classes)[:5]}"
                         f"..., the training data {list(cache_classes)[:5]}...")
            return None
        n = min(cfg.eval_images, len(dataset)) // self.world * self.world
        if n == 0:
            D.print_main(f"held-out metrics skipped: fewer held-out images ({len(dataset)}) than processes")
            return None
        per_rank = n // self.world
        start = self.info.rank * per_rank
        batches = []
        with torch.no_grad():
            for i in range(start, start + per_rank, self.micro):
                items = [dataset[j] for j in range(i, min(i + self.micro, start + per_rank))]
                images = torch.stack([im for im, _ in items]).to(self.device)
                labels = torch.as_tensor([label for _, label in items], device=self.device)
                if int(labels.max()) >= self.num_classes:
                    raise ConfigError(f"the held-out images have class ids up to {int(labels.max())} but the model has "
                                      f"{self.num_classes} classes: the held-out folder must have the training "
                                      f"folder's class subfolders")
                batches.append((torch.cat(self.vae.encode_tokens(images), dim=1), labels))
        D.print_main(f"held-out metrics on {n} images every {cfg.eval_every} steps")
        return batches

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out loss and token accuracy, overall and per scale (a collective: every rank calls it)."""
        model = self.train_model
        model.eval()
        stats = self.new_stats()
        try:
            for tokens_BL, labels_B in self.eval_batches:
                inputs, target_BL = model_targets(self.raw_model, self.vae, tokens_BL)
                with self.autocast:
                    _, loss_S, correct_S = forward_and_stats(model, labels_B, inputs, target_BL, self.segments,
                                                             self.cfg.optim.label_smoothing)
                stats.loss_sum_S += loss_S
                stats.correct_S += correct_S
                stats.count_S += torch.tensor([float(s * len(labels_B)) for s in self.segments], device=self.device)
        finally:
            model.train()
        summed = D.all_reduce_sum(torch.stack([stats.loss_sum_S, stats.correct_S, stats.count_S]))
        total = summed.sum(dim=1)
        rec = {"eval_loss": float(total[0] / total[2]), "eval_acc": float(total[1] / total[2])}
        if len(self.segments) > 1:
            rec.update({f"eval_acc_s{s}": float(a) for s, a in enumerate((summed[1] / summed[2]).tolist())})
            rec.update({f"eval_loss_s{s}": float(v) for s, v in enumerate((summed[0] / summed[2]).tolist())})
        return rec

    def _wrap(self, model):
        cfg = self.cfg
        if cfg.parallel == "fsdp" and D.is_distributed():
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
            mp = MixedPrecisionPolicy(param_dtype=getattr(torch, cfg.precision)) if cfg.precision != "float32" \
                else MixedPrecisionPolicy()
            # Shard each block's attention and FFN; the AdaLN linears stay with the root group, because
            # the model computes every block's modulation up front, outside the block's own forward.
            # The blocks only use these outputs out of place, which is what FSDP's view warning asks for.
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
            for block in model.blocks:
                fully_shard(block.attn, mp_policy=mp)
                fully_shard(block.ffn, mp_policy=mp)
            fully_shard(model, mp_policy=mp)
            wrapped = model
        else:
            wrapped = D.wrap_ddp(model, self.info)
        if cfg.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def _maybe_resume(self) -> None:
        cfg = self.cfg
        if cfg.resume == "never":
            if self.ckpts.latest() is not None:
                raise ConfigError(f"{self.ckpts.folder} already holds checkpoints and resume=never: choose another "
                                  f"out_dir, delete them, or resume=auto to continue")
            return
        if cfg.resume == "auto":
            # Rank 0 picks the newest checkpoint that loads (a damaged one is set aside with a warning); the
            # other ranks load the same file.
            found = self.ckpts.load_latest() if self.main else None
            path = D.broadcast_object(found[0] if found else None)
            if path is None:
                return
            state = found[1] if found else load_checkpoint(path)
        else:
            path = Path(cfg.resume)
            state = load_checkpoint(path)  # a damaged checkpoint named by the user stays an error
        if state.get("tokenizer", {}).get("weights_hash") != self.tokenizer_id["weights_hash"] or \
                state.get("tokenizer", {}).get("config_hash") != self.tokenizer_id["config_hash"]:
            raise ConfigError(f"checkpoint {path} was trained with another tokenizer than {cfg.tokenizer}: resume "
                              f"with the run's own tokenizer ({self.out / 'tokenizer'})")
        if state["model_config"] != self.model.config.to_dict():
            differ = sorted(k for k, v in self.model.config.to_dict().items() if state["model_config"].get(k) != v)
            raise ConfigError(f"checkpoint {path} holds a different model ({', '.join(differ)} differ): resume with "
                              f"the run's own config ({path.with_suffix('.yaml')})")
        data = state["data"]
        if (data["num_items"], data["global_batch"], data["seed"]) != (self.num_items, cfg.global_batch, cfg.seed):
            warnings.warn(f"resuming {path} with another dataset size, global batch or seed: training continues, "
                          f"but not exactly as the interrupted run would have")
        _load_state_dicts(self.model, self.optimizer, state["model"], state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        rng = state["rng"]
        if len(rng) == self.world:
            restore_rng_state(rng[self.info.rank])
        else:
            warnings.warn(f"the checkpoint was written by {len(rng)} processes, this run has {self.world}: "
                          f"random states are re-seeded, so the continuation is not bit-exact")
            torch.manual_seed(cfg.seed * 1000 + 1 + self.info.rank + self.step)
        D.print_main(f"resumed from {path} at step {self.step}")

    def save_checkpoint(self) -> Path | None:
        model_sd, optim_sd = _state_dicts(self.model, self.optimizer, self.cfg.parallel)
        rng = D.gather_rng_states()
        path = None
        if self.main:
            state = {"model": model_sd, "optimizer": optim_sd, "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "step": self.step, "rng": rng,
                     "data": {"num_items": self.num_items, "global_batch": self.cfg.global_batch,
                              "seed": self.cfg.seed},
                     "model_kind": self.cfg.model.kind, "model_config": self.model.config.to_dict(),
                     "tokenizer": self.tokenizer_id, "class_names": self.class_names,
                     "sampling": {"cfg": self.cfg.sample.cfg, "top_k": self.cfg.sample.top_k,
                                  "top_p": self.cfg.sample.top_p},
                     "world_size": self.world, "config": config_to_dict(self.cfg)}
            path = self.ckpts.save(self.step, state, config=self.cfg)
        D.barrier()
        return path

    # ------------------------------------------------------------------ one optimizer step
    def new_stats(self) -> StepStats:
        S = len(self.segments)
        return StepStats(*(torch.zeros(S, device=self.device) for _ in range(3)))

    def train_step(self, stats: StepStats) -> float:
        """One optimizer step; adds its loss and accuracy sums to `stats`; returns the gradient norm."""
        model, cfg = self.train_model, self.cfg
        model.train()
        batches = self.source.next_step()
        for i, (tokens_BL, labels_B) in enumerate(batches):
            inputs, target_BL = model_targets(self.raw_model, self.vae, tokens_BL)
            last = i == len(batches) - 1
            with self._no_sync(not last), self.autocast:
                loss, loss_S, correct_S = forward_and_stats(model, labels_B, inputs, target_BL, self.segments,
                                                            cfg.optim.label_smoothing)
            self.scaler.scale(loss / len(batches)).backward()
            stats.loss_sum_S += loss_S
            stats.correct_S += correct_S
            stats.count_S += torch.tensor([float(s * tokens_BL.shape[0]) for s in self.segments], device=self.device)
        self.scaler.unscale_(self.optimizer)
        if cfg.optim.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a sharded (DTensor) norm
            grad_norm = grad_norm.full_tensor()
        self._set_weight_decay()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1
        return float(grad_norm)

    def _set_weight_decay(self) -> None:
        """Linear weight-decay schedule of the decayed group (the published d24+ recipes end at 0.08)."""
        final = self.cfg.optim.final_weight_decay
        if final is None:
            return
        start = self.cfg.optim.weight_decay
        wd = start + (final - start) * min(self.step / max(self.total_steps - 1, 1), 1.0)
        self.optimizer.param_groups[0]["weight_decay"] = wd  # group 0 is the decayed one (optim.param_groups)

    def _no_sync(self, skip_sync: bool):
        model = self.train_model
        model = getattr(model, "_orig_mod", model)
        if not skip_sync:
            return contextlib.nullcontext()
        if hasattr(model, "no_sync"):
            return model.no_sync()
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
            @contextlib.contextmanager
            def fsdp_no_sync():
                model.set_requires_gradient_sync(False)
                try:
                    yield
                finally:
                    model.set_requires_gradient_sync(True)
            return fsdp_no_sync()
        return contextlib.nullcontext()

    def record(self, stats: StepStats, grad_norm: float, images_per_s: float) -> dict:
        """Metrics of a step, averaged over ranks (a collective: every rank calls it at the same steps)."""
        summed = D.all_reduce_sum(torch.stack([stats.loss_sum_S, stats.correct_S, stats.count_S]))
        loss_S, acc_S = (summed[0] / summed[2]).tolist(), (summed[1] / summed[2]).tolist()
        total = summed.sum(dim=1)
        rec = {"loss": float(total[0] / total[2]), "acc": float(total[1] / total[2]),
               "lr": self.last_lr,
               "grad_norm": grad_norm, "epoch": self.step / self.order.steps_per_epoch, "img_per_s": images_per_s}
        if len(self.segments) > 1:
            for s, (l_s, a_s) in enumerate(zip(loss_S, acc_S)):
                rec[f"loss_s{s}"] = l_s
                rec[f"acc_s{s}"] = a_s
        return rec

    # ------------------------------------------------------------------ samples
    def write_samples(self) -> Path | None:
        if not self.main or self.cfg.parallel == "fsdp" and D.is_distributed():
            return None  # a sharded model cannot sample on one rank; export and sample instead
        scfg = self.cfg.sample
        classes = list(scfg.classes) if scfg.classes else \
            sorted({round(i * (self.num_classes - 1) / max(min(self.num_classes, 10) - 1, 1))
                    for i in range(min(self.num_classes, 10))})
        labels = [c for c in classes for _ in range(scfg.per_class)]
        model = self.raw_model
        was_training = model.training
        model.eval()
        try:
            with self.autocast:
                images = generate_images(model, labels, scfg.seed, scfg.cfg, scfg.top_k, scfg.top_p)
        finally:
            model.train(was_training)
        path = self.out / "samples" / f"step_{self.step:08d}.png"
        names = self.class_names or []
        row_labels = [names[c] if c < len(names) and names[c] else f"class {c}" for c in classes]
        try:
            from nextscale.images import save_labeled_grid
        except ImportError:  # an older nextscale.images: the grid without labels
            from nextscale.images import make_grid, save_png
            save_png(make_grid(images.float().cpu(), ncols=scfg.per_class), path)
            return path
        save_labeled_grid(images.float().cpu(), path, ncols=scfg.per_class, row_labels=row_labels)
        return path

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        self.setup()
        cfg = self.cfg
        metrics = MetricsLogger(self.out, enabled=self.main, tensorboard=cfg.tensorboard, resumed_step=self.step)
        bar = progress_bar(total=self.total_steps, initial=self.step, desc="train", unit="step",
                           enabled=self.main and cfg.progress)
        start_step = self.step
        stopped_by = 0
        window_start, window_steps = time.perf_counter(), 0
        stats = self.new_stats()  # summed over the steps since the last log line
        last_record: dict = {}
        last_eval: dict = {}
        last_eval_step = None
        with D.StopRequested() as stop:
            while self.step < self.total_steps:
                grad_norm = self.train_step(stats)
                window_steps += 1
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - window_start
                    rec = self.record(stats, grad_norm, cfg.global_batch * window_steps / max(elapsed, 1e-9))
                    window_start, window_steps = time.perf_counter(), 0
                    stats = self.new_stats()
                    if not math.isfinite(rec["loss"]):
                        raise LossNotFinite(f"the loss became {rec['loss']} at step {self.step}; lower the "
                                                 f"learning rate or use float32 (no checkpoint written)")
                    metrics.log(self.step, **rec)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['acc']:.3f}", lr=f"{rec['lr']:.2e}",
                                    img_s=f"{rec['img_per_s']:.0f}")
                    last_record = rec
                bar.update(1)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
                if cfg.sample.every and self.step % cfg.sample.every == 0:
                    self.write_samples()
                if self.eval_batches is not None and self.step % cfg.eval_every == 0:
                    last_eval = self.evaluate()
                    last_eval_step = self.step
                    metrics.log(self.step, **last_eval)
                if self.on_step is not None:
                    self.on_step(self.step, last_record)
                stopped_by = stop.agreed(self.device)
                if stopped_by:
                    break
            bar.close()
            if (not stopped_by and self.eval_batches is not None and last_eval_step != self.step
                    and self.step > start_step):  # (a rerun of a finished run trains and logs nothing)
                last_eval = self.evaluate()  # the final held-out metrics
                metrics.log(self.step, **last_eval)
            path = self.save_checkpoint()
        metrics.close()
        summary = {"step": self.step, "start_step": start_step, "total_steps": self.total_steps,
                   "checkpoint": str(path) if path else None, "stopped_by_signal": stopped_by,
                   "skipped_images": getattr(self.dataset, "num_skipped", 0), "rank": self.info.rank,
                   **last_record, **last_eval}
        if stopped_by:
            D.print_main(f"stopped by signal {stopped_by} at step {self.step}; checkpoint {path}; "
                         f"run the same command again to resume")
            return summary
        if self.main:
            if (self.out / "metrics.jsonl").is_file():
                try:
                    plot_curves(self.out / "metrics.jsonl", self.out / "curves.png",
                                keys=[("loss", "eval_loss"), ("acc", "eval_acc"), "acc_s*", "lr"])
                    summary["curves"] = str(self.out / "curves.png")
                except Exception as e:  # noqa: BLE001 - a plot never ends a finished training
                    warnings.warn(f"could not draw {self.out / 'curves.png'}: {type(e).__name__}: {e}")
            if not (cfg.parallel == "fsdp" and D.is_distributed()):
                summary["samples"] = str(self.write_samples())
            if cfg.export_at_end:
                summary["model"] = str(export_checkpoint(path, self.out / "model"))
        D.barrier()
        return summary


# ============================================================================ sampling and export
@torch.no_grad()
def generate_images(model, labels, seed: int, cfg: float, top_k: int, top_p: float) -> torch.Tensor:
    """Images in [0, 1] from a VAR or the raster baseline (its tokenizer attached)."""
    device = next(model.parameters()).device
    if model.model_type == "raster_ar":
        g = torch.Generator(device=device).manual_seed(seed)
        tokens = model.generate(torch.as_tensor(labels, device=device), g, cfg, top_k, top_p)
        vae = model.tokenizer
        return vae.decode_tokens(split_scales(tokens, vae.patch_nums)).add(1).mul(0.5)
    import nextscale
    return nextscale.sample(model, labels=labels, seed=seed, cfg=cfg, top_k=top_k, top_p=top_p).images


def read_run_checkpoint(path: str | os.PathLike) -> tuple[Path, dict]:
    """(path, state) of a training checkpoint, or of a run folder's newest checkpoint that loads.

    A run folder's newer checkpoints that do not load (truncated, damaged) are skipped with a
    DamagedCheckpointWarning naming each, as resume=auto skips them, but left in place (resume sets them aside).
    A checkpoint named by its path must load: ValueError in one line otherwise."""
    path = Path(path)
    if not path.is_dir():
        try:
            return path, load_checkpoint(path)
        except ValueError as e:
            raise ValueError(f"{' '.join(str(e).split())}: it is damaged or truncated; pass the run folder to "
                             f"use its newest checkpoint that loads, or an older checkpoint") from None
    ckpts = CheckpointManager(path / "checkpoints")
    if not ckpts.all():
        ckpts = CheckpointManager(path)
    found = ckpts.all()
    if not found:
        raise FileNotFoundError(f"no checkpoint (checkpoints/step_*.pt) found in {path}")
    latest = ckpts.load_latest(set_aside=False, using="using")
    if latest is None:
        raise ValueError(f"none of the {len(found)} checkpoint(s) in {ckpts.folder} can be read (the newest, "
                         f"{found[-1][1].name}, and every older one are damaged or truncated): train again, or "
                         f"restore a copy of the run")
    return latest


def checkpoint_to_model(path: str | os.PathLike, tokenizer: str | None = None):
    """The transformer of a training checkpoint with its tokenizer attached (the run's tokenizer/ by default).
    A run folder stands for its newest checkpoint that loads (read_run_checkpoint); `trained_steps` in the
    model's extra_config says which."""
    import nextscale
    path, state = read_run_checkpoint(path)
    if "model_config" not in state:
        raise ConfigError(f"{path} is not a transformer training checkpoint (written by `nextscale train`)")
    tok_path = Path(tokenizer) if tokenizer else path.parent.parent / "tokenizer"
    if not tok_path.exists():
        raise FileNotFoundError(f"tokenizer {tok_path} not found: pass the tokenizer the run was trained with")
    vae = nextscale.load_vae(tok_path, patch_nums=state["model_config"].get("patch_nums"))
    ident = tokenizer_identity(vae)
    if (ident["config_hash"], ident["weights_hash"]) != (state["tokenizer"]["config_hash"], state["tokenizer"]["weights_hash"]):
        raise ConfigError(f"the tokenizer {tok_path} is not the one {path} was trained with")
    if state.get("model_kind", "var") == "raster_ar":
        from nextscale.baseline.raster_ar import RasterAR, RasterARConfig
        model = RasterAR(RasterARConfig.from_dict(state["model_config"]))
    else:
        from nextscale.transformer.var import VAR, VARConfig
        model = VAR(VARConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    model.attach_tokenizer(vae)
    # Read by `nextscale sample`: class names, and the sampling settings the run's sample grids used.
    model.extra_config = {k: state[k] for k in ("class_names", "sampling") if state.get(k)}
    model.extra_config["trained_steps"] = int(state["step"])
    return model.eval()


def export_checkpoint(path: str | os.PathLike, out: str | os.PathLike, tokenizer: str | None = None) -> Path:
    """Write a training checkpoint in the inference format (`nextscale.load_var(out)` reads it)."""
    from nextscale.checkpoints import save_pretrained
    model = checkpoint_to_model(path, tokenizer)
    return save_pretrained(model, out)
