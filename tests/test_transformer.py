"""Transformer parity with the reference (tiny_d2), KV cache vs teacher forcing, masking."""

import torch

import nextscale


def test_logits_match_reference(ref_var, ref_io):
    logits = ref_var(ref_io["io.label"], ref_io["io.var_input"])
    assert logits.dtype == torch.float32 and logits.shape == (2, 30, 64)
    torch.testing.assert_close(logits, ref_io["io.logits"], atol=1e-4, rtol=0)


def test_kv_cached_forward_equals_teacher_forcing(tiny_var):
    """On the tiny random model (the reference's architecture), teacher-forcing input of a random image's tokens."""
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels, x = torch.tensor([3, 7]), tiny_var.tokenizer.teacher_forcing_input(tiny_var.tokenizer.encode_tokens(image))
    full = tiny_var(labels, x)
    incremental = tiny_var.forward_incremental(labels, x)
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=0)


def test_kv_cached_forward_equals_teacher_forcing_shared_adaln():
    torch.manual_seed(0)
    var = nextscale.VAR(depth=3, embed_dim=96, num_heads=3, num_classes=5, vocab_size=32, vae_channels=4,
                        patch_nums=(1, 2, 3), shared_adaln=True, attn_l2_norm=False).eval()
    var.init_weights(adaln_gamma=0.5)
    x = torch.randn(3, 4 + 9, 4)
    labels = torch.tensor([0, 4, 5])
    torch.testing.assert_close(var.forward_incremental(labels, x), var(labels, x), atol=1e-5, rtol=0)


def test_block_causal_mask_prevents_seeing_finer_scales(tiny_models):
    _, var = tiny_models
    torch.manual_seed(0)
    x = torch.randn(1, 29, 8)
    base = var(torch.tensor([1]), x)
    changed = x.clone()
    changed[:, 4 + 9:] += 1.0  # the inputs of the last scale (logit positions 14..29)
    out = var(torch.tensor([1]), changed)
    first_three_scales = 1 + 4 + 9
    torch.testing.assert_close(out[:, :first_three_scales], base[:, :first_three_scales])
    assert not torch.allclose(out[:, first_three_scales:], base[:, first_three_scales:])


def test_class_dropout_only_in_training_mode(tiny_models):
    _, var = tiny_models
    var.class_drop_prob = 1.0
    x = torch.randn(2, 29, 8)
    labels = torch.tensor([1, 2])
    null = torch.full((2,), var.num_classes)
    var.eval()
    assert not torch.allclose(var(labels, x), var(null, x))
    var.train()
    torch.testing.assert_close(var(labels, x), var(null, x))
    var.eval()
