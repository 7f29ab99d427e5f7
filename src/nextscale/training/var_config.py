"""The configuration of `nextscale train` (spec §5): TrainConfig and its sections, and `config_from`.

Every key can be set in a YAML recipe (configs/) or as a key=value override; `nextscale train --help` lists them
with their defaults. Renaming a key breaks the recipes and users' runs: add RENAMED entries instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nextscale.config_schema import (AT_LEAST_1, BELOW_ONE, FRACTION, NON_NEGATIVE, POSITIVE, SEED, Range,
                                     config_to_dict, from_dict, merge, off_at_zero)
from nextscale.data.datasets import DataConfig
from nextscale.training.common import normalize_precision, normalize_resume
from nextscale.training.config import check_overrides_take_effect, load_config, parse_overrides


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
    # Start from these weights (fine-tuning, a second learning-rate cycle): a folder or .pth (the baseline: a folder).
    init_from: str | None = None


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
class CCAConfig:
    """`cca.*` keys: condition contrastive alignment (training/cca.py), a guidance-free fine-tune of model.init_from."""

    RANGES = {"beta": POSITIVE, "negative_weight": NON_NEGATIVE, "null_fraction": FRACTION}

    enabled: bool = False
    beta: float = 0.02  # β: how far the rewards are scaled before the sigmoid (the paper's 0.02)
    negative_weight: float | None = None  # λ; None: the paper's for the depth (50 d16/d20, 100 d24, 1000 d30)
    null_fraction: float = 0.1  # positives that use the null class (no negative): guidance keeps working


@dataclass
class TrainConfig:
    SHADOWED_BY = {"epochs": "steps"}
    RANGES = {"global_batch": AT_LEAST_1, "micro_batch": AT_LEAST_1, "epochs": POSITIVE, "steps": AT_LEAST_1,
              "seed": SEED, "threads": off_at_zero("the free cores"), "log_every": AT_LEAST_1,
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
    cca: CCAConfig = field(default_factory=CCAConfig)  # guidance-free fine-tuning of model.init_from
    global_batch: int = 256  # images per optimizer step, over all ranks and accumulation steps (>= 1)
    micro_batch: int | None = None  # images per forward pass per rank; None: global_batch / world_size
    epochs: float = 1.0  # > 0
    steps: int | None = None  # overrides epochs (>= 1)
    seed: int = 0
    device: str | None = None  # None: cuda when available
    threads: int = 0  # torch CPU threads per process (0: the cores other programs leave free)
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
        self.precision = normalize_precision(self.precision)
        self.resume = normalize_resume(self.resume)


def config_from(config, overrides=()) -> TrainConfig:
    """A TrainConfig from a TrainConfig, a dict, or a YAML path (+ key=value overrides).

    An override that would not take effect (e.g. optim.base_lr while optim.lr is set) is a ConfigError."""
    if isinstance(config, TrainConfig):
        config = config_to_dict(config)
    if isinstance(config, dict):
        train_config = from_dict(TrainConfig, merge(config, parse_overrides(overrides)))
        check_overrides_take_effect(train_config, overrides)
        return train_config
    return load_config(TrainConfig, config, overrides)
