"""Training throughput of the Fashion-MNIST recipe: token cache vs tokenizing on the fly.

    python benchmarks/train_throughput.py [--steps 10] [--json out.json]

Both runs use the same recipe (configs/var_fashion_mnist.yaml): same transformer, batch, threads and
training step; they differ only in where the tokens come from. The cache removes only the encoder's
work, so the end-to-end gain is bounded by (encoder + step) / step FLOPs, which the table prints; the
token supply alone (cache rows vs the encoder) is timed too. The tokenizer is the recipe's trained
one when it exists, else a randomly initialized one of the same architecture (the speed does not
depend on the weights). Importable: `measure()` returns the numbers as a dict.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "var_fashion_mnist.yaml"
TOKENIZER_RECIPE = ROOT / "configs" / "tokenizer_fashion_mnist.yaml"


def recipe_tokenizer(folder: Path) -> str:
    """The recipe's tokenizer if trained, else a random one of its architecture saved in `folder`."""
    import yaml

    import nextscale
    from nextscale.training.var_trainer import config_from
    trained = ROOT / config_from(RECIPE).tokenizer
    if (trained / "config.json").is_file():
        return str(trained)
    arch = yaml.safe_load(TOKENIZER_RECIPE.read_text())["model"]
    torch.manual_seed(0)
    vae = nextscale.VQVAE(nextscale.VQVAEConfig.from_dict(arch))
    vae.save_pretrained(folder / "tokenizer")
    return str(folder / "tokenizer")


def time_steps(overrides: list[str], steps: int, warmup: int) -> float:
    """Images per second of `steps` optimizer steps after `warmup` ones (setup excluded)."""
    from nextscale.training import distributed as D
    from nextscale.training.var_trainer import _Trainer, config_from
    cfg = config_from(RECIPE, overrides)
    trainer = _Trainer(cfg, D.init_distributed("cpu"), None)
    trainer.setup()
    stats = trainer.new_stats()
    for _ in range(warmup):
        trainer.train_step(stats)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(stats)
    return cfg.global_batch * steps / (time.perf_counter() - start)


