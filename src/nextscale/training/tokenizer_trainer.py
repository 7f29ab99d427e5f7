"""Train the multi-scale VQ-VAE tokenizer.

    L = ||im - im_hat||^2 + (codebook + beta * commitment, mean over scales)
        + perceptual_weight * LPIPS(im_hat, im) + gan_weight * adaptive_weight * hinge_G(D(im_hat))

The discriminator (PatchGAN, hinge loss) has its own optimizer and starts at `loss.gan_start_step`.
Codebook health: usage per scale from the model's `ema_vocab_hit_SV` buffer is logged, and codes
that no scale used during the last `codebook.restart_every` steps are re-initialized from recent
quantizer inputs (the per-scale residuals of the encoder output).

Run:  nextscale train-tokenizer configs/tokenizer_fashion_mnist.yaml out_dir=runs/tok steps=2000
      torchrun --nproc_per_node 2 -m nextscale.cli train-tokenizer configs/...      (DDP)
Python: `train_tokenizer(load_config(TokenizerTrainConfig, path, overrides))`.

The config speaks the VAR trainer's vocabulary: global_batch, precision float32|bfloat16|float16,
optim.lr (absolute peak lr), resume auto|never|PATH, eval_every (independent of log_every).

Outputs in `out_dir`: config.yaml, metrics.jsonl, checkpoints/step_N.pt (+ .yaml; resumable),
model/ (the inference format: `nextscale.load_vae(out_dir)` or `VQVAE.from_pretrained(out_dir/model)`),
curves.png. Runs of older versions wrote export/ instead of model/; both are read.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from nextscale.config_schema import (AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, SEED, ConfigError, Range,
                                     check_ranges, off_at_zero)
from nextscale.data.datasets import DataConfig, build_dataset
from nextscale.tokenizer.vqvae import VQVAE, VQVAEConfig
from nextscale.training import distributed as dist_utils
from nextscale.training.checkpointing import CheckpointManager, load_checkpoint, restore_rng_state
from nextscale.training.config import save_config
from nextscale.training.discriminator import PatchDiscriminator
from nextscale.training.losses import (adaptive_gan_weight, hinge_discriminator_loss, hinge_generator_loss, psnr,
                                       reconstruction_loss)
from nextscale.training.metrics import MetricsLogger, drop_records_after, plot_curves, progress_bar

PRECISION_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PRECISIONS = ("float32", "bfloat16", "float16")


def normalize_precision(value: str) -> str:
    """float32 | bfloat16 | float16 (the old names fp32, bf16, fp16 are accepted)."""
    value = PRECISION_ALIASES.get(value, value)
    if value not in PRECISIONS:
        raise ConfigError(f"precision must be float32, bfloat16 or float16, got {value!r}")
    return value


def normalize_resume(value) -> str:
    """auto | never | a checkpoint path (true/false are accepted as auto/never)."""
    if value is True:
        return "auto"
    if value is False or value is None:
        return "never"
    if not isinstance(value, str) or not value:
        raise ConfigError(f"resume must be auto, never or a checkpoint path, got {value!r}")
    return value


# ---------------------------------------------------------------------------- config
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
    RANGES = {"seed": SEED, "steps": AT_LEAST_1, "global_batch": AT_LEAST_1, "threads": off_at_zero("torch's default"),
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
    threads: int = 0  # torch CPU threads per process (0: torch's default)
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


# ---------------------------------------------------------------------------- pieces
def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def quantizer_inputs(vae: VQVAE, f_BChw: torch.Tensor) -> torch.Tensor:
    """(N, C): the vectors the codebook is matched against at every scale (the residual, area-downsampled)."""
    q = vae.quantize
    _, f_hats = q.tokenize(f_BChw)
    rows = []
    for si, pn in enumerate(q.patch_nums):
        rest = f_BChw - (f_hats[si - 1] if si > 0 else 0)
        z = rest if si == q.num_scales - 1 else F.interpolate(rest, size=(pn, pn), mode="area")
        rows.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
    return torch.cat(rows)


@torch.no_grad()
def restart_dead_codes(vae: VQVAE, hits_V: torch.Tensor, candidates_NC: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
    """Re-initialize every code with zero hits to a randomly chosen candidate vector; returns their indices.

    Call on every rank with the same arguments (the trainer broadcasts rank 0's candidates)."""
    dead = torch.nonzero(hits_V == 0).flatten()
    if len(dead) == 0 or len(candidates_NC) == 0:
        return dead[:0]
    n = len(candidates_NC)
    if n >= len(dead):
        pick = torch.randperm(n, generator=generator)[:len(dead)]
        new = candidates_NC[pick]
    else:  # fewer candidates than dead codes: reuse them with a little noise so the codes differ
        pick = torch.randint(0, n, (len(dead),), generator=generator)
        new = candidates_NC[pick]
        new = new + 0.01 * new.std() * torch.randn(new.shape, generator=generator)
    weight = vae.quantize.embedding.weight
    weight[dead.to(weight.device)] = new.to(weight)
    return dead


def reset_optimizer_rows(optimizer: torch.optim.Optimizer, param: torch.Tensor, rows: torch.Tensor) -> None:
    """Zero Adam's moments for some rows of a parameter (restarted codes start with fresh statistics)."""
    state = optimizer.state.get(param)
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][rows.to(state[key].device)] = 0


