"""Train the multi-scale VQ-VAE tokenizer.

    L = ||im - im_hat||^2 + (codebook + beta * commitment, mean over scales)
        + perceptual_weight * LPIPS(im_hat, im) + gan_weight * adaptive_weight * hinge_G(D(im_hat))

The discriminator (PatchGAN, hinge loss) has its own optimizer and starts at `loss.gan_start_step`.
Codebook health (tokenizer_codebook): usage per scale from the model's `ema_vocab_hit_SV` buffer is logged,
and codes that no scale used during the last `codebook.restart_every` steps are re-initialized from recent
quantizer inputs (the per-scale residuals of the encoder output).

Run:  nextscale train-tokenizer configs/tokenizer_fashion_mnist.yaml out_dir=runs/tok steps=2000
      torchrun --nproc_per_node 2 -m nextscale.cli train-tokenizer configs/...      (DDP)
Python: `train_tokenizer(load_config(TokenizerTrainConfig, path, overrides))`.

The config (tokenizer_config) speaks the VAR trainer's vocabulary: global_batch, precision
float32|bfloat16|float16, optim.lr (absolute peak lr), resume auto|never|PATH, eval_every (independent of
log_every); precision, resume, the run folder and the model-folder export are the shared ones of `common`.

Outputs in `out_dir`: config.yaml, metrics.jsonl, checkpoints/step_N.pt (+ .yaml; resumable),
model/ (the inference format: `nextscale.load_vae(out_dir)` or `nextscale.load_vae(out_dir / "model")`),
curves.png. Runs of older versions wrote export/ instead of model/; both are read.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from nextscale.config_schema import ConfigError, check_ranges
from nextscale.data.datasets import build_dataset
from nextscale.evaluation.colour import colourfulness, mean_colour_error
from nextscale.tokenizer.vqvae import VQVAE
from nextscale.training import common
from nextscale.training import distributed as D
from nextscale.training.checkpointing import restore_rng_state
from nextscale.training.common import normalize_precision, normalize_resume  # noqa: F401 (their old home)
from nextscale.training.discriminator import PatchDiscriminator
from nextscale.training.losses import (adaptive_gan_weight, hinge_discriminator_loss,
                                       hinge_generator_loss, psnr, reconstruction_loss)
from nextscale.training.metrics import MetricsLogger, progress_bar, read_jsonl
from nextscale.training.optim import build_plain_adamw, warmup_then_cosine
from nextscale.training.tokenizer_codebook import (quantizer_inputs, reset_optimizer_rows,  # noqa: F401
                                                   restart_dead_codes, usage_per_scale)
from nextscale.training.tokenizer_config import (CodebookConfig, LossConfig, OptimConfig,  # noqa: F401
                                                 TokenizerTrainConfig)


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio (`cfg`: the optim section)."""
    return warmup_then_cosine(step, cfg.lr, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)


@torch.no_grad()
def evaluate_held_out(vae: VQVAE, images_BChw: torch.Tensor, batch_size: int = 128) -> dict:
    """Reconstructions with all scales, against the images: eval_psnr (mean per-image PSNR, dB, images in [0, 1]),
    eval_colourfulness and eval_real_colourfulness (Hasler-Suesstrunk, 0-255; a tokenizer that drops colour
    shows it here first), eval_colour_error (mean-colour error per image, 0-255)."""
    was_training = vae.training
    vae.eval()
    sums = dict.fromkeys(("eval_psnr", "eval_colourfulness", "eval_real_colourfulness", "eval_colour_error"), 0.0)
    for i in range(0, len(images_BChw), batch_size):
        img01 = (images_BChw[i:i + batch_size] + 1) / 2
        rec01 = (vae.decode_fhat(vae.encode_fhats(img01 * 2 - 1)[-1]) + 1) / 2
        sums["eval_psnr"] += psnr(rec01, img01).double().sum().item()
        if img01.shape[1] == 3:
            sums["eval_colourfulness"] += colourfulness(rec01).sum().item()
            sums["eval_real_colourfulness"] += colourfulness(img01).sum().item()
            sums["eval_colour_error"] += mean_colour_error(rec01, img01).sum().item()
    vae.train(was_training)
    result = {k: v / len(images_BChw) for k, v in sums.items()}
    if images_BChw.shape[1] != 3:  # grey images: no colour to measure
        result = {"eval_psnr": result["eval_psnr"]}
    return result


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
    """Train (or resume) as `cfg` (the config; its public name) says; returns a summary: step, minutes,
    usage_per_scale, eval_psnr (rank 0, when held-out images exist), and the trained modules `vae` and
    `discriminator` (None without the GAN)."""
    check_ranges(cfg)  # every value (model, data, loss, ... sections too) in its range before any work
    common.set_threads(cfg.threads)
    info = D.init_distributed(cfg.device)
    return _TokenizerTrainer(cfg, info).run()