def flops_per_image(tokenizer: str, overrides: list[str]) -> tuple[float, float]:
    """(tokenizer encoding, transformer training step) GFLOP per image, counted by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    from nextscale.training.var_trainer import build_model, config_from, load_tokenizer, model_targets
    cfg = config_from(RECIPE, overrides)
    vae = load_tokenizer(tokenizer, cfg.model.patch_nums)
    model = build_model(cfg.model, vae, 10)
    B, res = 4, vae.resolution
    images = torch.rand(B, vae.config.image_channels, res, res) * 2 - 1
    with FlopCounterMode(display=False) as encode:
        tokens = torch.cat(vae.encode_tokens(images), dim=1)
    inputs, target = model_targets(model, vae, tokens)
    with FlopCounterMode(display=False) as step:
        logits = model(torch.zeros(B, dtype=torch.long), inputs)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten()).backward()
    return encode.get_total_flops() / B / 1e9, step.get_total_flops() / B / 1e9


def token_pipeline_rates(tokenizer: str, cache_dir: Path, dataset, batch: int, batches: int = 4) -> tuple[float, float]:
    """Images/s of the token supply alone: (cache rows, images -> encoder), no transformer."""
    import numpy as np

    from nextscale.training.token_cache import TokenCache
    from nextscale.training.var_trainer import load_tokenizer
    cache = TokenCache.open(cache_dir)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(batches * 10):
        cache.rows(rng.integers(0, len(cache), batch))
    cached = batch * batches * 10 / (time.perf_counter() - start)
    vae = load_tokenizer(tokenizer)
    start = time.perf_counter()
    for b in range(batches):
        images = torch.stack([dataset[i][0] for i in range(b * batch, (b + 1) * batch)])
        with torch.no_grad():
            vae.encode_tokens(images)
    encoded = batch * batches / (time.perf_counter() - start)
    return cached, encoded


def measure(steps: int = 10, warmup: int = 2, cache_images: int = 4096) -> dict:
    """{"cache_img_per_s", "on_the_fly_img_per_s", "speedup", ...} for the Fashion-MNIST recipe on CPU."""
    import numpy as np

    from nextscale.data.datasets import build_dataset
    from nextscale.training.token_cache import build_token_cache
    from nextscale.training.var_trainer import config_from, load_tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer = recipe_tokenizer(tmp)
        common = [f"tokenizer={tokenizer}", f"out_dir={tmp / 'run'}", "resume=never", "progress=false",
                  "tensorboard=false", "checkpoint_every=0", "sample.every=0", "export_at_end=false"]
        cfg = config_from(RECIPE, common)
        # A cache of the first `cache_images` training images: reading a row costs the same whatever the size.
        dataset = build_dataset(cfg.data, train=False, split="train")
        subset = torch.utils.data.Subset(dataset, np.arange(min(cache_images, len(dataset))))
        subset.classes = dataset.classes
        loader = torch.utils.data.DataLoader(subset, batch_size=256)
        start = time.perf_counter()
        build_token_cache(load_tokenizer(tokenizer), loader, len(subset), tmp / "cache", progress=False,
                          classes=list(dataset.classes))
        tokenize_img_per_s = len(subset) / (time.perf_counter() - start)
        supply_cached, supply_encoded = token_pipeline_rates(tokenizer, tmp / "cache", dataset, cfg.global_batch)
        cached = time_steps(common + [f"token_cache={tmp / 'cache'}"], steps, warmup)
        on_the_fly = time_steps(common + ["token_cache=null"], steps, warmup)
        encode_gflop, step_gflop = flops_per_image(tokenizer, common)
    return {"recipe": str(RECIPE.relative_to(ROOT)), "global_batch": cfg.global_batch,
            "encode_gflop_per_img": encode_gflop, "train_step_gflop_per_img": step_gflop,
            # Caching removes the encoder's work only: the speedup cannot exceed this if both run equally fast.
            "flop_bound_speedup": (encode_gflop + step_gflop) / step_gflop,
            "model": f"depth {cfg.model.depth}, width {cfg.model.embed_dim}", "threads": torch.get_num_threads(),
            "steps": steps, "cache_img_per_s": cached, "on_the_fly_img_per_s": on_the_fly,
            "speedup": cached / on_the_fly, "tokenize_img_per_s": tokenize_img_per_s,
            "token_supply_cache_img_per_s": supply_cached, "token_supply_encoder_img_per_s": supply_encoded,
            "token_supply_speedup": supply_cached / supply_encoded}


def print_table(result: dict) -> None:
    print(f"training throughput, {result['recipe']} ({result['model']}, batch {result['global_batch']}, "
          f"{result['threads']} threads)")
    print(f"  {'token source':<22}{'images/s':>10}")
    print(f"  {'token cache':<22}{result['cache_img_per_s']:>10.1f}")
    print(f"  {'on-the-fly encoding':<22}{result['on_the_fly_img_per_s']:>10.1f}")
    print(f"  end-to-end speedup of the cache: {result['speedup']:.2f}x   (building the cache: "
          f"{result['tokenize_img_per_s']:.0f} images/s, once)")
    print(f"  work per image: encoder {result['encode_gflop_per_img']:.3f} GFLOP, training step "
          f"{result['train_step_gflop_per_img']:.2f} GFLOP -> the cache can save at most "
          f"{result['flop_bound_speedup']:.3f}x at equal FLOP rates")
    print(f"  token supply alone (no transformer): cache {result['token_supply_cache_img_per_s']:.0f} images/s, "
          f"encoder {result['token_supply_encoder_img_per_s']:.0f} images/s "
          f"({result['token_supply_speedup']:.0f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per setting (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    result = measure(args.steps, args.warmup)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
