"""Tokenizer parity with the reference implementation (tiny_d2) and its own invariants."""

import torch

import nextscale


def test_encoder_latent_matches_reference(ref_vae, ref_io):
    f = ref_vae.encode_latent(ref_io["io.img"])
    torch.testing.assert_close(f, ref_io["io.f"], atol=1e-4, rtol=0)


def test_tokens_and_fhat_match_reference(ref_vae, ref_io):
    tokens = ref_vae.encode_tokens(ref_io["io.img"])
    f_hats = ref_vae.encode_fhats(ref_io["io.img"])
    assert len(tokens) == len(f_hats) == 4
    for k in range(4):
        assert tokens[k].dtype == torch.long
        assert torch.equal(tokens[k], ref_io[f"io.idx.{k}"]), f"token indices differ at scale {k}"
        torch.testing.assert_close(f_hats[k], ref_io[f"io.fhat.{k}"], atol=1e-4, rtol=0)


def test_reconstruction_matches_reference(ref_vae, ref_io):
    recon = ref_vae.decode_fhat(ref_vae.encode_fhats(ref_io["io.img"])[-1])
    torch.testing.assert_close(recon, ref_io["io.recon"], atol=1e-3, rtol=0)
    from_idx = ref_vae.decode_tokens([ref_io[f"io.idx.{k}"] for k in range(4)])
    torch.testing.assert_close(from_idx, ref_io["io.dec_from_idx"], atol=1e-3, rtol=0)


def test_teacher_forcing_input_matches_reference(ref_vae, ref_io):
    x = ref_vae.teacher_forcing_input([ref_io[f"io.idx.{k}"] for k in range(4)])
    assert x.shape == (2, 29, 8)
    torch.testing.assert_close(x, ref_io["io.var_input"], atol=1e-4, rtol=0)


def test_phi_schedule_of_published_ten_scales():
    vae = nextscale.VQVAE(ch=32, ch_mult=(1, 2), z_channels=8, vocab_size=16)
    assert [vae.quantize.quant_resi.index_for(k, 10) for k in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


def test_cosine_lookup_picks_the_most_similar_code():
    q = nextscale.VQVAE(ch=32, ch_mult=(1, 2), z_channels=4, vocab_size=3, lookup="cosine").quantize
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 1.0, 0]]))
    z = torch.tensor([[0.1, 0.2, 0, 0], [0, 0, 5.0, 0.1]])
    assert q.nearest_codes(z).tolist() == [1, 2]


def test_wrong_image_size_is_a_clear_error(tiny_vae):
    import pytest
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 64, 64\)"):
        tiny_vae.encode_tokens(torch.zeros(1, 3, 32, 32))
