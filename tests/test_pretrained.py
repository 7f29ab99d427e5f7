"""The Fashion-MNIST model shipped with the package: loads offline, samples what it is asked for."""

import pytest
import torch

import nextscale
from nextscale.model_folder import CheckpointError


@pytest.fixture(scope="module")
def shipped():
    return nextscale.load_pretrained("fashion-mnist")


def test_shipped_model_loads_offline_with_its_tokenizer(shipped):
    assert shipped.num_classes == 10 and shipped.tokenizer is not None
    assert shipped.tokenizer.resolution == 32
    assert shipped.extra_config["class_names"][0] == "T-shirt/top"
    assert {"cfg", "top_k", "top_p"} <= set(shipped.extra_config["sampling"])


def test_short_sampling_run_from_the_shipped_weights(shipped):
    out = nextscale.sample(shipped, [1, 8], seed=0, **shipped.extra_config["sampling"])
    assert out.images.shape == (2, 3, 32, 32)
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0
    # Fashion-MNIST: grayscale on a black background, so the corners are dark and the channels agree.
    assert out.images[..., :3, :3].mean() < 0.2
    assert (out.images[:, 0] - out.images[:, 2]).abs().max() < 0.15
    again = nextscale.sample(shipped, [1, 8], seed=0, **shipped.extra_config["sampling"])
    assert torch.equal(out.images, again.images)


def test_unknown_pretrained_name_is_a_clear_error():
    with pytest.raises(CheckpointError, match="unknown pretrained model 'imagenet'"):
        nextscale.load_pretrained("imagenet")
