"""The training loop of `nextscale train`: setup, resume, one optimizer step, held-out metrics, the run.

Teacher forcing over all scales at once: the tokenizer turns an image (or a token-cache row) into its K token
maps and the transformer input (the area-downsampled cumulative f_hat), the transformer predicts every token
under the block-causal mask, and the loss is the cross-entropy averaged over all tokens. The same loop trains
the raster-scan AR baseline (`model.kind: raster_ar`).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nextscale.data.datasets import build_dataset
from nextscale.training import common
from nextscale.training import distributed as D
from nextscale.training.cca import CCAObjective, cca_record, check_cca_config
from nextscale.training.metrics import MetricsLogger, progress_bar
from nextscale.training.optim import build_adamw, build_scheduler, scaled_lr
from nextscale.training.token_cache import TokenCache, tokenizer_identity
from nextscale.training.var_checks import check_inputs
from nextscale.training.var_config import TrainConfig
from nextscale.training.var_data import DataOrder, TokenSource, held_out_batches
from nextscale.training.var_export import export_checkpoint
from nextscale.training.var_model import (build_model, forward_and_stats, generate_images, load_tokenizer,
                                          model_targets, segment_sizes)
from nextscale.training.var_state import (check_checkpoint_fits, checkpoint_state, full_state_dicts,
                                          load_full_state_dicts, restore_random_states)


class LossNotFinite(ValueError):
    """Training diverged (reported as a one-line error by the command line)."""


@dataclass
class StepStats:
    """Per-scale sums of loss, correct predictions and token counts since the last log line."""

    loss_sum_S: torch.Tensor
    correct_S: torch.Tensor
    count_S: torch.Tensor
    extra: dict = field(default_factory=dict)  # other sums to log (CCA's terms), by name


class _Trainer:
    def __init__(self, config: TrainConfig, info: D.DistInfo, on_step):
        self.config, self.info, self.on_step = config, info, on_step
        self.out = Path(config.out_dir)
        self.device = info.device
        self.world = info.world_size
        self.main = info.is_main
        self.objective = None  # the loss when it is not plain cross-entropy (cca.enabled: training/cca.py)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        config = self.config
        common.set_threads(config.threads)
        self.vae = load_tokenizer(config.tokenizer, config.model.patch_nums).to(self.device)
        labels = self._open_data()
        self.num_classes = config.model.num_classes or self.data_classes
        self.num_items = len(labels)
        check_inputs(config, self.vae, labels, self.num_items, self.num_classes, self.world, self.cache)
        self.micro = config.micro_batch or config.global_batch // self.world
        self.accum = config.global_batch // self.world // self.micro
        self.order = DataOrder(self.num_items, config.global_batch, config.seed)
        self.total_steps = config.steps if config.steps is not None else \
            max(1, round(config.epochs * self.order.steps_per_epoch))
        common.check_precision(config.precision, self.device)
        self._build_model()
        self.ckpts = common.open_checkpoints(self.out, config.keep_checkpoints, self.main)
        self.tokenizer_id = tokenizer_identity(self.vae)
        self.step = 0
        self._maybe_resume()
        common.drop_retrained_records(self.out, self.step, self.main)
        if self.step == 0:  # every rank its own random stream (class dropout, drop path)
            torch.manual_seed(config.seed * 1000 + 1 + self.info.rank)
        self.source = TokenSource(config, self.vae, self.order, self.dataset, self.cache, self.device, self.step,
                                  self.info.rank, self.world, self.accum)
        self.eval_batches = held_out_batches(config, self.vae, self.cache, self.info.rank, self.world, self.micro,
                                             self.num_classes, self.device)
        if self.main:
            common.write_run_config(self.out, config)
            if not (self.out / "tokenizer").is_dir():
                self.vae.save_pretrained(self.out / "tokenizer")
        D.barrier()

    def _open_data(self) -> np.ndarray:
        """Open the token cache or the dataset; sets data_classes and class_names; returns every item's label."""
        config = self.config
        self.cache, self.dataset = None, None
        if config.token_cache:
            self.cache = TokenCache.open(config.token_cache)
            labels = np.asarray(self.cache.labels)
            self.data_classes = self.cache.header.get("num_classes") or int(labels.max()) + 1
            self.class_names = self.cache.header.get("classes")
        else:
            self.dataset = build_dataset(config.data, train=True)
            labels = np.asarray(self.dataset.labels)
            self.data_classes = self.dataset.num_classes
            self.class_names = list(self.dataset.classes)
        return labels

    def _build_model(self) -> None:
        """The model (the same initial weights on every rank), its wrapping, optimizer, schedule and precision."""
        config, optim = self.config, self.config.optim
        warmup = optim.warmup_steps if optim.warmup_steps is not None else \
            round(optim.warmup_epochs * self.order.steps_per_epoch)
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.model = build_model(config.model, self.vae, self.num_classes).to(self.device)
        self.raw_model = self.model
        self.train_model = self._wrap(self.model)
        peak_lr = optim.lr if optim.lr is not None else scaled_lr(optim.base_lr, config.global_batch)
        self.optimizer = build_adamw(self.model, peak_lr, optim.weight_decay, optim.betas, optim.eps)
        self.scheduler = build_scheduler(self.optimizer, warmup, self.total_steps, optim.warmup_start,
                                         optim.final_lr_ratio)
        self.scaler = common.grad_scaler(config.precision, self.device)
        self.autocast = common.autocast(config.precision, self.device)
        self.segments = segment_sizes(self.model, self.vae)
        if config.cca.enabled:
            self.objective = self._cca_objective()

    def _cca_objective(self) -> CCAObjective:
        """CCA's objective: its reference is model.init_from again, frozen (built under a forked random state, so
        that turning CCA on does not move the run's random numbers). The model's class dropout is off: CCA draws
        its own null-class rows (cca.null_fraction)."""
        config = self.config
        check_cca_config(config)
        with torch.random.fork_rng(devices=[]):
            reference = build_model(config.model, self.vae, self.num_classes).to(self.device)
        self.model.class_drop_prob = 0.0
        return CCAObjective(config.cca, reference, self.num_classes, config.model.depth)

    def _wrap(self, model):
        config = self.config
        if config.parallel == "fsdp" and D.is_distributed():
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
            mp = MixedPrecisionPolicy(param_dtype=getattr(torch, config.precision)) \
                if config.precision != "float32" else MixedPrecisionPolicy()
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
        if config.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    # ------------------------------------------------------------------ checkpoints
    def _maybe_resume(self) -> None:
        found = common.find_resume_checkpoint(self.ckpts, self.config.resume, self.main)
        if found is None:
            return
        path, state = found
        check_checkpoint_fits(state, path, self.config, self.model, self.tokenizer_id, self.num_items, self.out)
        load_full_state_dicts(self.model, self.optimizer, state["model"], state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        restore_random_states(state["rng"], self.info.rank, self.world, self.config.seed, self.step)
        D.print_main(f"resumed from {path} at step {self.step}")

    def save_checkpoint(self) -> Path | None:
        model_sd, optim_sd = full_state_dicts(self.model, self.optimizer)
        rng = D.gather_rng_states()
        path = None
        if self.main:
            state = checkpoint_state(self.config, self.model, model_sd, optim_sd, self.scheduler, self.scaler,
                                     self.step, rng, self.world, self.num_items, self.tokenizer_id, self.class_names)
            path = self.ckpts.save(self.step, state, config=self.config)
        D.barrier()
        return path

    # ------------------------------------------------------------------ one optimizer step
    def new_stats(self) -> StepStats:
        S = len(self.segments)
        return StepStats(*(torch.zeros(S, device=self.device) for _ in range(3)))

    def _add_counts(self, stats: StepStats, batch_size: int) -> None:
        stats.count_S += torch.tensor([float(s * batch_size) for s in self.segments], device=self.device)

    def train_step(self, stats: StepStats) -> float:
        """One optimizer step; adds its loss and accuracy sums to `stats`; returns the gradient norm."""
        model, optim = self.train_model, self.config.optim
        model.train()
        batches = self.source.next_step()
        for i, (tokens_BL, labels_B) in enumerate(batches):
            inputs, target_BL = model_targets(self.raw_model, self.vae, tokens_BL)
            last = i == len(batches) - 1
            with self._no_sync(not last), self.autocast:
                if self.objective is not None:
                    loss, loss_S, correct_S, extra = self.objective(model, labels_B, inputs, target_BL, self.segments)
                else:
                    loss, loss_S, correct_S = forward_and_stats(model, labels_B, inputs, target_BL, self.segments,
                                                                optim.label_smoothing)
                    extra = {}
            self.scaler.scale(loss / len(batches)).backward()
            stats.loss_sum_S += loss_S
            stats.correct_S += correct_S
            for name, value in extra.items():
                stats.extra[name] = stats.extra.get(name, 0) + value.detach()
            self._add_counts(stats, tokens_BL.shape[0])
        self.scaler.unscale_(self.optimizer)
        if optim.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), optim.grad_clip)
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
        final = self.config.optim.final_weight_decay
        if final is None:
            return
        start = self.config.optim.weight_decay
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

    # ------------------------------------------------------------------ metrics
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
        if stats.extra:  # (every rank has the same names)
            names = sorted(stats.extra)
            extra = D.all_reduce_sum(torch.stack([stats.extra[n].float() for n in names])).tolist()
            rec.update(cca_record(dict(zip(names, extra)), float(summed[2][0]) / self.segments[0]))
        return rec

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
                                                             self.config.optim.label_smoothing)
                stats.loss_sum_S += loss_S
                stats.correct_S += correct_S
                self._add_counts(stats, len(labels_B))
        finally:
            model.train()
        summed = D.all_reduce_sum(torch.stack([stats.loss_sum_S, stats.correct_S, stats.count_S]))
        total = summed.sum(dim=1)
        rec = {"eval_loss": float(total[0] / total[2]), "eval_acc": float(total[1] / total[2])}
        if len(self.segments) > 1:
            rec.update({f"eval_acc_s{s}": float(a) for s, a in enumerate((summed[1] / summed[2]).tolist())})
            rec.update({f"eval_loss_s{s}": float(v) for s, v in enumerate((summed[0] / summed[2]).tolist())})
        return rec

    def write_samples(self) -> Path | None:
        if not self.main or self.config.parallel == "fsdp" and D.is_distributed():
            return None  # a sharded model cannot sample on one rank; export and sample instead
        sample_config = self.config.sample
        classes = list(sample_config.classes) if sample_config.classes else \
            sorted({round(i * (self.num_classes - 1) / max(min(self.num_classes, 10) - 1, 1))
                    for i in range(min(self.num_classes, 10))})
        labels = [c for c in classes for _ in range(sample_config.per_class)]
        model = self.raw_model
        was_training = model.training
        model.eval()
        try:
            with self.autocast:
                images = generate_images(model, labels, sample_config.seed, sample_config.cfg, sample_config.top_k,
                                         sample_config.top_p)
        finally:
            model.train(was_training)
        path = self.out / "samples" / f"step_{self.step:08d}.png"
        names = self.class_names or []
        row_labels = [names[c] if c < len(names) and names[c] else f"class {c}" for c in classes]
        from nextscale.images import save_labeled_grid
        save_labeled_grid(images.float().cpu(), path, ncols=sample_config.per_class, row_labels=row_labels)
        return path

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        self.setup()
        config = self.config
        metrics = MetricsLogger(self.out, enabled=self.main, tensorboard=config.tensorboard, resumed_step=self.step)
        start_step = self.step
        with D.StopRequested() as stop:
            stopped_by, last_record, last_eval = self._loop(metrics, stop)
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
            self._finish(path, summary)
        D.barrier()
        return summary

    def _loop(self, metrics: MetricsLogger, stop: D.StopRequested) -> tuple[int, dict, dict]:
        """Optimizer steps up to total_steps or a stop signal -> (the signal or 0, the last record, the last
        held-out record). Each step's values (training, held-out) make one metrics line, written before the
        step's checkpoint; the last step is always evaluated (a rerun of a finished run trains and logs nothing)."""
        config = self.config
        bar = progress_bar(total=self.total_steps, initial=self.step, desc="train", unit="step",
                           enabled=self.main and config.progress)
        stopped_by = 0
        window_start, window_steps = time.perf_counter(), 0
        stats = self.new_stats()  # summed over the steps since the last log line
        last_record: dict = {}
        last_eval: dict = {}
        while self.step < self.total_steps:
            grad_norm = self.train_step(stats)
            window_steps += 1
            if self.step % config.log_every == 0 or self.step == self.total_steps:
                elapsed = time.perf_counter() - window_start
                images_per_s = config.global_batch * window_steps / max(elapsed, 1e-9)
                last_record = self._log(metrics, bar, stats, grad_norm, images_per_s)
                window_start, window_steps = time.perf_counter(), 0
                stats = self.new_stats()
            bar.update(1)
            if self.eval_batches is not None and (self.step % config.eval_every == 0
                                                  or self.step == self.total_steps):
                last_eval = self.evaluate()
                metrics.log(self.step, **last_eval)
            metrics.flush()
            if config.checkpoint_every and self.step % config.checkpoint_every == 0 and self.step < self.total_steps:
                self.save_checkpoint()
            if config.sample.every and self.step % config.sample.every == 0:
                self.write_samples()
            if self.on_step is not None:
                self.on_step(self.step, last_record)
            stopped_by = stop.agreed(self.device)
            if stopped_by:
                break
        bar.close()
        return stopped_by, last_record, last_eval

    def _log(self, metrics: MetricsLogger, bar, stats: StepStats, grad_norm: float, images_per_s: float) -> dict:
        rec = self.record(stats, grad_norm, images_per_s)
        if not math.isfinite(rec["loss"]):
            raise LossNotFinite(f"the loss became {rec['loss']} at step {self.step}; lower the "
                                f"learning rate or use float32 (no checkpoint written)")
        metrics.log(self.step, **rec)
        bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['acc']:.3f}", lr=f"{rec['lr']:.2e}",
                        img_s=f"{rec['img_per_s']:.0f}")
        return rec

    def _finish(self, path: Path, summary: dict) -> None:
        """Rank 0 at the end: curves.png, the last sample grid, and model/ (the inference format)."""
        curves = common.draw_curves(self.out, keys=[("loss", "eval_loss"), ("acc", "eval_acc"), "acc_s*", "lr"])
        if curves is not None:
            summary["curves"] = str(curves)
        if not (self.config.parallel == "fsdp" and D.is_distributed()):
            summary["samples"] = str(self.write_samples())
        if self.config.export_at_end:
            summary["model"] = str(export_checkpoint(path, self.out / common.MODEL_SUBDIR))
