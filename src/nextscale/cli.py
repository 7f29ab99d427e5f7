"""The `nextscale` command line. Each subcommand lives in `nextscale.commands.<module>`, which
defines `add_parser(subparsers)`; the parser it adds sets `run=function(args) -> exit code`."""

from __future__ import annotations

import argparse
import importlib
import sys

from nextscale.commands.common import UserError, error_types

# Subcommand name -> module. Order is the order of `nextscale --help`.
COMMANDS = {
    "sample": "nextscale.commands.sample",
    "edit": "nextscale.commands.edit",
    "tokenize": "nextscale.commands.tokenize",
    "train": "nextscale.commands.train",
    "export": "nextscale.commands.export",
    "train-tokenizer": "nextscale.commands.train_tokenizer",
    "eval-tokenizer": "nextscale.commands.eval_tokenizer",
    "eval": "nextscale.commands.eval",
    "train-classifier": "nextscale.commands.train_classifier",
    "serve": "nextscale.commands.serve",
}


def out_of_memory_types() -> tuple[type[BaseException], ...]:
    import torch
    return (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nextscale",
        description="VAR: image generation by next-scale prediction. Run `nextscale COMMAND --help` for details.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `nextscale tokenize CFG --out X data.path=Y`: key=value overrides after an option land here, not in the
    # positional list argparse closed at the option; they are overrides all the same.
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    if overrides and isinstance(getattr(args, "overrides", None), list):
        args.overrides += overrides
        extra = [a for a in extra if a not in overrides]
    if extra:
        parser.parse_args(argv)  # the standard "unrecognized arguments" message and exit code 2
    try:
        return int(args.run(args) or 0)
    except UserError as e:
        print(f"nextscale {args.command}: error: {e}", file=sys.stderr)
        return 2
    except out_of_memory_types():
        # The one failure left that depends on the machine, not on the input being wrong: say what to lower.
        print(f"nextscale {args.command}: error: out of memory: ask for less at once (a smaller --batch-size, fewer "
              f"images) or free memory", file=sys.stderr)
        return 2
    except error_types() as e:
        print(f"nextscale {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nextscale {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
