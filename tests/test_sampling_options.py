"""Beyond the paper's sampler: guidance schedules, collaborative decoding, rejection sampling (tiny models).

The defaults stay the reference's (test_sampling.py); here each option is checked against what it must equal
in its limiting case (truncated guidance over every scale, the same model as both halves) and for what it
changes (the unconditional rows dropped, the refiner seeing the whole prefix, the best candidates kept).
"""

import copy
import json
import math

import pytest
import torch

import nextscale
from nextscale.evaluation.classifier import ClassifierConfig, ImageClassifier
from nextscale.images import to_model_input
from nextscale.rejection import ClassScorer, candidate_plan, candidates_for, class_scorer, inception_class_map
from nextscale.inference_options import seeded_generators
from nextscale.sampling import GuidanceSchedule, generate_tokens, parse_guidance

SETTINGS = [dict(cfg=1.5, top_k=20, top_p=0.9), dict(cfg=4.0, top_k=0, top_p=0.0),
            dict(cfg=2.0, top_k=30, top_p=0.95, more_smooth=True)]


def assert_same(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens)), "tokens differ"
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def record_batch_rows(monkeypatch, model):
    """The batch rows of each forward_scale call of `model`, in order."""
    rows = []
    real = model.forward_scale

    def recording(x, cond, mods, cache):
        rows.append((x.shape[0], cond.shape[0], cache.k.shape[1]))
        return real(x, cond, mods, cache)

    monkeypatch.setattr(model, "forward_scale", recording)
    return rows


# ---------------------------------------------------------------------------------------- guidance schedules
@pytest.mark.parametrize("settings", SETTINGS)
def test_truncated_guidance_over_every_scale_is_the_default_exactly(tiny_var, settings):
    labels = [3, 7, 0]
    default = nextscale.sample(tiny_var, labels, seed=42, **settings)
    assert_same(nextscale.sample(tiny_var, labels, seed=42, guidance="truncated:4", **settings), default)
    assert_same(nextscale.sample(tiny_var, labels, seed=42, guidance=GuidanceSchedule("linear"), **settings), default)
    per_image = nextscale.sample(tiny_var, labels, seed=42, per_image_seeds=True, **settings)
    assert_same(nextscale.sample(tiny_var, labels, seed=42, per_image_seeds=True, guidance="truncated:4", **settings),
                per_image)


def test_truncated_guidance_drops_the_unconditional_rows_after_n_scales(tiny_var, monkeypatch):
    default = nextscale.sample(tiny_var, [3, 7], seed=1, per_image_seeds=True, cfg=4.0, top_k=0, top_p=0.0)
    rows = record_batch_rows(monkeypatch, tiny_var)
    out = nextscale.sample(tiny_var, [3, 7], seed=1, per_image_seeds=True, cfg=4.0, top_k=0, top_p=0.0,
                           guidance="truncated:2")
    # inputs, conditioning and the KV cache: 4 rows (conditional + null class) for scales 0-1, then 2
    assert rows == [(4, 4, 4), (4, 4, 4), (2, 2, 2), (2, 2, 2)]
    # The guided scales are computed as before, with the same random draws: their tokens are the default's.
    assert all(torch.equal(out.tokens[k], default.tokens[k]) for k in (0, 1))
    rows.clear()
    nextscale.sample(tiny_var, [3, 7], seed=1, guidance="truncated:0")
    assert rows == [(2, 2, 2)] * 4  # no guidance: the null class never runs


def test_constant_guidance_weights_every_scale_with_cfg(tiny_var, monkeypatch):
    assert [GuidanceSchedule("constant").weight(3.0, k, 4) for k in range(4)] == [3.0] * 4
    assert [GuidanceSchedule("linear").weight(3.0, k, 4) for k in range(4)] == [0.0, 1.0, 2.0, 3.0]
    assert [GuidanceSchedule("truncated", 2).guided(k) for k in range(4)] == [True, True, False, False]
    # At scale 0 the ramp's weight is 0 (the conditional logits alone), the constant's is cfg.
    captured = {}

    def run(guidance):
        real = tiny_var.forward_scale

        def first_logits(x, cond, mods, cache):
            logits = real(x, cond, mods, cache)
            captured.setdefault(guidance, logits.clone())
            return logits
        monkeypatch.setattr(tiny_var, "forward_scale", first_logits)
        tokens, _ = generate_tokens(tiny_var, torch.tensor([3]), torch.Generator().manual_seed(0), cfg=2.0,
                                    guidance=guidance)
        monkeypatch.undo()
        return tokens

    run("linear")
    run("constant")
    cond, uncond = captured["constant"][:1], captured["constant"][1:]
    assert torch.equal(captured["linear"], captured["constant"])  # the same network outputs ...
    expected_constant = (1 + 2.0) * cond - 2.0 * uncond  # ... mixed differently
    g = torch.Generator().manual_seed(0)
    probs = expected_constant.softmax(-1)
    drawn = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=g).view(1, 1)
    assert torch.equal(run("constant")[0], drawn)


