"""`nextscale train-tokenizer`: train the multi-scale VQ-VAE tokenizer from a YAML recipe."""

from __future__ import annotations

import argparse

from nextscale.data.datasets import IMAGE_FOLDER_CONVENTION

EPILOG = """\
examples:
  nextscale train-tokenizer configs/tokenizer_fashion_mnist.yaml              # -> runs/tokenizer_fmnist/model
  nextscale train-tokenizer configs/tokenizer_own_images.yaml data.path=/your/images   # class subfolders
  nextscale train-tokenizer configs/tokenizer_fashion_mnist.yaml steps=200 loss.perceptual_weight=0.1
  nextscale train-tokenizer configs/tokenizer_imagenet_256.yaml data.path=/data/imagenet/train \\
      data.eval_path=/data/imagenet/val
  torchrun --nproc_per_node 8 -m nextscale.cli train-tokenizer configs/tokenizer_imagenet_256.yaml ...   (DDP)

Every key of the config (see --print-config) can be set as key=value; nested keys with dots
(model.vocab_size=1024, loss.gan_weight=0.1, codebook.restart_every=500). The keys match
`nextscale train`: global_batch, precision=float32|bfloat16|float16, optim.lr (absolute peak lr),
resume=auto|never|PATH, eval_every (held-out PSNR cadence, independent of log_every). Running the
same command again resumes from the newest checkpoint in out_dir; SIGTERM / Ctrl-C write a checkpoint
before exiting. out_dir/model/ always holds the latest tokenizer in the inference format; the run
folder itself is accepted wherever a tokenizer is asked for (tokenize, train, eval-tokenizer).
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train-tokenizer", help="train the multi-scale VQ-VAE tokenizer",
        description="Train a multi-scale VQ-VAE tokenizer (reconstruction, codebook/commitment, optional perceptual "
                    "and PatchGAN losses, dead-code restarts) on image folders or Fashion-MNIST, from a YAML recipe "
                    "(configs/) with key=value overrides. Runs as one process or under torchrun (DDP).",
        epilog=EPILOG + "\n" + IMAGE_FOLDER_CONVENTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=None,
                   help="a YAML recipe, e.g. configs/tokenizer_fashion_mnist.yaml (optional: defaults + overrides)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. steps=1000 out_dir=runs/tok optim.lr=1e-4")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.set_defaults(run=run)


def run(args) -> int:
    from nextscale.commands.train import split_config_and_overrides
    from nextscale.config_schema import config_to_dict
    from nextscale.training.config import load_config
    from nextscale.training.tokenizer_config import TokenizerTrainConfig
    from nextscale.training.tokenizer_trainer import train_tokenizer
    config, overrides = split_config_and_overrides(args)
    train_config = load_config(TokenizerTrainConfig, config, overrides)
    if args.print_config:
        import yaml
        print(yaml.safe_dump(config_to_dict(train_config), sort_keys=False, default_flow_style=None), end="")
        return 0
    summary = train_tokenizer(train_config)
    from nextscale.training.distributed import cleanup_distributed, is_main_process
    if is_main_process():
        usage = ", ".join(f"{u:.0%}" for u in summary["usage_per_scale"])
        psnr = f", held-out PSNR {summary['eval_psnr']:.2f} dB" if "eval_psnr" in summary else ""
        if "eval_colourfulness" in summary:
            psnr += (f", colourfulness {summary['eval_colourfulness']:.1f} (real {summary['eval_real_colourfulness']:.1f}), "
                     f"mean-colour error {summary['eval_colour_error']:.1f}/255")
        print(f"trained to step {summary['step']} in {summary['minutes']:.1f} min{psnr}; codebook usage per scale: "
              f"{usage}; tokenizer exported to {train_config.out_dir}/model")
    cleanup_distributed()
    return 0