class _TokenizerTrainer:
    def __init__(self, config: TokenizerTrainConfig, info: D.DistInfo):
        self.config, self.info = config, info
        self.device, self.main = info.device, info.is_main
        self.out = Path(config.out_dir)

    # ------------------------------------------------------------------ setup
    def check_inputs(self) -> None:
        """Every problem that would otherwise surface mid-run, as one ConfigError before any work."""
        config, model = self.config, self.config.model
        if config.global_batch % self.info.world_size:
            raise ConfigError(f"global_batch {config.global_batch} does not split evenly over "
                              f"{self.info.world_size} processes")
        self.precision = common.check_precision(config.precision, self.device)
        if config.data.resolution != model.resolution:
            raise ConfigError(f"data.resolution {config.data.resolution} does not match the tokenizer's resolution "
                              f"{model.resolution} (= last patch_num {model.patch_nums[-1]} x downsample "
                              f"{model.downsample})")
        if config.data.channels != model.image_channels:
            raise ConfigError(f"data.channels {config.data.channels} != model.image_channels {model.image_channels}")
        if config.loss.gan_weight > 0 and model.resolution // 2 ** config.loss.disc_layers < 3:
            most = max(0, int(math.log2(model.resolution / 3)))
            raise ConfigError(f"loss.disc_layers={config.loss.disc_layers} halves {model.resolution} px images too "
                              f"often for the discriminator's 4x4 convs: use at most {most}")

    def _open_data(self) -> None:
        """A seeded distributed sampler; num_workers 0 keeps the random crops on this process's RNG."""
        config = self.config
        self.per_rank_batch = config.global_batch // self.info.world_size
        train_set = build_dataset(config.data, train=True)
        if len(train_set) < config.global_batch:
            raise ConfigError(f"the training set has {len(train_set)} images, fewer than one batch "
                              f"({config.global_batch}): lower global_batch")
        self.sampler = _ResumableSampler(D.make_sampler(train_set, shuffle=True, seed=config.seed, drop_last=True))
        # The loader's own generator draws the worker seeds, so creating an iterator leaves the global RNG alone.
        self.loader = DataLoader(train_set, batch_size=self.per_rank_batch, sampler=self.sampler, drop_last=True,
                                 num_workers=config.data.num_workers, pin_memory=self.device.type == "cuda",
                                 generator=torch.Generator().manual_seed(config.seed + 2 + self.info.rank))
        self.batches_per_epoch = len(self.sampler.sampler) // self.per_rank_batch
        self.eval_images = None
        if self.main and config.eval_every > 0 and config.eval_images > 0:
            from nextscale.data.datasets import NoHeldOutData
            try:
                eval_set = build_dataset(config.data, train=False)
                n = min(config.eval_images, len(eval_set))
                self.eval_images = torch.stack([eval_set[i][0] for i in range(n)]).to(self.device)
            except NoHeldOutData as e:
                D.print_main(f"held-out PSNR skipped: {e}")

    def _build_models(self) -> None:
        """The tokenizer (from init_from), the discriminator, the perceptual loss, their optimizers."""
        config, device = self.config, self.device
        vae = VQVAE(config.model)
        if config.init_from:
            from nextscale.checkpoints import load_vae
            start = load_vae(config.init_from, patch_nums=config.model.patch_nums)
            if start.config.to_dict() != vae.config.to_dict():
                differ = ", ".join(f"model.{k}={v} (init_from has {start.config.to_dict()[k]})"
                                   for k, v in vae.config.to_dict().items() if start.config.to_dict().get(k) != v)
                raise ConfigError(f"init_from {config.init_from} has another architecture than `model`: {differ}; "
                                  f"keep its architecture, or train from scratch with init_from=null")
            vae.load_state_dict(start.state_dict())
        self.vae = vae = vae.to(device).train()
        # With few scales some shared phi convs serve no scale; freeze them so DDP expects no gradient there.
        q = vae.quantize
        used_phis = {q.quant_resi.index_for(si, q.num_scales) for si in range(q.num_scales)}
        for i, phi in enumerate(q.quant_resi.qresi_ls):
            phi.requires_grad_(i in used_phis)
        # Each rank updates the usage buffer from its own batch; the trainer averages it after every step
        # (the EMA of the mean hit counts), so DDP need not broadcast buffers.
        self.model = D.wrap_ddp(vae, self.info, broadcast_buffers=False)
        optim = config.optim
        self.opt_g = build_plain_adamw(vae.parameters(), optim.lr, optim.betas, optim.weight_decay)
        self.use_gan = config.loss.gan_weight > 0
        self.disc = self.disc_ddp = self.opt_d = None
        if self.use_gan:
            self.disc = PatchDiscriminator(config.model.image_channels, config.loss.disc_channels,
                                           config.loss.disc_layers).to(device)
            self.disc_ddp = D.wrap_ddp(self.disc, self.info)
            self.opt_d = build_plain_adamw(self.disc.parameters(), optim.disc_lr or optim.lr, optim.disc_betas, 0.0)
        self.perceptual = None
        if config.loss.perceptual_weight > 0:
            from nextscale.training.perceptual import LPIPS
            self.perceptual = LPIPS(config.loss.vgg_weights, config.loss.lpips_heads).to(device)
            D.print_main(f"perceptual loss: VGG16 from {self.perceptual.vgg_source}, heads "
                         f"{self.perceptual.heads_source}"
                         + ("" if self.perceptual.is_published_lpips else " (values differ from published LPIPS)"))
        self.scaler = common.grad_scaler(self.precision, device)
        self.autocast = common.autocast(self.precision, device)
        self.restart_gen = torch.Generator().manual_seed(config.seed + 1)
        self.window_hits_V = torch.zeros(config.model.vocab_size, device=device)

    def _resume(self) -> None:
        """Continue from a checkpoint (common.find_resume_checkpoint's rules): weights, optimizers, scaler, the
        codebook window, the data position, the elapsed time and every rank's random states."""
        self.step, self.epoch, self.batch_in_epoch, self.elapsed_before = 0, 0, 0, 0.0
        found = common.find_resume_checkpoint(self.ckpts, normalize_resume(self.config.resume), self.main,
                                              map_location=self.device)
        if found is None:
            return
        path, state = found
        self.vae.load_state_dict(state["vae"])
        self.vae.quantize.ema_initialized = True
        self.opt_g.load_state_dict(state["opt_g"])
        if self.use_gan:
            if "disc" not in state:
                raise ConfigError(f"{path} was trained without the GAN; resume it with loss.gan_weight=0 or "
                                  f"start a new out_dir")
            self.disc.load_state_dict(state["disc"])
            self.opt_d.load_state_dict(state["opt_d"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.window_hits_V.copy_(state["window_hits_V"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.elapsed_before = state.get("elapsed_seconds", 0.0)
        restore_rng_state(state["rng"][min(self.info.rank, len(state["rng"]) - 1)], {"restart": self.restart_gen})
        D.print_main(f"resumed from {path} at step {self.step}")

    def setup(self) -> None:
        self.check_inputs()
        torch.manual_seed(self.config.seed)  # same initial weights on every rank
        self._open_data()
        self._build_models()
        self.ckpts = common.open_checkpoints(self.out, self.config.keep_checkpoints, self.main)
        self._resume()
        if self.main:
            common.write_run_config(self.out, self.config)
            common.drop_retrained_records(self.out, self.step, self.main)

    # ------------------------------------------------------------------ checkpoints
    def elapsed_seconds(self) -> float:
        return self.elapsed_before + time.time() - self.start_time

    def save(self) -> None:
        """A checkpoint of the current step, and model/ (the inference format) next to it."""
        # Every rank's random state is gathered so that each resumes its own stream.
        rng_states = D.gather_rng_states({"restart": self.restart_gen})
        if not self.main:
            return
        state = {"vae": self.vae.state_dict(), "opt_g": self.opt_g.state_dict(), "scaler": self.scaler.state_dict(),
                 "window_hits_V": self.window_hits_V.cpu(), "step": self.step,
                 "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                 "elapsed_seconds": self.elapsed_seconds(), "rng": rng_states}
        if self.use_gan:
            state["disc"], state["opt_d"] = self.disc.state_dict(), self.opt_d.state_dict()
        self.ckpts.save(self.step, state, config=self.config)
        common.export_model(self.vae, self.out / common.MODEL_SUBDIR)

    # ------------------------------------------------------------------ one step
    def generator_step(self, img: torch.Tensor, gan_on: bool, logs: dict):
        """The tokenizer's loss, backward and optimizer step -> (reconstruction, tokens, latent)."""
        config, loss_config = self.config, self.config.loss
        with self.autocast:
            rec, vq_loss, tokens, f = self.model(img, return_latent=True)
            rec_loss = reconstruction_loss(rec.float(), img, loss_config.reconstruction)
            nll = loss_config.reconstruction_weight * rec_loss
            logs.update(rec_loss=rec_loss.detach(), vq_loss=vq_loss.detach())
            if self.perceptual is not None:
                p_loss = self.perceptual(rec.float(), img).mean()
                nll = nll + loss_config.perceptual_weight * p_loss
                logs["perceptual_loss"] = p_loss.detach()
            loss = nll + loss_config.codebook_weight * vq_loss
            if gan_on:
                # Score with the plain module and frozen parameters: no discriminator gradients here.
                self.disc.requires_grad_(False)
                g_loss = hinge_generator_loss(self.disc(rec.float()))
                self.disc.requires_grad_(True)
                if loss_config.adaptive_gan_weight:
                    weight = adaptive_gan_weight(nll, g_loss, self.vae.decoder.conv_out.weight,
                                                 loss_config.max_adaptive_weight)
                else:
                    weight = torch.ones(())
                loss = loss + loss_config.gan_weight * weight * g_loss
                logs["g_loss"], logs["gan_adaptive_weight"] = g_loss.detach(), weight.detach()
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if config.optim.grad_clip > 0:
            self.scaler.unscale_(self.opt_g)
            logs["grad_norm"] = nn.utils.clip_grad_norm_(self.vae.parameters(), config.optim.grad_clip)
        self.scaler.step(self.opt_g)
        return rec, tokens, f

    def discriminator_step(self, img: torch.Tensor, rec: torch.Tensor, lr: float, logs: dict) -> None:
        optim = self.config.optim
        for group in self.opt_d.param_groups:
            group["lr"] = lr * (optim.disc_lr or optim.lr) / optim.lr
        with self.autocast:
            logits = self.disc_ddp(torch.cat([img, rec.detach().float()]))
            logits_real, logits_fake = logits.chunk(2)
            d_loss = hinge_discriminator_loss(logits_real.float(), logits_fake.float())
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(d_loss).backward()
        self.scaler.step(self.opt_d)
        logs["d_loss"] = d_loss.detach()
        logs["logits_real"], logs["logits_fake"] = logits_real.detach().mean(), logits_fake.detach().mean()

    @torch.no_grad()
    def codebook_health(self, tokens, f: torch.Tensor, logs: dict) -> None:
        """Average the usage buffer over ranks, count this step's codes, restart dead codes when due."""
        config, vae, codebook = self.config, self.vae, self.config.codebook
        if D.is_distributed():
            vae.quantize.ema_vocab_hit_SV.copy_(D.all_reduce_mean(vae.quantize.ema_vocab_hit_SV))
        for t in tokens:
            self.window_hits_V += torch.bincount(t.flatten(), minlength=config.model.vocab_size).to(self.window_hits_V)
        due = codebook.restart_every > 0 and self.step % codebook.restart_every == 0
        restart_open = codebook.restart_until <= 0 or self.step < codebook.restart_until
        if codebook.restart_dead_codes and restart_open and due:
            hits = D.all_reduce_sum(self.window_hits_V)
            candidates = D.broadcast_object(quantizer_inputs(vae, f).cpu() if self.main else None)
            dead = restart_dead_codes(vae, hits.cpu(), candidates, self.restart_gen)
            reset_optimizer_rows(self.opt_g, vae.quantize.embedding.weight, dead)
            logs["codes_restarted"] = len(dead)
            self.window_hits_V.zero_()
        elif due:
            self.window_hits_V.zero_()

    def train_step(self, epoch: int, batch_idx: int, img: torch.Tensor) -> tuple[dict, float]:
        """One step of the tokenizer (and the discriminator) -> (its logged values, its learning rate)."""
        config = self.config
        img = img.to(self.device, non_blocking=True)
        lr = lr_at(self.step, config.optim, config.steps)
        for group in self.opt_g.param_groups:
            group["lr"] = lr
        gan_on = self.use_gan and self.step >= config.loss.gan_start_step
        logs: dict = {}
        rec, tokens, f = self.generator_step(img, gan_on, logs)
        if gan_on:
            self.discriminator_step(img, rec, lr, logs)
        self.scaler.update()
        self.step += 1
        self.epoch, self.batch_in_epoch = epoch, batch_idx + 1
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch, self.batch_in_epoch = epoch + 1, 0
        self.codebook_health(tokens, f, logs)
        return logs, lr

    # ------------------------------------------------------------------ logging
    def log(self, metrics: MetricsLogger, bar, logs_sum: dict, lr: float) -> None:
        """The metrics line of the steps since the last one (their means), and the progress bar's numbers."""
        config = self.config
        n_steps = config.log_every if self.step % config.log_every == 0 else self.step % config.log_every
        record = {k: float(v) / n_steps for k, v in logs_sum.items() if k != "codes_restarted"}
        if "codes_restarted" in logs_sum:
            record["codes_restarted"] = logs_sum["codes_restarted"]
        now = time.time()
        record["images_per_s"] = self.images_since_log / max(now - self.log_clock, 1e-9)
        record["lr"] = lr
        if config.loss.reconstruction == "l2":
            record["train_psnr"] = 10 * math.log10(4.0 / max(record["rec_loss"], 1e-10))
        usage = usage_per_scale(self.vae, config.codebook.usage_threshold)
        record.update({f"usage_scale{si + 1}": u for si, u in enumerate(usage)})
        metrics.log(self.step, **record)
        self.images_since_log, self.log_clock = 0, now
        if self.main:
            postfix = {"rec": f"{record['rec_loss']:.4f}", "vq": f"{record['vq_loss']:.4f}"}
            if "train_psnr" in record:
                postfix["psnr"] = f"{record['train_psnr']:.1f}"
            bar.set_postfix({**postfix, "img/s": f"{record['images_per_s']:.0f}", "use": f"{usage[-1]:.2f}"},
                            refresh=True)

    def stop_reason(self, stop: D.StopRequested) -> str | None:
        """Why training stops after this step (the same answer on every rank), or None."""
        config = self.config
        out_of_time = config.time_limit_minutes > 0 and self.elapsed_seconds() / 60 >= config.time_limit_minutes
        out_of_time, stop_now = D.broadcast_object((out_of_time, bool(stop.signum)))
        if out_of_time:
            return "time limit reached"
        if stop_now:
            return "signal received"
        if self.step == config.stop_at_step:
            return "stop_at_step"
        return None

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        self.setup()
        config = self.config
        metrics = MetricsLogger(self.out, enabled=self.main, resumed_step=self.step)
        self.start_time, self.start_step = time.time(), self.step
        batches = _infinite_batches(self.loader, self.sampler, self.per_rank_batch, self.epoch, self.batch_in_epoch)
        bar = progress_bar(total=config.steps, initial=self.step, desc="train-tokenizer", enabled=self.main)
        self.last_eval = None  # (step, held-out metrics): the final summary reuses it when taken at the last step
        self.images_since_log, self.log_clock = 0, time.time()
        # Per-step values stay on the device (float64 sums) and are read once per log interval: reading
        # them every step would make a GPU wait for every step to finish.
        sums: dict[str, torch.Tensor | int] = {}
        last_step = min(config.steps, config.stop_at_step) if config.stop_at_step else config.steps
        with D.StopRequested() as stop:
            while self.step < last_step:
                epoch, batch_idx, (img, _labels) = next(batches)
                logs, lr = self.train_step(epoch, batch_idx, img)
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0) + (v.double() if isinstance(v, torch.Tensor) else v)
                self.images_since_log += config.global_batch
                if self.main:
                    bar.update(1)
                if self.step % config.log_every == 0 or self.step == config.steps:
                    self.log(metrics, bar, sums, lr)
                    sums = {}
                why = self.stop_reason(stop)
                # Held-out evaluation: its own cadence (not tied to log_every), and the run's last step (also when
                # stopped early), in the step's metrics line, which is written before the step's checkpoint.
                due = config.eval_every > 0 and self.step % config.eval_every == 0
                if self.main and self.eval_images is not None and (due or self.step == last_step or why):
                    self.last_eval = (self.step, evaluate_held_out(self.vae, self.eval_images))
                    metrics.log(self.step, **self.last_eval[1])
                metrics.flush()
                checkpoint_due = bool(config.checkpoint_every) and self.step % config.checkpoint_every == 0
                if checkpoint_due or self.step == config.steps or why:
                    self.save()
                if why:
                    D.print_main(f"stopping at step {self.step} of {config.steps}: {why}")
                    break
        bar.close()
        summary = self.summary(metrics)
        D.barrier()
        return summary

    def summary(self, metrics: MetricsLogger) -> dict:
        """The run's summary (with the last held-out metrics); rank 0 draws curves.png."""
        config = self.config
        summary = {"step": self.step, "minutes": self.elapsed_seconds() / 60,
                   "usage_per_scale": usage_per_scale(self.vae, config.codebook.usage_threshold),
                   "vae": self.vae, "discriminator": self.disc}
        if self.main and self.eval_images is not None:
            if self.last_eval is None or self.last_eval[0] != self.step:  # a rerun of a finished run: not logged
                self.last_eval = (self.step, evaluate_held_out(self.vae, self.eval_images))
            summary.update(self.last_eval[1])
        metrics.close()
        if self.main:
            keys = [("train_psnr", "eval_psnr"), "rec_loss", "vq_loss", "usage_scale*"]
            if _logged(self.out, "eval_colourfulness"):
                keys.append(("eval_colourfulness", "eval_real_colourfulness"))
            keys += [k for k in ("perceptual_loss", ("g_loss", "d_loss")) if _logged(self.out, k)]
            common.draw_curves(self.out, keys, log_y=["rec_loss", "vq_loss"])
        return summary


def _logged(out_dir: Path, key) -> bool:
    path = out_dir / "metrics.jsonl"
    keys = (key,) if isinstance(key, str) else tuple(key)
    return path.is_file() and any(k in r for r in read_jsonl(path)[-5:] for k in keys)
