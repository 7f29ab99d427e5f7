"""Shared fixtures: the reference vectors of ../shared/reference, for the parity tests only (skipped with a reason
when absent); tiny random models (tiny_models.py) for every other test; Fashion-MNIST (skipped when not installed)."""

import json
import os
from pathlib import Path

import pytest
import torch

from tiny_models import PATCH_NUMS, TINY_TOKENIZER, TINY_TRANSFORMER, cli_args, random_vae, random_var, save_plain

REFERENCE_DIR = Path(os.environ.get("NEXTSCALE_REFERENCE_DIR",
                                    Path(__file__).resolve().parents[1] / ".." / "shared" / "reference")).resolve()


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


@pytest.fixture(scope="session")
def tiny_pth(tmp_path_factory):
    """The tiny tokenizer and transformer (random weights, seed 0) as plain state dicts, like the reference's
    tiny_d2_*.pth: {"var": path, "vae": path}. Every test of a checkpoint file that is not a parity test uses these."""
    vae = random_vae(seed=0)
    return save_plain(vae, random_var(vae, seed=0), tmp_path_factory.mktemp("tiny_pth"))


@pytest.fixture(scope="session")
def tiny_vae(tiny_pth):
    """The tiny tokenizer loaded from its .pth, as ref_vae is (shared by the session: do not change it)."""
    import nextscale
    return nextscale.load_vae(tiny_pth["vae"], patch_nums=PATCH_NUMS)


@pytest.fixture(scope="session")
def tiny_var(tiny_pth, tiny_vae):
    """The tiny transformer loaded from its .pth on tiny_vae, as ref_var is (shared by the session: do not change
    it; monkeypatch what a test must)."""
    import nextscale
    return nextscale.load_var(tiny_pth["var"], vae=tiny_vae, patch_nums=PATCH_NUMS)


@pytest.fixture(scope="session")
def tiny_args(tiny_pth):
    """`--transformer VAR.pth --tokenizer VAE.pth --patch-nums 1,2,3,4` of the tiny models."""
    return cli_args(tiny_pth)


@pytest.fixture(scope="session")
def fashion_mnist():
    """The Fashion-MNIST test split (images uint8 (10000, 32, 32), labels), read from where the package reads it
    (/usr/share/datasets/fashion-mnist or NEXTSCALE_FASHION_MNIST_DIR); the test is skipped, saying why, when the
    files are not installed (`make data` installs them). A test that needs the files only from some point on, or
    only in some of its cases, asks for it there: `request.getfixturevalue("fashion_mnist")`."""
    from nextscale.data.fashion_mnist import load_fashion_mnist
    try:
        images, labels = load_fashion_mnist("test")
    except FileNotFoundError as e:
        pytest.skip(f"Fashion-MNIST not installed: {e}")
    for a in (images, labels):
        a.setflags(write=False)  # shared by the session
    return images, labels


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Training sets torch's thread count (threads=1 in the tests' recipes); give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