@pytest.mark.parametrize("value, message", [
    ("cosine", "guidance must be 'linear'"),
    ("truncated", "'truncated:N' with N a whole number in [0, 4]"),
    ("truncated:5", "got 'truncated:5'"),
    ("truncated:-1", "got 'truncated:-1'"),
    ("linear:2", "got 'linear:2'"),
    (3, "got 3"),
])
def test_bad_guidance_is_refused_naming_the_forms(tiny_var, value, message):
    with pytest.raises(ValueError, match="guidance must be") as info:
        nextscale.sample(tiny_var, [1], seed=0, guidance=value)
    assert message in str(info.value)


def test_guidance_strings_round_trip():
    for text in ("linear", "constant", "truncated:0", "truncated:7"):
        assert str(parse_guidance(text, 7)) == text
    assert parse_guidance(" Truncated: 3 ", 7) == GuidanceSchedule("truncated", 3)
    assert parse_guidance(None, 7) == GuidanceSchedule("linear")


# Two of the reference's edit settings (tiny_d2_edit.json): unconditional in-painting and a class edit.
EDITS = {
    "inpaint_center": {"box_y0x0y1x1": [0.25, 0.25, 0.75, 0.75], "inpainting": True, "label": 10, "cfg": 3.0,
                       "top_k": 20, "top_p": 0.95, "more_smooth": False, "g_seed": 11},
    "class_edit_box_label5": {"box_y0x0y1x1": [0.0, 0.0, 0.5, 1.0], "inpainting": True, "label": 5, "cfg": 2.0,
                              "top_k": 0, "top_p": 0.0, "more_smooth": False, "g_seed": 11},
}


@pytest.mark.parametrize("name", list(EDITS))
def test_edit_with_truncated_guidance_over_every_scale_is_the_default(name, tiny_var):
    c = EDITS[name]
    keep = (nextscale.inpaint_keep_mask if c["inpainting"] else nextscale.outpaint_keep_mask)(c["box_y0x0y1x1"], 4)
    image01 = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    kwargs = dict(labels=c["label"], seed=c["g_seed"], cfg=c["cfg"], top_k=c["top_k"], top_p=c["top_p"],
                  more_smooth=c["more_smooth"])
    default = nextscale.edit(tiny_var, image01, keep, **kwargs)
    assert_same(nextscale.edit(tiny_var, image01, keep, guidance="truncated:4", **kwargs), default)
    if c["label"] != tiny_var.num_classes:  # unconditional in-painting: both halves are the null class anyway
        assert not torch.equal(nextscale.edit(tiny_var, image01, keep, guidance="truncated:1", **kwargs).images,
                               default.images)


def test_edit_takes_the_precisions_of_sample(tiny_var):
    """edit(precision=...) as sample: float32 is the default exactly; int8 and bfloat16 run the quantized copy /
    autocast and keep every token the mask keeps."""
    c = EDITS["class_edit_box_label5"]
    keep = nextscale.inpaint_keep_mask(c["box_y0x0y1x1"], 4)
    image01 = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    kwargs = dict(labels=c["label"], seed=c["g_seed"], cfg=c["cfg"], top_k=c["top_k"], top_p=c["top_p"])
    default = nextscale.edit(tiny_var, image01, keep, **kwargs)
    assert_same(nextscale.edit(tiny_var, image01, keep, precision="float32", **kwargs), default)
    known = tiny_var.tokenizer.encode_tokens(to_model_input(image01, tiny_var.tokenizer.resolution).mul(2).sub(1))
    for precision in ("int8", "bfloat16"):
        out = nextscale.edit(tiny_var, image01, keep, precision=precision, **kwargs)
        assert out.images.dtype == torch.float32 and out.images.shape == default.images.shape
        kept = keep.bool()
        assert torch.equal(out.tokens[-1].view(2, 4, 4)[:, kept], known[-1].view(2, 4, 4)[:, kept])
    with pytest.raises(ValueError, match="precision must be one of"):
        nextscale.edit(tiny_var, image01, keep, precision="float8", **kwargs)


