"""Training: the two trainers of one family, and their shared infrastructure.

- `var_trainer` (`nextscale train`): `train`, `TrainConfig`; its pieces are var_config, var_data, var_model,
  var_checks, var_state, var_loop and var_export.
- `tokenizer_trainer` (`nextscale train-tokenizer`): `train_tokenizer`; its config in tokenizer_config, codebook
  restarts in tokenizer_codebook; `tokenizer_eval` evaluates a tokenizer (`nextscale eval-tokenizer`).
- `common`: what both trainers share: precision and resume rules, the run folder (checkpoints, config.yaml,
  metrics.jsonl, curves.png, model/), one error type for a bad run (ConfigError).
- `config`: YAML configs -> dataclasses, `key=value` overrides, saved next to each checkpoint.
- `optim`: optimizers and learning-rate schedules of both trainers.
- `distributed`: torchrun / single-process setup, rank helpers, seeded samplers, DDP wrapping.
- `checkpointing`: atomic writes, keep-last-k, find latest, random-state capture and restore.
- `metrics`: JSONL (+ TensorBoard) metrics, tqdm progress bars, loss-curve PNGs.
Datasets live in `nextscale.data.datasets`. Training imports the layers below it (data, models, checkpoints,
sampling) by module, never the package front door `nextscale` nor the commands.
"""
