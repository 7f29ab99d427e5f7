"""Shared fixtures: the reference vectors of ../shared/reference (skipped with a reason when absent)."""

import json
import os
from pathlib import Path

import pytest
import torch

REFERENCE_DIR = Path(os.environ.get("NEXTSCALE_REFERENCE_DIR",
                                    Path(__file__).resolve().parents[1] / ".." / "shared" / "reference")).resolve()
TINY_TOKENIZER = dict(ch=32, z_channels=8, vocab_size=64, patch_nums=(1, 2, 3, 4))
TINY_TRANSFORMER = dict(depth=2, embed_dim=128, num_heads=2, num_classes=10, vocab_size=64, vae_channels=8,
                        patch_nums=(1, 2, 3, 4), drop_path_rate=0.0)


def _reference_file(name: str) -> Path:
    path = REFERENCE_DIR / name
    if not path.exists():
        pytest.skip(f"reference vectors not found at {REFERENCE_DIR} (set NEXTSCALE_REFERENCE_DIR to the folder "
                    f"holding {name}); parity tests skipped")
    return path


@pytest.fixture(scope="session")
def reference_file():
    return _reference_file


@pytest.fixture(scope="session")
def ref_io(reference_file):
    from safetensors.torch import load_file
    return load_file(str(reference_file("tiny_d2_io.safetensors")))


@pytest.fixture(scope="session")
def ref_config(reference_file):
    return json.loads(reference_file("tiny_d2.json").read_text())


@pytest.fixture(scope="session")
def ref_vae(reference_file):
    import nextscale
    return nextscale.load_vae(reference_file("tiny_d2_vae.pth"), patch_nums=(1, 2, 3, 4))


@pytest.fixture(scope="session")
def ref_var(reference_file, ref_vae):
    import nextscale
    return nextscale.load_var(reference_file("tiny_d2_var.pth"), vae=ref_vae, patch_nums=(1, 2, 3, 4))


@pytest.fixture
def tiny_models():
    """A randomly initialized tiny tokenizer + transformer (no reference files needed)."""
    import nextscale
    torch.manual_seed(0)
    vae = nextscale.VQVAE(nextscale.VQVAEConfig(**TINY_TOKENIZER)).eval()
    var = nextscale.VAR(nextscale.VARConfig(**TINY_TRANSFORMER)).eval()
    var.init_weights()
    var.attach_tokenizer(vae)
    return vae, var


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Training sets torch's thread count (threads=1 in the tests' recipes); give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