# ---------------------------------------------------------------------------------------- collaborative decoding
@pytest.mark.parametrize("switch_at", [1, 2, 3])
def test_the_same_model_as_refiner_is_plain_sampling_exactly(tiny_var, switch_at):
    twin = copy.deepcopy(tiny_var)  # another object with the same weights: its cache is rebuilt by the replay
    twin.attach_tokenizer(tiny_var.tokenizer)
    for settings in SETTINGS:
        plain = nextscale.sample(tiny_var, [3, 7], seed=42, **settings)
        assert_same(nextscale.sample(tiny_var, [3, 7], seed=42, refiner=twin, switch_at=switch_at, **settings), plain)
        assert_same(nextscale.sample(tiny_var, [3, 7], seed=42, refiner=tiny_var, switch_at=switch_at, **settings),
                    plain)
    # with a truncated schedule, the switch before or after guidance ends
    for guidance in ("truncated:1", "truncated:3"):
        plain = nextscale.sample(tiny_var, [3, 7], seed=5, per_image_seeds=True, guidance=guidance)
        assert_same(nextscale.sample(tiny_var, [3, 7], seed=5, per_image_seeds=True, guidance=guidance, refiner=twin,
                                     switch_at=switch_at), plain)


@pytest.fixture(scope="module")
def other_var(tiny_var):
    """Another transformer (different width and depth, random weights) on the tiny tokenizer."""
    torch.manual_seed(1)
    var = nextscale.VAR(nextscale.VARConfig(depth=1, embed_dim=64, num_heads=1, num_classes=10, vocab_size=64,
                                            vae_channels=8, patch_nums=(1, 2, 3, 4), drop_path_rate=0.0)).eval()
    var.init_weights()
    var.attach_tokenizer(tiny_var.tokenizer)
    return var


def test_the_refiner_samples_the_later_scales_having_seen_the_whole_prefix(tiny_var, other_var, monkeypatch):
    switch_at = 2
    plain = nextscale.sample(tiny_var, [3, 7], seed=3, per_image_seeds=True, cfg=0.0, top_k=0, top_p=0.0)
    seen = []
    real = other_var.forward_scale

    def recording(x, cond, mods, cache):
        logits = real(x, cond, mods, cache)
        seen.append(logits)
        return logits

    monkeypatch.setattr(other_var, "forward_scale", recording)
    out = nextscale.sample(tiny_var, [3, 7], seed=3, per_image_seeds=True, cfg=0.0, top_k=0, top_p=0.0,
                           guidance="truncated:0", refiner=other_var, switch_at=switch_at)
    assert all(torch.equal(out.tokens[k], plain.tokens[k]) for k in range(switch_at))  # the model's scales
    assert not all(torch.equal(out.tokens[k], plain.tokens[k]) for k in range(switch_at, 4))
    # The refiner ran the 2 prefix scales (the replay), then its own 2; its logits at its scales are those of
    # its full teacher-forced forward over all the tokens: it saw the whole prefix.
    assert len(seen) == 4
    full = other_var(torch.tensor([3, 7]), tiny_var.tokenizer.teacher_forcing_input(out.tokens))
    offsets = [0, 1, 5, 14, 30]
    for k in range(4):
        torch.testing.assert_close(seen[k], full[:, offsets[k]:offsets[k + 1]], atol=1e-4, rtol=1e-4)


def test_bad_refiner_requests_are_refused_in_one_line(tiny_var, other_var):
    with pytest.raises(ValueError, match=r"switch_at must be a whole number in \[1, 3\]"):
        nextscale.sample(tiny_var, [1], seed=0, refiner=other_var, switch_at=0)
    with pytest.raises(ValueError, match=r"switch_at must be a whole number in \[1, 3\]"):
        nextscale.sample(tiny_var, [1], seed=0, refiner=other_var, switch_at=4)
    with pytest.raises(ValueError, match="refiner needs switch_at"):
        nextscale.sample(tiny_var, [1], seed=0, refiner=other_var)
    with pytest.raises(ValueError, match="pass refiner= too"):
        nextscale.sample(tiny_var, [1], seed=0, switch_at=2)
    wide = nextscale.VAR(nextscale.VARConfig(depth=1, embed_dim=64, num_heads=1, num_classes=5, vocab_size=64,
                                             vae_channels=8, patch_nums=(1, 2, 3, 4))).eval()
    with pytest.raises(ValueError, match="classes 5 vs the model's 10.*same tokenizer"):
        nextscale.sample(tiny_var, [1], seed=0, refiner=wide, switch_at=2)
    # the same architecture on another tokenizer (other weights) is refused
    stranger = copy.deepcopy(other_var)
    other_vae = copy.deepcopy(tiny_var.tokenizer)
    with torch.no_grad():
        other_vae.quantize.embedding.weight.mul_(2)
    stranger.attach_tokenizer(other_vae)
    with pytest.raises(ValueError, match="another tokenizer"):
        nextscale.sample(tiny_var, [1], seed=0, refiner=stranger, switch_at=2)
    # the same weights in another object are the same tokenizer
    stranger.attach_tokenizer(copy.deepcopy(tiny_var.tokenizer))
    nextscale.sample(tiny_var, [1], seed=0, refiner=stranger, switch_at=2)