def usage_per_scale(vae: VQVAE, threshold: float) -> list[float]:
    """Fraction of the vocabulary whose EMA hit count exceeds `threshold`, per scale."""
    return (vae.quantize.ema_vocab_hit_SV > threshold).float().mean(1).tolist()


@torch.no_grad()
def evaluate_psnr(vae: VQVAE, images_BChw: torch.Tensor, batch_size: int = 128) -> float:
    """Mean per-image PSNR (dB, images in [0, 1]) of reconstructions with all scales."""
    was_training = vae.training
    vae.eval()
    values = []
    for i in range(0, len(images_BChw), batch_size):
        img = images_BChw[i:i + batch_size]
        rec = vae.decode_fhat(vae.encode_fhats(img)[-1])
        values.append(psnr((rec + 1) / 2, (img + 1) / 2))
    vae.train(was_training)
    return torch.cat(values).mean().item()


class _ResumableSampler(torch.utils.data.Sampler):
    """This rank's indices of a seeded DistributedSampler epoch, optionally starting part-way in (resume)."""

    def __init__(self, sampler: torch.utils.data.DistributedSampler):
        self.sampler = sampler
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return iter(list(self.sampler)[self.start:])

    def __len__(self) -> int:
        return len(self.sampler) - self.start


def _infinite_batches(loader: DataLoader, sampler: _ResumableSampler, batch_size: int, epoch: int,
                      skip_batches: int):
    """Yield (epoch, batch index within epoch, batch) forever, starting part-way into `epoch`. Skipped
    batches are never loaded, so their random crops do not consume the random state."""
    while True:
        sampler.set_epoch(epoch, skip_batches * batch_size)
        for i, batch in enumerate(loader, start=skip_batches):
            yield epoch, i, batch
        skip_batches = 0
        epoch += 1


