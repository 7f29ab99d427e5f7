"""The configuration of `nextscale train-tokenizer`: TokenizerTrainConfig and its sections.

The config speaks the VAR trainer's vocabulary (var_config): global_batch, precision float32|bfloat16|float16,
optim.lr (absolute peak lr), resume auto|never|PATH, eval_every (independent of log_every). Its own keys (steps,
optim.min_lr_ratio, codebook.*, loss.*, ...) stay as they are: recipes and users' runs rely on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nextscale.config_schema import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, SEED, Range, off_at_zero
from nextscale.data.datasets import DataConfig
from nextscale.tokenizer.vqvae import VQVAEConfig
from nextscale.training.common import normalize_precision, normalize_resume


@dataclass
class LossConfig:
    RANGES = {"reconstruction_weight": NON_NEGATIVE, "codebook_weight": NON_NEGATIVE,
              "perceptual_weight": off_at_zero(), "gan_weight": off_at_zero(), "gan_start_step": NON_NEGATIVE,
              "max_adaptive_weight": POSITIVE, "disc_channels": AT_LEAST_1, "disc_layers": AT_LEAST_1}

    reconstruction: str = "l2"  # "l2" or "l1"
    reconstruction_weight: float = 1.0
    codebook_weight: float = 1.0  # weight of (codebook + beta * commitment); beta is model.beta
    perceptual_weight: float = 0.0  # 0 switches the perceptual loss off
    vgg_weights: str = "auto"  # VGG16 file (.h5 Keras/HED or torchvision .pth), "auto", or "random" (tests)
    lpips_heads: str = "auto"  # lpips vgg.pth (or the lpips wheel), "auto", or "none" (equal channel weights)
    gan_weight: float = 0.0  # 0 switches the GAN off
    gan_start_step: int = 0  # the GAN term (and discriminator training) starts at this step
    adaptive_gan_weight: bool = True  # VQGAN's gradient-norm balance at the decoder's last layer
    max_adaptive_weight: float = 1e4
    disc_channels: int = 64
    disc_layers: int = 3

    GAN_KEYS = ("gan_start_step", "adaptive_gan_weight", "max_adaptive_weight", "disc_channels", "disc_layers")
    PERCEPTUAL_KEYS = ("vgg_weights", "lpips_heads")

    def override_has_no_effect(self, key: str) -> str | None:
        """Why an override of `key` would change nothing (see config.check_overrides_take_effect), else None."""
        if key in self.GAN_KEYS and self.gan_weight == 0:
            return "the GAN is off (loss.gan_weight=0); set loss.gan_weight too (e.g. loss.gan_weight=0.1)"
        if key in self.PERCEPTUAL_KEYS and self.perceptual_weight == 0:
            return ("the perceptual loss is off (loss.perceptual_weight=0); set loss.perceptual_weight too "
                    "(e.g. loss.perceptual_weight=0.1)")
        return None


@dataclass
class CodebookConfig:
    RANGES = {"restart_every": off_at_zero("no restarts"), "restart_until": off_at_zero("until the end"),
              "usage_threshold": NON_NEGATIVE}

    restart_dead_codes: bool = True
    restart_every: int = 200  # steps: a code no scale used during this window is re-initialized (0: no restarts)
    restart_until: int = 0  # no restarts from this step on (0: until the end)
    usage_threshold: float = 0.01  # a code counts as "used" at a scale when its EMA hit count exceeds this

    def override_has_no_effect(self, key: str) -> str | None:
        if key == "restart_until" and not self.restart_dead_codes:
            return "dead-code restarts are off (codebook.restart_dead_codes=false)"
        return None


@dataclass
class OptimConfig:
    RANGES = {"lr": POSITIVE, "betas": Range(low=0, high=1, high_open=True, items=2), "weight_decay": NON_NEGATIVE,
              "warmup_steps": off_at_zero("no warmup"), "min_lr_ratio": FRACTION,
              "grad_clip": off_at_zero("no clipping"),
              "disc_lr": off_at_zero("same as lr"), "disc_betas": Range(low=0, high=1, high_open=True, items=2)}

    lr: float = 2e-4
    betas: tuple[float, ...] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 200  # 0: no warmup
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio at the last step
    grad_clip: float = 0.0  # 0: no clipping
    disc_lr: float = 0.0  # 0: same as lr
    disc_betas: tuple[float, ...] = (0.5, 0.9)


@dataclass
class TokenizerTrainConfig:
    RENAMED = {"batch_size": "global_batch"}
    RANGES = {"seed": SEED, "steps": AT_LEAST_1, "global_batch": AT_LEAST_1, "threads": off_at_zero("the free cores"),
              "log_every": AT_LEAST_1, "eval_every": off_at_zero(), "eval_images": off_at_zero(),
              "checkpoint_every": off_at_zero("only at the end"), "keep_checkpoints": AT_LEAST_1,
              "time_limit_minutes": off_at_zero("no limit"), "stop_at_step": off_at_zero("none")}

    out_dir: str = "runs/tokenizer"
    seed: int = 0
    steps: int = 10000  # >= 1
    global_batch: int = 64  # images per step, over all torchrun processes (split evenly)
    model: VQVAEConfig = field(default_factory=VQVAEConfig)
    init_from: str | None = None  # a tokenizer to start from (folder, .pth, preset name)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    device: str | None = None  # "cpu", "cuda" or None (automatic)
    precision: str = "float32"  # float32, bfloat16 or float16 (autocast; float16 needs a GPU); fp32/bf16/fp16 too
    threads: int = 0  # torch CPU threads per process (0: the cores other programs leave free)
    log_every: int = 25  # >= 1 (the last step is always logged)
    eval_every: int = 500  # held-out PSNR on `eval_images` images every this many steps and at the end (0: never)
    eval_images: int = 512  # 0: no held-out PSNR
    # Also writes model/ (the inference format). 0: only at the end (and at a stop: time limit, signal, stop_at_step).
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2  # >= 1
    time_limit_minutes: float = 0.0  # stop (with a checkpoint and export) after this long; 0: no limit
    # Stop (with a checkpoint and export) at this step, the learning-rate schedule still that of `steps`;
    # rerunning with a larger stop_at_step (or 0: none) resumes. For a tokenizer taken from the middle of a run.
    stop_at_step: int = 0
    resume: str | bool = "auto"  # auto: continue from the newest checkpoint in out_dir; never; or a checkpoint path

    def __post_init__(self):
        self.precision = normalize_precision(self.precision)
        self.resume = normalize_resume(self.resume)