# ---------------------------------------------------------------------------------------- rejection sampling
@pytest.fixture(scope="module")
def judge():
    """A small classifier (random weights) of the tiny model's 10 classes, at 32x32 (the images are 64x64:
    resized for it)."""
    torch.manual_seed(3)
    config = ClassifierConfig(channels=(4, 8), feature_dim=16, image_size=32, in_channels=3, pixel_mean=0.5,
                              pixel_std=0.25, class_names=tuple(f"c{i}" for i in range(10)))
    return ImageClassifier(config).eval()


def test_rejection_keeps_the_requested_count_and_classes_and_the_best_candidates(tiny_var, judge):
    labels = [3, 3, 3, 7, 1]
    out = nextscale.sample(tiny_var, labels, seed=10, per_image_seeds=True, reject_with=judge, keep=0.5,
                           batch_size=4)
    assert out.labels.tolist() == labels and out.images.shape == (5, 3, 64, 64)
    assert all(t.shape[0] == 5 for t in out.tokens)
    # The candidates: class 3 six of them (0-5), class 7 two (6-7), class 1 two (8-9); candidate j uses seed 10 + j.
    assert candidate_plan(labels, 0.5, 10) == ({3: 3, 7: 1, 1: 1}, [3] * 6 + [7] * 2 + [1] * 2)
    all_of_them = nextscale.sample(tiny_var, [3] * 6 + [7] * 2 + [1] * 2, seed=10, per_image_seeds=True, batch_size=4)
    scores = ClassScorer(judge, image_size=32)(all_of_them.images, all_of_them.labels)
    expected = []
    for c, first, m, n in ((3, 0, 6, 3), (7, 6, 2, 1), (1, 8, 2, 1)):
        ranked = sorted(range(first, first + m), key=lambda j: (-scores[j].item(), j))
        expected += sorted(ranked[:n])
    assert out.candidates.tolist() == expected
    torch.testing.assert_close(out.scores, scores[expected])
    assert torch.equal(out.images, all_of_them.images[expected])
    assert all(torch.equal(t, a[expected]) for t, a in zip(out.tokens, all_of_them.tokens))


def test_rejection_is_reproducible_from_the_seed(tiny_var, judge):
    kwargs = dict(seed=7, per_image_seeds=True, reject_with=judge, keep=0.4, batch_size=3)
    a = nextscale.sample(tiny_var, [2, 2, 5], **kwargs)
    b = nextscale.sample(tiny_var, [2, 2, 5], **kwargs)
    assert_same(a, b)
    assert torch.equal(a.candidates, b.candidates)
    # one generator for the call (the reference protocol), drawn in candidate order
    c = nextscale.sample(tiny_var, [2, 2, 5], seed=7, reject_with=judge, keep=0.4)
    d = nextscale.sample(tiny_var, [2, 2, 5], seed=7, reject_with=judge, keep=0.4)
    assert_same(c, d)
    # keep=1 keeps every candidate: plain sampling, candidate j (the classes grouped) with seed + j
    everything = nextscale.sample(tiny_var, [2, 5, 2], seed=7, per_image_seeds=True, reject_with=judge, keep=1.0)
    plain = _plain_in_candidate_order(tiny_var, [2, 5, 2], seed=7)
    assert all(torch.equal(x, y) for x, y in zip(everything.tokens, plain.tokens))
    torch.testing.assert_close(everything.images, plain.images, atol=1e-5, rtol=0)
    assert everything.candidates.tolist() == [0, 2, 1]


def _plain_in_candidate_order(var, labels, seed):
    """Plain samples of `labels` where image i's seed is that of its candidate (classes grouped in order of
    first appearance): what keep=1 returns."""
    order = sorted(range(len(labels)), key=lambda i: (list(dict.fromkeys(labels)).index(labels[i]), i))
    seeds = [0] * len(labels)
    for j, i in enumerate(order):
        seeds[i] = seed + j
    return nextscale.sample(var, labels, generator=seeded_generators(seeds))


