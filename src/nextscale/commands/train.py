"""`nextscale train`: train a VAR transformer (or the raster-scan AR baseline) from a YAML recipe."""

from __future__ import annotations

import argparse
import sys

from nextscale.data.datasets import IMAGE_FOLDER_CONVENTION


EPILOG = """\
examples:
  nextscale train configs/var_fashion_mnist.yaml
  nextscale train configs/var_fashion_mnist.yaml steps=200 out_dir=runs/try optim.lr=3e-4
  nextscale train configs/var_own_images.yaml data.path=/your/images     # class subfolders
  nextscale train configs/var_d16.yaml tokenizer=vae_ch160v4096z32.pth data.path=/data/imagenet/train
  torchrun --nproc_per_node 8 -m nextscale.cli train configs/var_d16.yaml ...      (DDP, one node)
  torchrun --nnodes 4 --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
           --nproc_per_node 8 -m nextscale.cli train configs/var_d30.yaml ...      (multi-node)

Every key of the config (see --print-config) can be set as key=value; nested keys with dots. An
override that would not take effect is refused with the reason (optim.base_lr while optim.lr is set,
epochs while steps is set, optim.warmup_epochs while optim.warmup_steps is set). tokenizer= may be a
train-tokenizer run folder. Running the same command again resumes from the newest checkpoint in
out_dir (resume=auto; never; or a checkpoint path); SIGTERM / Ctrl-C write a checkpoint before exiting.
Held-out loss and token accuracy are logged every eval_every steps and plotted in curves.png.
"""


def config_keys_help() -> str:
    """Every config key with its default, from the config dataclasses (documented in training/var_config.py)."""
    import dataclasses
    import textwrap

    from nextscale.training.var_config import TrainConfig

    def walk(section, prefix=""):
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if dataclasses.is_dataclass(value):
                yield from walk(value, prefix + f.name + ".")
            else:
                yield f"{prefix}{f.name}={value}"

    body = textwrap.fill("  ".join(walk(TrainConfig())), width=100, initial_indent="  ", subsequent_indent="  ",
                         break_on_hyphens=False)
    return "config keys and their defaults (see src/nextscale/training/var_config.py for what each means):\n" + body


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a VAR transformer (next-scale prediction)",
        description="Train a class-conditional VAR transformer on image folders or Fashion-MNIST, from a YAML recipe "
                    "(configs/) with key=value overrides. Runs as one process or under torchrun (DDP or FSDP).",
        epilog=EPILOG + "\n" + IMAGE_FOLDER_CONVENTION + "\n\n" + config_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=None,
                   help="a YAML recipe, e.g. configs/var_fashion_mnist.yaml (optional: defaults + overrides)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. steps=1000 model.depth=8 token_cache=cache/fmnist")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.set_defaults(run=run)


def split_config_and_overrides(args) -> tuple[str | None, list[str]]:
    """The first positional is the config file unless it is a key=value override."""
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides
    return config, overrides


def run(args) -> int:
    from nextscale.config_schema import config_to_dict
    from nextscale.training.var_trainer import config_from, train
    config, overrides = split_config_and_overrides(args)
    train_config = config_from(config, overrides) if config else config_from({}, overrides)
    if args.print_config:
        import yaml
        print(yaml.safe_dump(config_to_dict(train_config), sort_keys=False, default_flow_style=None), end="")
        return 0
    summary = train(train_config)
    if summary.get("stopped_by_signal"):
        return 128 + summary["stopped_by_signal"]
    if summary["rank"] == 0:
        print(f"trained {summary['step']} steps: loss {summary.get('loss', float('nan')):.4f}, "
              f"token accuracy {summary.get('acc', float('nan')):.4f}"
              + (f"; held-out loss {summary['eval_loss']:.4f}, token accuracy {summary['eval_acc']:.4f}"
                 if "eval_loss" in summary else ""), file=sys.stderr)
        for key in ("checkpoint", "model", "samples", "curves"):
            if summary.get(key):
                print(f"  {key}: {summary[key]}", file=sys.stderr)
    return 0
