"""Sampling and editing reproduce the reference sampler token for token (tiny_d2, the parity tests); the sampler's
own rules (batching, seeds, labels, refusals) on the tiny random model."""

import json

import numpy as np
import pytest
import torch

import nextscale
from nextscale.editing import inpaint_keep_mask, outpaint_keep_mask, per_scale_keep
from nextscale.sampling import filter_logits


@pytest.mark.parametrize("name", ["cfg1.5_k20_p0.9", "cfg4_k0_p0", "cfg2_k30_p0.95_smooth"])
def test_sample_reproduces_reference(name, ref_var, ref_io, ref_config):
    s = ref_config["samples"][name]
    out = nextscale.sample(ref_var, s["label_B"], seed=s["g_seed"], cfg=s["cfg"], top_k=s["top_k"],
                           top_p=s["top_p"], more_smooth=s["more_smooth"])
    for k in range(4):
        assert torch.equal(out.tokens[k], ref_io[f"sample.{name}.tokens.{k}"]), f"tokens differ at scale {k}"
    torch.testing.assert_close(out.images, ref_io[f"sample.{name}.img"], atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def ref_edit(reference_file):
    from safetensors.torch import load_file
    return (load_file(str(reference_file("tiny_d2_edit.safetensors"))),
            json.loads(reference_file("tiny_d2_edit.json").read_text()))


@pytest.mark.parametrize("name", ["inpaint_center", "outpaint_keep_center", "class_edit_box_label5"])
def test_edit_reproduces_reference(name, ref_var, ref_io, ref_edit):
    tensors, cases = ref_edit
    c = cases[name]
    make_mask = inpaint_keep_mask if c["inpainting"] else outpaint_keep_mask
    keep = make_mask(c["box_y0x0y1x1"], 4)
    torch.testing.assert_close(keep, tensors[f"edit.{name}.mask"])
    image01 = (ref_io["io.img"] + 1) / 2
    out = nextscale.edit(ref_var, image01, keep, labels=c["label"], seed=c["g_seed"], cfg=c["cfg"],
                         top_k=c["top_k"], top_p=c["top_p"], more_smooth=c["more_smooth"])
    torch.testing.assert_close(out.images, tensors[f"edit.{name}.img"], atol=1e-3, rtol=0)
    # Kept tokens are the input image's tokens, exactly.
    known = ref_var.tokenizer.encode_tokens(ref_io["io.img"])
    finest_keep = keep.flatten().bool()
    assert torch.equal(out.tokens[-1][:, finest_keep], known[-1][:, finest_keep])


def test_per_scale_keep_mask_rules():
    keep = inpaint_keep_mask((0.25, 0.25, 0.75, 0.75), 4)
    masks = per_scale_keep(keep, (1, 2, 3, 4))
    assert masks[0].tolist() == [True]  # a single token is always kept
    assert masks[1].tolist() == [True] * 4  # each 2x2 corner is 3/4 kept -> 0.75
    assert masks[3].tolist() == keep.flatten().bool().tolist()
    stripe = inpaint_keep_mask((0.0, 0.25, 1.0, 0.75), 4)  # keep columns 0 and 3
    assert per_scale_keep(stripe, (1, 2))[1].tolist() == [False] * 4  # exactly 0.5 is not kept


def test_batch_split_rule(tiny_var):
    """One seed: a single generator feeds the whole request in batch order, so the first batch equals
    sampling it alone. Per-image generators: every image equals sampling it alone with its seed,
    whatever the batching."""
    from nextscale.inference_options import seeded_generators
    split = nextscale.sample(tiny_var, [3, 7], seed=5, cfg=1.0, top_k=10, batch_size=1)
    alone = nextscale.sample(tiny_var, [3], seed=5, cfg=1.0, top_k=10)
    assert torch.equal(split.images[0], alone.images[0])

    labels, seeds = [3, 7, 1], [100, 101, 102]
    one_batch = nextscale.sample(tiny_var, labels, generator=seeded_generators(seeds), cfg=2.0, top_k=10,
                                 more_smooth=True)
    two_batches = nextscale.sample(tiny_var, labels, generator=seeded_generators(seeds), cfg=2.0, top_k=10,
                                   more_smooth=True, batch_size=2)
    for i, (label, s) in enumerate(zip(labels, seeds)):
        single = nextscale.sample(tiny_var, [label], seed=s, cfg=2.0, top_k=10, more_smooth=True)
        for k in range(4):
            assert torch.equal(one_batch.tokens[k][i], single.tokens[k][0])
            assert torch.equal(two_batches.tokens[k][i], single.tokens[k][0])
        torch.testing.assert_close(one_batch.images[i], single.images[0], atol=1e-3, rtol=0)
        torch.testing.assert_close(two_batches.images[i], single.images[0], atol=1e-3, rtol=0)


def test_same_seed_same_images_and_different_seed_differs(tiny_var):
    a = nextscale.sample(tiny_var, [1, 2, 3], seed=0, cfg=2.0)
    b = nextscale.sample(tiny_var, [1, 2, 3], seed=0, cfg=2.0)
    c = nextscale.sample(tiny_var, [1, 2, 3], seed=1, cfg=2.0)
    assert torch.equal(a.images, b.images)
    assert not all(torch.equal(x, y) for x, y in zip(a.tokens, c.tokens))


def test_labels_none_are_drawn_uniformly_and_null_class_is_allowed(tiny_var):
    out = nextscale.sample(tiny_var, None, seed=0, num_samples=64)
    assert out.labels.shape == (64,) and 0 <= out.labels.min() and out.labels.max() < 10
    assert len(set(out.labels.tolist())) > 5
    uncond = nextscale.sample(tiny_var, [10, 10], seed=0)
    assert uncond.images.shape == (2, 3, 64, 64) and 0 <= uncond.images.min() and uncond.images.max() <= 1


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    assert torch.isinf(filter_logits(logits.clone(), top_k=2)).tolist() == [[[False, False, True, True]]]
    # top-p 0.8: drop the smallest tokens whose ascending cumulative mass <= 0.2 (0.05, 0.15).
    assert torch.isinf(filter_logits(logits.clone(), top_p=0.8)).tolist() == [[[False, False, True, True]]]
    assert torch.isinf(filter_logits(logits.clone(), top_p=0.01)).tolist() == [[[False, True, True, True]]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels=[11]), "outside"), (dict(labels=[-1]), "outside"), (dict(cfg=-1.0), "cfg"),
    (dict(top_p=1.5), "top_p"), (dict(top_k=-2), "top_k"),
])
def test_bad_sampling_arguments(tiny_var, kwargs, message):
    with pytest.raises(ValueError, match=message):
        nextscale.sample(tiny_var, **{"labels": [1], **kwargs})


@pytest.mark.parametrize("box", [(0.5, 0.5, 0.5, 0.9), (-0.1, 0, 1, 1), (0, 0, 1.2, 1), (0.9, 0.9, 0.1, 0.1)])
def test_bad_boxes(box):
    with pytest.raises(ValueError, match="box"):
        inpaint_keep_mask(box, 16)


@pytest.mark.parametrize("labels", [[3, 7], (3, 7), torch.tensor([3, 7]), np.array([3, 7]),
                                    [np.int64(3), torch.tensor(7)], ["3", " 7 "], "3,7"])
def test_label_forms_give_the_same_ids(tiny_var, labels):
    from nextscale.inference_options import as_label_tensor
    assert as_label_tensor(labels, tiny_var, "cpu").tolist() == [3, 7]


@pytest.mark.parametrize("labels, message", [
    (torch.tensor([1.5]), "integers"), ([2.0], "an id"), (["cat"], "this model has no class names"),
    ([True], "an id"), (["-1"], "outside"),
])
def test_bad_label_forms(tiny_var, labels, message):
    with pytest.raises(ValueError, match=message):
        nextscale.sample(tiny_var, labels, seed=0, cfg=1.0, top_k=10, top_p=0.0)