def test_candidate_counts():
    assert candidates_for(3, 0.1) == 30 and candidates_for(1, 0.3) == 4 and candidates_for(5, 1.0) == 5
    assert candidates_for(2, 0.5) == 4 and candidates_for(7, 0.7) == 10 and candidates_for(1, 1 / 3) == 3
    assert candidates_for(10, 0.25) == math.ceil(10 / 0.25)


def test_rejection_with_the_shipped_model_and_classifier():
    var = nextscale.load_pretrained("fashion-mnist")
    out = nextscale.sample(var, ["Shirt", "Shirt", "Sandal"], seed=0, per_image_seeds=True,
                           reject_with="fashion-mnist", keep=0.5)
    assert out.labels.tolist() == [6, 6, 5] and out.images.shape == (3, 3, 32, 32)
    assert out.candidates.tolist() == sorted(out.candidates.tolist()) and len(set(out.candidates.tolist())) == 3
    shipped = nextscale.load_classifier()
    probs = shipped(out.images).softmax(-1)
    torch.testing.assert_close(out.scores, probs[torch.arange(3), out.labels], atol=1e-5, rtol=1e-5)


def test_rejection_with_a_classifier_folder_and_with_the_inception(tiny_var, judge, tmp_path):
    judge.save_pretrained(tmp_path / "judge")
    a = nextscale.sample(tiny_var, [4], seed=2, per_image_seeds=True, reject_with=str(tmp_path / "judge"), keep=0.5)
    b = nextscale.sample(tiny_var, [4], seed=2, per_image_seeds=True, reject_with=judge, keep=0.5)
    assert_same(a, b)
    # The FID Inception (random weights here), its 1008 logits in the TensorFlow graph's order: the label map
    # gives each class id (the WordNet ids sorted) its logit.
    from nextscale.evaluation.inception import FIDInceptionV3
    pbtxt = tmp_path / "label_map.pbtxt"
    wnids = [f"n0{9 - i}000000" for i in range(10)]  # listed in reverse order: class id c is wnids[9 - c]
    pbtxt.write_text("".join(f'entry {{\n  target_class: {100 + i}\n  target_class_string: "{w}"\n}}\n'
                             for i, w in enumerate(wnids)))
    assert inception_class_map(pbtxt) == [109 - c for c in range(10)]
    inception = FIDInceptionV3().eval()
    scorer = class_scorer(inception, tiny_var, class_map=pbtxt)
    out = nextscale.sample(tiny_var, [4], seed=2, per_image_seeds=True, reject_with=scorer, keep=0.5)
    probs = inception(out.images)["logits"].softmax(-1)
    torch.testing.assert_close(out.scores, probs[:, 105], atol=1e-5, rtol=1e-5)
    (tmp_path / "map.json").write_text(json.dumps(list(range(10))))
    assert class_scorer(inception, tiny_var, class_map=tmp_path / "map.json").class_map.tolist() == list(range(10))
    with pytest.raises(ValueError, match="TensorFlow graph's order"):
        class_scorer(inception, tiny_var)


@pytest.mark.parametrize("kwargs, message", [
    (dict(keep=0.0), r"keep must be a number in \(0, 1\]"),
    (dict(keep=1.5), r"keep must be a number in \(0, 1\]"),
    (dict(keep=True), r"keep must be a number in \(0, 1\]"),
    (dict(labels=None), "pass labels"),
    (dict(labels=[10]), "the null class"),
])
def test_bad_rejection_requests_are_refused(tiny_var, judge, kwargs, message):
    kwargs = {"labels": [1], "keep": 0.5, **kwargs}
    with pytest.raises(ValueError, match=message):
        nextscale.sample(tiny_var, seed=0, reject_with=judge, **kwargs)


def test_rejection_refuses_a_classifier_of_other_classes(tiny_var):
    five = ImageClassifier(ClassifierConfig(num_classes=5, class_names=tuple("abcde"))).eval()
    with pytest.raises(ValueError, match="classifier's classes are .* trained on the model's data"):
        nextscale.sample(tiny_var, [1], seed=0, reject_with=five)
    with pytest.raises(ValueError, match="keep is the fraction"):
        nextscale.sample(tiny_var, [1], seed=0, keep=0.5)
    with pytest.raises(FileNotFoundError, match="no classifier at"):
        nextscale.sample(tiny_var, [1], seed=0, reject_with="/nonexistent/classifier")
