"""`nextscale export`: turn a training checkpoint into the inference format that `load_var` reads."""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a training checkpoint as a model folder (safetensors + config + tokenizer)",
        description="Write the transformer of a `nextscale train` checkpoint as a model folder: config.json, "
                    "model.safetensors and tokenizer/ (the run's tokenizer). `nextscale.load_var(OUT)` and "
                    "`nextscale sample --model OUT` read it.")
    p.add_argument("checkpoint", help="a checkpoint (runs/x/checkpoints/step_N.pt) or a run folder (its newest "
                                      "checkpoint that loads: damaged newer ones are skipped with a warning, as "
                                      "resume skips them)")
    p.add_argument("out", help="the model folder to write")
    p.add_argument("--tokenizer", default=None,
                   help="the tokenizer the run was trained with (default: the run folder's tokenizer/); it must be "
                        "the same one, checked by hash")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the model an existing OUT holds (a folder with other files is never replaced)")
    p.set_defaults(run=run)


def run(args) -> int:
    from nextscale.model_folder import CONFIG_NAME, TOKENIZER_SUBDIR, WEIGHTS_NAME
    from nextscale.checkpoints import save_pretrained
    from nextscale.commands.common import Outputs
    from nextscale.training.var_trainer import checkpoint_to_model

    out = Path(args.out)
    where = f"OUT {args.out}"
    outputs = Outputs(overwrite=args.overwrite, overwrite_hint=" or pass --overwrite to replace the model it holds")
    # OUT is written whole and swapped in; an existing OUT may only be a model folder (not a run folder, say).
    outputs.folder(out, option=where, own=lambda name: name in (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_SUBDIR))
    outputs.check()  # before the checkpoint is read
    with outputs.writing():
        model = checkpoint_to_model(args.checkpoint, args.tokenizer)
        tokenizer = getattr(model, "tokenizer", None)
        tensors = [*model.state_dict().values(), *(tokenizer.state_dict().values() if tokenizer else [])]
        outputs.require_space(out.parent, sum(t.numel() * t.element_size() for t in tensors) + 65536, where)
        tmp = outputs.temp_folder(out)
        save_pretrained(model, tmp)
        outputs.replace_folder(tmp, out)
    steps = model.extra_config.get("trained_steps")
    print(f"wrote {out} from the checkpoint of step {steps} (load it with nextscale.load_var({str(out)!r}))")
    return 0
