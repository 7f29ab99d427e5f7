"""Training the VAR transformer (spec §5), from one CPU to many GPUs.

    from nextscale.training.var_trainer import TrainConfig, train
    config = load_config(TrainConfig, "configs/var_fashion_mnist.yaml", ["steps=100"])
    summary = train(config)

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

The pieces, one concern each: var_config (TrainConfig and its sections), var_data (data order, token source,
held-out batches), var_model (tokenizer, transformer, loss, samples), var_checks (input checks), var_state
(checkpoint contents and resume checks), var_loop (the trainer), var_export (checkpoint -> model folder); what
they share with the tokenizer trainer is in `common`. This module is the front of them: `train` and the names
commands, tests and benchmarks import from here.
"""

from __future__ import annotations

from typing import Callable

from nextscale.config_schema import check_ranges
from nextscale.training import distributed as D
from nextscale.training.var_checks import check_inputs
from nextscale.training.var_config import ModelConfig, OptimConfig, SampleConfig, TrainConfig, config_from
from nextscale.training.var_data import DataOrder, SeededItems, TokenSource, held_out_batches
from nextscale.training.var_export import checkpoint_to_model, export_checkpoint, read_run_checkpoint
from nextscale.training.var_loop import LossNotFinite, StepStats, _Trainer
from nextscale.training.var_model import (build_model, forward_and_stats, generate_images, load_tokenizer,
                                          model_targets, segment_sizes)

__all__ = ["train", "config_from", "TrainConfig", "ModelConfig", "OptimConfig", "SampleConfig", "DataOrder",
           "SeededItems", "TokenSource", "held_out_batches", "check_inputs", "load_tokenizer", "build_model",
           "model_targets", "segment_sizes", "forward_and_stats", "generate_images", "StepStats", "LossNotFinite",
           "read_run_checkpoint", "checkpoint_to_model", "export_checkpoint"]


def train(config, overrides=(), on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Train a transformer as `config` (a TrainConfig, dict or YAML path) says. Returns a summary dict.

    `on_step(step, record)` is called on every rank after every optimizer step (tests, custom hooks).
    """
    train_config = config_from(config, overrides)
    check_ranges(train_config)  # every value in its range before any work (RANGES of the config classes)
    info = D.init_distributed(train_config.device)
    try:
        return _Trainer(train_config, info, on_step).run()
    finally:
        D.cleanup_distributed()