# ---------------------------------------------------------------------------- training
def train_tokenizer(cfg: TokenizerTrainConfig) -> dict:
    """Train (or resume) as configured; returns a summary: step, minutes, usage_per_scale, eval_psnr (rank 0,
    when held-out images exist), and the trained modules `vae` and `discriminator` (None without the GAN)."""
    check_ranges(cfg)  # every value (model, data, loss, ... sections too) in its range before any work
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    info = dist_utils.init_distributed(cfg.device)
    device, main = info.device, info.is_main
    if cfg.global_batch % info.world_size:
        raise ValueError(f"global_batch {cfg.global_batch} does not split evenly over {info.world_size} processes")
    precision = normalize_precision(cfg.precision)
    if precision == "float16" and device.type != "cuda":
        raise ValueError("precision float16 needs a GPU; use float32 (or bfloat16) on CPU")
    if cfg.data.resolution != cfg.model.resolution:
        raise ValueError(f"data.resolution {cfg.data.resolution} does not match the tokenizer's resolution "
                         f"{cfg.model.resolution} (= last patch_num {cfg.model.patch_nums[-1]} x downsample "
                         f"{cfg.model.downsample})")
    if cfg.data.channels != cfg.model.image_channels:
        raise ValueError(f"data.channels {cfg.data.channels} != model.image_channels {cfg.model.image_channels}")
    if cfg.loss.gan_weight > 0 and cfg.model.resolution // 2 ** cfg.loss.disc_layers < 3:
        most = max(0, int(math.log2(cfg.model.resolution / 3)))
        raise ValueError(f"loss.disc_layers={cfg.loss.disc_layers} halves {cfg.model.resolution} px images too often "
                         f"for the discriminator's 4x4 convs: use at most {most}")
    out_dir = Path(cfg.out_dir)
    per_rank_batch = cfg.global_batch // info.world_size
    torch.manual_seed(cfg.seed)  # same initial weights on every rank

    # Data: a seeded distributed sampler; num_workers 0 keeps the random crops on this process's RNG.
    train_set = build_dataset(cfg.data, train=True)
    if len(train_set) < cfg.global_batch:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than one batch ({cfg.global_batch}): "
                         f"lower global_batch")
    sampler = _ResumableSampler(dist_utils.make_sampler(train_set, shuffle=True, seed=cfg.seed, drop_last=True))
    # The loader's own generator draws the worker seeds, so creating an iterator leaves the global RNG alone.
    loader = DataLoader(train_set, batch_size=per_rank_batch, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed + 2 + info.rank))
    batches_per_epoch = len(sampler.sampler) // per_rank_batch
    eval_images = None
    if main and cfg.eval_every > 0 and cfg.eval_images > 0:
        from nextscale.data.datasets import NoHeldOutData
        try:
            eval_set = build_dataset(cfg.data, train=False)
            n = min(cfg.eval_images, len(eval_set))
            eval_images = torch.stack([eval_set[i][0] for i in range(n)]).to(device)
        except NoHeldOutData as e:
            eval_images = None
            dist_utils.print_main(f"held-out PSNR skipped: {e}")

    # Models and optimizers.
    vae = VQVAE(cfg.model)
    if cfg.init_from:
        start = nextscale_load_vae(cfg.init_from, patch_nums=cfg.model.patch_nums)
        if start.config.to_dict() != vae.config.to_dict():
            raise ValueError(f"init_from {cfg.init_from} has another architecture than `model`: "
                             f"{start.config.to_dict()} vs {vae.config.to_dict()}")
        vae.load_state_dict(start.state_dict())
    vae = vae.to(device).train()
    # With few scales some shared phi convs serve no scale; freeze them so DDP expects no gradient there.
    q = vae.quantize
    used_phis = {q.quant_resi.index_for(si, q.num_scales) for si in range(q.num_scales)}
    for i, phi in enumerate(q.quant_resi.qresi_ls):
        phi.requires_grad_(i in used_phis)
    # Each rank updates the usage buffer from its own batch; the trainer averages it after every step
    # (the EMA of the mean hit counts), so DDP need not broadcast buffers.
    model = dist_utils.wrap_ddp(vae, info, broadcast_buffers=False)
    opt_g = torch.optim.AdamW(vae.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                              weight_decay=cfg.optim.weight_decay)
    use_gan = cfg.loss.gan_weight > 0
    disc = disc_ddp = opt_d = None
    if use_gan:
        disc = PatchDiscriminator(cfg.model.image_channels, cfg.loss.disc_channels, cfg.loss.disc_layers).to(device)
        disc_ddp = dist_utils.wrap_ddp(disc, info)
        opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.optim.disc_lr or cfg.optim.lr,
                                  betas=tuple(cfg.optim.disc_betas), weight_decay=0.0)
    perceptual = None
    if cfg.loss.perceptual_weight > 0:
        from nextscale.training.perceptual import LPIPS
        perceptual = LPIPS(cfg.loss.vgg_weights, cfg.loss.lpips_heads).to(device)
        dist_utils.print_main(f"perceptual loss: VGG16 from {perceptual.vgg_source}, heads {perceptual.heads_source}"
                              + ("" if perceptual.is_published_lpips else " (values differ from published LPIPS)"))
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "float16")
    autocast_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision)
    restart_gen = torch.Generator().manual_seed(cfg.seed + 1)
    window_hits_V = torch.zeros(cfg.model.vocab_size, device=device)

    # Resume.
    ckpts = CheckpointManager(out_dir / "checkpoints", keep_last=cfg.keep_checkpoints)
    if main:  # what a kill during a checkpoint write left behind
        ckpts.remove_stale_temp_files()
    step, epoch, batch_in_epoch, elapsed_before = 0, 0, 0, 0.0
    resume = normalize_resume(cfg.resume)
    state = None
    if resume == "never":
        latest = None
        if ckpts.latest() is not None:
            raise ConfigError(f"{ckpts.folder} already holds checkpoints and resume=never: choose another out_dir, "
                              f"delete them, or resume=auto to continue")
    elif resume == "auto":
        # Rank 0 picks the newest checkpoint that loads (a damaged one is set aside with a warning); the other
        # ranks load the same file.
        found = ckpts.load_latest(map_location=device) if main else None
        latest = dist_utils.broadcast_object(found[0] if found else None)
        state = found[1] if found else None
    else:
        latest = Path(resume)
        if not latest.is_file():
            raise ConfigError(f"resume={resume}: no such checkpoint file (use auto, never or a checkpoint_*.pt path)")
    if latest is not None:
        if state is None:  # a damaged checkpoint named by resume=PATH stays an error
            state = load_checkpoint(latest, map_location=device)
        vae.load_state_dict(state["vae"])
        vae.quantize.ema_initialized = True
        opt_g.load_state_dict(state["opt_g"])
        if use_gan:
            if "disc" not in state:
                raise ValueError(f"{latest} was trained without the GAN; resume it with loss.gan_weight=0 or "
                                 f"start a new out_dir")
            disc.load_state_dict(state["disc"])
            opt_d.load_state_dict(state["opt_d"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        window_hits_V.copy_(state["window_hits_V"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        elapsed_before = state.get("elapsed_seconds", 0.0)
        restore_rng_state(state["rng"][min(info.rank, len(state["rng"]) - 1)], {"restart": restart_gen})
        dist_utils.print_main(f"resumed from {latest} at step {step}")
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
        # The steps after the checkpoint are trained (and logged) again: keep one line per step.
        dropped = drop_records_after(out_dir / "metrics.jsonl", step)
        if dropped:
            dist_utils.print_main(f"metrics.jsonl: dropped {dropped} line(s) after step {step}, which this run "
                                  f"trains again")
    metrics = MetricsLogger(out_dir, enabled=main, resumed_step=step)

    def save(step_now: int) -> None:
        # Every rank's random state is gathered so that each resumes its own stream.
        rng_states = dist_utils.gather_rng_states({"restart": restart_gen})
        if not main:
            return
        state = {"vae": vae.state_dict(), "opt_g": opt_g.state_dict(), "scaler": scaler.state_dict(),
                 "window_hits_V": window_hits_V.cpu(), "step": step_now,
                 "epoch": epoch_now, "batch_in_epoch": batch_now,
                 "elapsed_seconds": elapsed_before + time.time() - start_time, "rng": rng_states}
        if use_gan:
            state["disc"], state["opt_d"] = disc.state_dict(), opt_d.state_dict()
        ckpts.save(step_now, state, config=cfg)
        vae.save_pretrained(out_dir / "model")

    start_time, start_step = time.time(), step
    batches = _infinite_batches(loader, sampler, per_rank_batch, epoch, batch_in_epoch)
    bar = progress_bar(total=cfg.steps, initial=step, desc="train-tokenizer", enabled=main)
    last_eval = None  # (step, held-out PSNR): the final summary reuses it when taken at the last step
    epoch_now, batch_now = epoch, batch_in_epoch
    images_seen_since_log, log_clock = 0, time.time()
    # Per-step values stay on the device (float64 sums) and are read once per log interval: reading
    # them every step would make a GPU wait for every step to finish.
    sums: dict[str, torch.Tensor | int] = {}
    last_step = min(cfg.steps, cfg.stop_at_step) if cfg.stop_at_step else cfg.steps
    with dist_utils.StopRequested() as stop:
        while step < last_step:
            epoch_now, batch_idx, (img, _labels) = next(batches)
            img = img.to(device, non_blocking=True)
            lr = lr_at(step, cfg.optim, cfg.steps)
            for group in opt_g.param_groups:
                group["lr"] = lr
            gan_on = use_gan and step >= cfg.loss.gan_start_step

            # ---- tokenizer step
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                rec, vq_loss, tokens, f = model(img, return_latent=True)
                rec_loss = reconstruction_loss(rec.float(), img, cfg.loss.reconstruction)
                nll = cfg.loss.reconstruction_weight * rec_loss
                logs = {"rec_loss": rec_loss.detach(), "vq_loss": vq_loss.detach()}
                if perceptual is not None:
                    p_loss = perceptual(rec.float(), img).mean()
                    nll = nll + cfg.loss.perceptual_weight * p_loss
                    logs["perceptual_loss"] = p_loss.detach()
                loss = nll + cfg.loss.codebook_weight * vq_loss
                if gan_on:
                    # Score with the plain module and frozen parameters: no discriminator gradients here.
                    disc.requires_grad_(False)
                    g_loss = hinge_generator_loss(disc(rec.float()))
                    disc.requires_grad_(True)
                    if cfg.loss.adaptive_gan_weight:
                        weight = adaptive_gan_weight(nll, g_loss, vae.decoder.conv_out.weight,
                                                     cfg.loss.max_adaptive_weight)
                    else:
                        weight = torch.ones(())
                    loss = loss + cfg.loss.gan_weight * weight * g_loss
                    logs["g_loss"], logs["gan_adaptive_weight"] = g_loss.detach(), weight.detach()
            opt_g.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.grad_clip > 0:
                scaler.unscale_(opt_g)
                logs["grad_norm"] = nn.utils.clip_grad_norm_(vae.parameters(), cfg.optim.grad_clip)
            scaler.step(opt_g)

            # ---- discriminator step
            if gan_on:
                for group in opt_d.param_groups:
                    group["lr"] = lr * (cfg.optim.disc_lr or cfg.optim.lr) / cfg.optim.lr
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    logits = disc_ddp(torch.cat([img, rec.detach().float()]))
                    logits_real, logits_fake = logits.chunk(2)
                    d_loss = hinge_discriminator_loss(logits_real.float(), logits_fake.float())
                opt_d.zero_grad(set_to_none=True)
                scaler.scale(d_loss).backward()
                scaler.step(opt_d)
                logs["d_loss"] = d_loss.detach()
                logs["logits_real"], logs["logits_fake"] = logits_real.detach().mean(), logits_fake.detach().mean()
            scaler.update()
            step += 1
            batch_now = batch_idx + 1
            if batch_now >= batches_per_epoch:
                epoch_now, batch_now = epoch_now + 1, 0

            # ---- codebook health
            if dist_utils.is_distributed():
                vae.quantize.ema_vocab_hit_SV.copy_(dist_utils.all_reduce_mean(vae.quantize.ema_vocab_hit_SV))
            with torch.no_grad():
                for t in tokens:
                    window_hits_V += torch.bincount(t.flatten(), minlength=cfg.model.vocab_size).to(window_hits_V)
            restart_open = cfg.codebook.restart_until <= 0 or step < cfg.codebook.restart_until
            if cfg.codebook.restart_dead_codes and restart_open and cfg.codebook.restart_every > 0 \
                    and step % cfg.codebook.restart_every == 0:
                hits = dist_utils.all_reduce_sum(window_hits_V)
                candidates = dist_utils.broadcast_object(quantizer_inputs(vae, f).cpu() if main else None)
                dead = restart_dead_codes(vae, hits.cpu(), candidates, restart_gen)
                reset_optimizer_rows(opt_g, vae.quantize.embedding.weight, dead)
                logs["codes_restarted"] = len(dead)
                window_hits_V.zero_()
            elif cfg.codebook.restart_every > 0 and step % cfg.codebook.restart_every == 0:
                window_hits_V.zero_()

            # ---- logging
            for k, v in logs.items():
                sums[k] = sums.get(k, 0) + (v.double() if isinstance(v, torch.Tensor) else v)
            images_seen_since_log += cfg.global_batch
            if main:
                bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                n_steps = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
                record = {k: float(v) / n_steps for k, v in sums.items() if k != "codes_restarted"}
                if "codes_restarted" in sums:
                    record["codes_restarted"] = sums["codes_restarted"]
                now = time.time()
                record["images_per_s"] = images_seen_since_log / max(now - log_clock, 1e-9)
                record["lr"] = lr
                if cfg.loss.reconstruction == "l2":
                    record["train_psnr"] = 10 * math.log10(4.0 / max(record["rec_loss"], 1e-10))
                usage = usage_per_scale(vae, cfg.codebook.usage_threshold)
                record.update({f"usage_scale{si + 1}": u for si, u in enumerate(usage)})
                metrics.log(step, **record)
                sums, images_seen_since_log, log_clock = {}, 0, now
                if main:
                    postfix = {"rec": f"{record['rec_loss']:.4f}", "vq": f"{record['vq_loss']:.4f}"}
                    if "train_psnr" in record:
                        postfix["psnr"] = f"{record['train_psnr']:.1f}"
                    bar.set_postfix({**postfix, "img/s": f"{record['images_per_s']:.0f}",
                                     "use": f"{usage[-1]:.2f}"}, refresh=True)
            # Held-out evaluation: its own cadence (not tied to log_every), its own metrics line.
            if main and eval_images is not None and cfg.eval_every > 0 and step % cfg.eval_every == 0:
                last_eval = (step, evaluate_psnr(vae, eval_images))
                metrics.log(step, eval_psnr=last_eval[1])
            elapsed_min = (elapsed_before + time.time() - start_time) / 60
            out_of_time = cfg.time_limit_minutes > 0 and elapsed_min >= cfg.time_limit_minutes
            out_of_time, stop_now = dist_utils.broadcast_object((out_of_time, bool(stop.signum)))
            stop_here = step == cfg.stop_at_step
            checkpoint_due = bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0
            if checkpoint_due or step == cfg.steps or out_of_time or stop_now or stop_here:
                save(step)
            if out_of_time or stop_now or stop_here:
                why = "time limit reached" if out_of_time else "signal received" if stop_now else "stop_at_step"
                dist_utils.print_main(f"stopping at step {step} of {cfg.steps}: {why}")
                break
    bar.close()
    summary = {"step": step, "minutes": (elapsed_before + time.time() - start_time) / 60,
               "usage_per_scale": usage_per_scale(vae, cfg.codebook.usage_threshold),
               "vae": vae, "discriminator": disc}
    if main and eval_images is not None:
        if last_eval is None or last_eval[0] != step:  # the final held-out PSNR, logged like the others
            last_eval = (step, evaluate_psnr(vae, eval_images))
            if step > start_step:  # (a rerun of a finished run trains nothing and logs nothing)
                metrics.log(step, eval_psnr=last_eval[1])
        summary["eval_psnr"] = last_eval[1]
    metrics.close()
    if main:
        keys = [("train_psnr", "eval_psnr"), "rec_loss", "vq_loss", "usage_scale*"]
        keys += [k for k in ("perceptual_loss", ("g_loss", "d_loss")) if _logged(out_dir, k)]
        _plot(out_dir / "metrics.jsonl", out_dir / "curves.png", keys, log_y=["rec_loss", "vq_loss"])
    dist_utils.barrier()
    return summary


def _plot(jsonl, png, keys, log_y=()) -> None:
    """curves.png; a plotting failure is a warning, never the end of a finished training."""
    try:
        plot_curves(jsonl, png, keys, log_y=log_y)
    except Exception as e:  # noqa: BLE001
        import warnings
        warnings.warn(f"could not draw {png}: {type(e).__name__}: {e}")


def _logged(out_dir: Path, key) -> bool:
    from nextscale.training.metrics import read_jsonl
    path = out_dir / "metrics.jsonl"
    keys = (key,) if isinstance(key, str) else tuple(key)
    return path.is_file() and any(k in r for r in read_jsonl(path)[-5:] for k in keys)


def nextscale_load_vae(path, **kwargs):
    import nextscale
    return nextscale.load_vae(path, **kwargs)

