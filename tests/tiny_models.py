"""Tiny models with random weights from a fixed seed, for the tests that need a model but not the reference vectors.

They have the architecture of the reference's tiny_d2 (../shared/reference: a 64x64 tokenizer of 64 codes on
scales 1,2,3,4 and a depth-2 transformer of width 128 and 10 classes), with weights of our own: the published
initialization, then every parameter moved by Gaussian noise so that nothing is degenerate (the head, the norms'
gains and the biases are not their constant initial values; the logits are far from uniform). Saved as plain
state dicts (`save_plain`, like the reference's .pth files and the released checkpoints) or as a model folder
(`save_pretrained`) where a test needs a folder. Only the parity tests read the reference vectors.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_TOKENIZER = dict(ch=32, z_channels=8, vocab_size=64, patch_nums=(1, 2, 3, 4))
TINY_TRANSFORMER = dict(depth=2, embed_dim=128, num_heads=2, num_classes=10, vocab_size=64, vae_channels=8,
                        patch_nums=(1, 2, 3, 4), drop_path_rate=0.0)
PATCH_NUMS = (1, 2, 3, 4)
RESOLUTION = 64


def perturb_(module: torch.nn.Module, seed: int, std: float) -> torch.nn.Module:
    """Adds N(0, std^2) noise, drawn from its own generator, to every floating-point parameter of `module`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def random_vae(seed: int = 0):
    """The tiny tokenizer, random weights from `seed`, in eval mode."""
    import nextscale
    torch.manual_seed(seed)
    vae = nextscale.VQVAE(nextscale.VQVAEConfig(**TINY_TOKENIZER))
    return perturb_(vae, seed + 1000, 0.05).eval()


def random_var(vae, seed: int = 0, **overrides):
    """The tiny transformer on `vae`, random weights from `seed`, in eval mode."""
    import nextscale
    torch.manual_seed(seed)
    var = nextscale.VAR(nextscale.VARConfig(**{**TINY_TRANSFORMER, **overrides}))
    var.init_weights()
    perturb_(var, seed + 2000, 0.08).eval()
    var.attach_tokenizer(vae)
    return var


def save_plain(vae, var, folder: Path) -> dict[str, Path]:
    """The two models as plain `torch.save`d state dicts, the reference's and the released files' format:
    {"var": .../tiny_var.pth, "vae": .../tiny_vae.pth}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"var": folder / "tiny_var.pth", "vae": folder / "tiny_vae.pth"}
    torch.save(var.state_dict(), paths["var"])
    torch.save(vae.state_dict(), paths["vae"])
    return paths


def cli_args(paths: dict[str, Path]) -> list[str]:
    """The command-line options that load the plain state dicts of `save_plain`."""
    return ["--transformer", str(paths["var"]), "--tokenizer", str(paths["vae"]), "--patch-nums", "1,2,3,4"]
