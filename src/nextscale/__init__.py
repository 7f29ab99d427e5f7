"""nextscale: VAR (visual autoregressive modeling by next-scale prediction) in PyTorch.

The names below are the public API. They are imported on first use (PEP 562), so that `import nextscale.images`
or a trainer does not load the sampler, the editor and the evaluation with them; `from nextscale import sample`
works as usual.
"""

from __future__ import annotations

import importlib
import os
import sys
import typing

__version__ = "0.1.0"

# OpenMP threads that wait for work spin first (libgomp: 300,000 turns) before they sleep. When another program
# takes one of their cores after nextscale chose its threads (`nextscale.threads`), the spinning threads starve it
# and each other: var-d16 sampling with one busy core, 2 threads, ran 20.5 s with the default spin, 15.8 s with
# 10,000 (one thread alone: 15.2 s), and idle 8.6 s either way (AMD EPYC, 2 cores). libgomp reads it once, when torch
# loads; a value the user set, or a torch loaded before nextscale, is left as it is.
if "torch" not in sys.modules and "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

_EXPORTS = {
    "VQVAE": "nextscale.tokenizer.vqvae", "VQVAEConfig": "nextscale.tokenizer.vqvae",
    "VAR": "nextscale.transformer.var", "VARConfig": "nextscale.transformer.var",
    "CheckpointError": "nextscale.model_folder", "save_pretrained": "nextscale.model_folder",
    "load_vae": "nextscale.checkpoints", "load_var": "nextscale.checkpoints",
    "load_raster_ar": "nextscale.checkpoints", "load_pretrained": "nextscale.checkpoints",
    "build_vae": "nextscale.checkpoints", "build_var": "nextscale.checkpoints",
    "sample": "nextscale.sampling", "SampleOutput": "nextscale.sampling",
    "recommended_sampling": "nextscale.inference_options",
    "edit": "nextscale.editing", "inpaint_keep_mask": "nextscale.editing",
    "outpaint_keep_mask": "nextscale.editing", "keep_mask_from_image": "nextscale.editing",
    "load_classifier": "nextscale.evaluation.classifier",
}
__all__ = list(_EXPORTS)

if typing.TYPE_CHECKING:  # what static tools and IDEs see
    from nextscale.checkpoints import (build_vae, build_var, load_pretrained, load_raster_ar, load_vae,
                                       load_var)
    from nextscale.editing import edit, inpaint_keep_mask, keep_mask_from_image, outpaint_keep_mask
    from nextscale.evaluation.classifier import load_classifier
    from nextscale.inference_options import recommended_sampling
    from nextscale.model_folder import CheckpointError, save_pretrained
    from nextscale.sampling import SampleOutput, sample
    from nextscale.tokenizer.vqvae import VQVAE, VQVAEConfig
    from nextscale.transformer.var import VAR, VARConfig


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nextscale' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
