"""Speed options of sampling: the exact path is untouched, the inexact ones stay close and are opt-in."""

import pytest
import torch
import torch.nn as nn

import nextscale
from nextscale.sampling import _int8_copy, quantize_int8


def agreement(a, b):
    return sum((x == y).sum().item() for x, y in zip(a, b)) / sum(x.numel() for x in a)


@pytest.mark.parametrize("precision", ["int8", "bfloat16"])
def test_inexact_precisions_stay_close_to_float32(ref_var, ref_io, ref_config, precision):
    s = ref_config["samples"]["cfg4_k0_p0"]
    kwargs = dict(seed=s["g_seed"], cfg=s["cfg"], top_k=s["top_k"], top_p=s["top_p"])
    fast = nextscale.sample(ref_var, s["label_B"], precision=precision, **kwargs)
    assert fast.images.dtype == torch.float32 and fast.images.shape == (2, 3, 64, 64)
    assert 0 <= fast.images.min() and fast.images.max() <= 1
    reference_tokens = [ref_io[f"sample.cfg4_k0_p0.tokens.{k}"] for k in range(4)]
    assert agreement(fast.tokens, reference_tokens) >= 0.8
    # The exact default is unaffected by having sampled in another precision.
    exact = nextscale.sample(ref_var, s["label_B"], **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(exact.tokens, reference_tokens))
    torch.testing.assert_close(exact.images, ref_io["sample.cfg4_k0_p0.img"], atol=1e-3, rtol=0)


@pytest.mark.parametrize("precision", ["int8", "bfloat16"])
def test_inexact_precisions_stay_close_to_float32_and_leave_it_exact(tiny_var, precision):
    """The same checks on the tiny random model (no reference vectors): against our own float32 samples."""
    kwargs = dict(seed=42, cfg=4.0, top_k=0, top_p=0.0)
    exact = nextscale.sample(tiny_var, [3, 7], **kwargs)
    fast = nextscale.sample(tiny_var, [3, 7], precision=precision, **kwargs)
    assert fast.images.dtype == torch.float32 and fast.images.shape == (2, 3, 64, 64)
    assert 0 <= fast.images.min() and fast.images.max() <= 1
    assert agreement(fast.tokens, exact.tokens) >= 0.8
    again = nextscale.sample(tiny_var, [3, 7], **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(again.tokens, exact.tokens))
    assert torch.equal(again.images, exact.images)


def test_int8_quantizes_only_the_block_linears_and_keeps_the_original(tiny_var):
    q = quantize_int8(tiny_var)
    assert q is not tiny_var and q.tokenizer is tiny_var.tokenizer
    block = q.blocks[0]
    for m in (block.attn.mat_qkv, block.attn.proj, block.ffn.fc1, block.ffn.fc2):
        assert not isinstance(m, nn.Linear) and "quantized" in type(m).__module__
    assert isinstance(block.ada_lin[1], nn.Linear) and isinstance(q.head, nn.Linear)
    assert isinstance(tiny_var.blocks[0].attn.mat_qkv, nn.Linear)
    # Teacher-forced logits of the int8 copy are close to float32 ones, not equal.
    labels = torch.tensor([3, 7])
    tokens = tiny_var.tokenizer.encode_tokens(torch.zeros(2, 3, 64, 64))
    inputs = tiny_var.tokenizer.teacher_forcing_input(tokens)
    with torch.no_grad():
        exact, approx = tiny_var(labels, inputs), q(labels, inputs)
    err = (exact - approx).abs().max().item()
    assert 0 < err < 0.05 * exact.abs().max().item()


def test_int8_copy_is_cached_until_the_weights_change(tiny_models):
    _, var = tiny_models
    first = _int8_copy(var)
    assert _int8_copy(var) is first
    with torch.no_grad():
        var.blocks[0].ffn.fc1.weight.mul_(2)
    assert _int8_copy(var) is not first


def test_unknown_precision_is_rejected(tiny_var):
    with pytest.raises(ValueError, match="precision must be one of"):
        nextscale.sample(tiny_var, [1], precision="fp8")
