"""Multi-scale residual VQ-VAE tokenizer."""

from nextscale.tokenizer.vqvae import PATCH_NUMS_256, PATCH_NUMS_512, VQVAE, VQVAEConfig

__all__ = ["VQVAE", "VQVAEConfig", "PATCH_NUMS_256", "PATCH_NUMS_512"]
