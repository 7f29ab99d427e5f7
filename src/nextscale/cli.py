"""The `nextscale` command line. Each subcommand lives in `nextscale.commands.<module>`, which
defines `add_parser(subparsers)`; the parser it adds sets `run=function(args) -> exit code`."""

from __future__ import annotations

import argparse
import importlib
import sys

from nextscale.commands.common import UserError, check_number, error_types

MAX_THREADS = 1024

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


def apply_threads(args) -> None:
    """The command's --threads (0: the free cores, nextscale.threads), before it loads anything. A command that
    sets `threads_per_call` (serve: a long-lived process) measures at each request instead of once."""
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    check_number("--threads", threads, 0, MAX_THREADS, integer=True)
    from nextscale import threads as thread_policy
    if threads == 0 and getattr(args, "threads_per_call", False):
        return  # (measured for each request: `nextscale.threads.free_cores_during_call`)
    thread_policy.set_threads(threads)  # printed with the command's first progress bar


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
        apply_threads(args)
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
    finally:
        from nextscale.threads import announce_threads
        announce_threads(show=False)  # a command that printed no progress bar: its choice is not shown later


if __name__ == "__main__":
    sys.exit(main())
