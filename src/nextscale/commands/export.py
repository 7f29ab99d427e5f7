"""`nextscale export`: turn a training checkpoint into the inference format that `load_var` reads."""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a training checkpoint as a model folder (safetensors + config + tokenizer)",
        description="Write the transformer of a `nextscale train` checkpoint as a model folder: config.json, "
                    "model.safetensors and tokenizer/ (the run's tokenizer). `nextscale.load_var(OUT)` and "
                    "`nextscale sample --model OUT` read it.")
    p.add_argument("checkpoint", help="a checkpoint (runs/x/checkpoints/step_N.pt) or a run folder (its newest one)")
    p.add_argument("out", help="the model folder to write")
    p.add_argument("--tokenizer", default=None,
                   help="the tokenizer the run was trained with (default: the run folder's tokenizer/); it must be "
                        "the same one, checked by hash")
    p.set_defaults(run=run)


def run(args) -> int:
    from nextscale.training.var_trainer import export_checkpoint
    out = export_checkpoint(args.checkpoint, args.out, args.tokenizer)
    print(f"wrote {Path(out)} (load it with nextscale.load_var({str(out)!r}))")
    return 0
