"""nextscale: VAR (visual autoregressive modeling by next-scale prediction) in PyTorch."""

from nextscale.checkpoints import (CheckpointError, build_var, build_vae, load_var, load_vae, save_pretrained)
from nextscale.editing import edit, inpaint_keep_mask, keep_mask_from_image, outpaint_keep_mask
from nextscale.evaluation import load_classifier
from nextscale.pretrained import load_pretrained
from nextscale.sampling import SampleOutput, recommended_sampling, sample
from nextscale.tokenizer import VQVAE, VQVAEConfig
from nextscale.transformer import VAR, VARConfig

__version__ = "0.1.0"

__all__ = [
    "VQVAE", "VQVAEConfig", "VAR", "VARConfig", "CheckpointError", "SampleOutput",
    "load_vae", "load_var", "load_pretrained", "build_vae", "build_var", "save_pretrained",
    "sample", "edit", "inpaint_keep_mask", "outpaint_keep_mask", "keep_mask_from_image",
    "load_classifier", "recommended_sampling",
]
