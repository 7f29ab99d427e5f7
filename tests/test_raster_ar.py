"""The raster-scan AR baseline: KV-cached generation computes exactly what teacher forcing computes."""

import torch

import nextscale
from nextscale.baseline.raster_ar import RasterAR, RasterARConfig


def tiny_raster_ar(seq_len=16):
    torch.manual_seed(0)
    ar = RasterAR(RasterARConfig(depth=2, embed_dim=64, num_heads=2, num_classes=5, vocab_size=32,
                                 seq_len=seq_len, drop_path_rate=0.0)).eval()
    ar.init_weights()
    with torch.no_grad():  # make the head and AdaLN matter, so that a wrong cache shows in the logits
        ar.head.weight.mul_(50)
        for block in ar.blocks:
            block.ada_lin[1].weight.mul_(100)
    return ar


def test_generation_logits_equal_teacher_forcing():
    ar = tiny_raster_ar()
    labels = torch.tensor([1, 4])
    step_logits = []  # head output at every generation step: (2B, 1, V), conditional rows first
    handle = ar.head.register_forward_hook(lambda module, args, out: step_logits.append(out[:2, 0].clone()))
    try:
        tokens = ar.generate(labels, torch.Generator().manual_seed(0), cfg=0.0)
    finally:
        handle.remove()
    assert tokens.shape == (2, 16) and len(step_logits) == 16
    with torch.no_grad():
        teacher = ar(labels, tokens)
    cached = torch.stack(step_logits, dim=1)
    torch.testing.assert_close(cached, teacher, atol=1e-5, rtol=1e-5)
    # The logits vary along the sequence: equality is not the trivial one of a constant output.
    assert (teacher[:, 1:] - teacher[:, :1]).abs().max() > 1e-2


def test_greedy_generation_follows_its_own_argmax_and_seed_is_deterministic():
    ar = tiny_raster_ar()
    labels = torch.tensor([0, 3, 2])
    greedy = ar.generate(labels, None, cfg=0.0, top_k=1)
    with torch.no_grad():
        assert torch.equal(ar(labels, greedy).argmax(-1), greedy)
    a = ar.generate(labels, torch.Generator().manual_seed(7), cfg=2.0, top_k=8)
    b = ar.generate(labels, torch.Generator().manual_seed(7), cfg=2.0, top_k=8)
    assert torch.equal(a, b) and a.min() >= 0 and a.max() < 32


def test_a_run_folder_stands_for_its_model_folder(tmp_path):
    """`load_raster_ar(RUN)` reads RUN/model, the rule load_var applies to transformer runs."""
    import pytest

    from nextscale.model_folder import CheckpointError
    model = tiny_raster_ar()
    model.save_pretrained(tmp_path / "run" / "model")
    loaded = nextscale.load_raster_ar(tmp_path / "run")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with pytest.raises(CheckpointError):
        nextscale.load_raster_ar(tmp_path / "elsewhere")
