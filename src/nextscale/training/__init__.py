"""Training: shared infrastructure (config, distributed, checkpointing, metrics) and the trainers.

- `config`: YAML configs -> dataclasses, `key=value` overrides, saved next to each checkpoint.
- `distributed`: torchrun / single-process setup, rank helpers, seeded samplers, DDP wrapping.
- `checkpointing`: atomic writes, keep-last-k, find latest, random-state capture and restore.
- `metrics`: JSONL (+ TensorBoard) metrics, tqdm progress bars, loss-curve PNGs.
Datasets live in `nextscale.data.datasets`.
"""
