"""benchmarks/gpu_check.py: its dry run (the GPU run's code paths on CPU, tiny models) and its arithmetic."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402

import nextscale  # noqa: E402
import nextscale.inference_options  # noqa: E402
from nextscale.transformer.var import VARConfig  # noqa: E402

SECTIONS = ["peak", "parity", "distributed", "training", "sampling", "compile"]


# ---------------------------------------------------------------------------------------- arithmetic
def test_var_forward_flops_counted_by_hand():
    # depth 1, width 8, MLP 32, vocab 16, 4 latent channels, scales 1 and 2 (L = 5 tokens, 4 embedded):
    # word embedding 4*4*8 = 128; qkv 5*8*24 = 960, projection 5*8*8 = 320, MLP 2*5*8*32 = 2560,
    # attention 2*5*5*8 = 400; AdaLN 8*48 = 384; head AdaLN 8*16 = 128; head 5*8*16 = 640: 5520 multiply-adds.
    config = VARConfig(depth=1, embed_dim=8, num_heads=2, num_classes=3, vocab_size=16, vae_channels=4,
                       patch_nums=(1, 2))
    assert gpu_check.var_forward_flops(config, 1) == 2 * 5520
    assert gpu_check.var_forward_flops(config, 3) == 3 * 2 * 5520
    # Two blocks sharing one AdaLN projection: the blocks' work twice, the AdaLN once.
    shared = VARConfig(depth=2, embed_dim=8, num_heads=2, num_classes=3, vocab_size=16, vae_channels=4,
                       patch_nums=(1, 2), shared_adaln=True)
    assert gpu_check.var_forward_flops(shared, 1) == 2 * (128 + 2 * (960 + 320 + 2560 + 400) + 384 + 128 + 640)
    # var-d16 at 256px (680 tokens, width 1024): 155,031,142,400 multiply-adds per image.
    assert gpu_check.var_forward_flops(VARConfig(depth=16), 1) == 310_062_284_800


@pytest.mark.parametrize("shared_adaln", [False, True])
def test_var_forward_flops_equal_torch_flop_counter(shared_adaln):
    torch.manual_seed(0)
    var = nextscale.VAR(VARConfig(depth=2, embed_dim=64, num_heads=2, num_classes=10, vocab_size=64, vae_channels=8,
                                  patch_nums=(1, 2, 3), shared_adaln=shared_adaln, drop_path_rate=0.0,
                                  class_drop_prob=0.0)).train()
    labels = torch.tensor([1, 2, 3])
    inputs = torch.randn(3, var.seq_len - 1, 8)
    assert gpu_check.count_flops(lambda: var(labels, inputs)) == gpu_check.var_forward_flops(var.config, 3)


def test_mfu_and_peak_arithmetic():
    assert gpu_check.train_step_flops(1.5e12) == 4.5e12
    # 3 TFLOP in half a second on a 12 TFLOP/s peak: half of it.
    assert gpu_check.mfu(3.0e12, 0.5, 1.2e13) == pytest.approx(0.5)
    assert gpu_check.mfu(gpu_check.train_step_flops(2e12), 0.25, 8e13) == pytest.approx(0.3)
    assert gpu_check.matmul_flops_per_s(4096, 0.1) == pytest.approx(1_374_389_534_720)
    assert gpu_check.matmul_flops_per_s(1000, 2.0, iterations=10) == pytest.approx(1e10)
    assert gpu_check.predicted_seconds(None, 64) == 0.0
    assert gpu_check.predicted_seconds((16, 2.0), 64) == 8.0


def test_largest_batch_is_found_by_trying_smaller_ones_on_out_of_memory():
    tried, freed = [], []

    def try_batch(batch):
        tried.append(batch)
        if batch > 48:
            raise torch.OutOfMemoryError(f"CUDA out of memory at batch {batch}")
        return f"ran {batch}"

    assert gpu_check.find_largest_batch(try_batch, (512, 64, 48, 32), lambda: freed.append(1)) == \
        (48, "ran 48", [512, 64])
    assert tried == [512, 64, 48] and len(freed) == 2
    assert gpu_check.find_largest_batch(try_batch, (128, 96)) == (None, None, [128, 96])

    def broken(batch):
        raise ValueError("not a memory problem")
    with pytest.raises(ValueError):
        gpu_check.find_largest_batch(broken, (8, 4))


def test_a_differing_token_is_reported_with_its_margin():
    probs = torch.tensor([[[0.5, 0.3, 0.2, 0.0]]])  # (B=1, l=1, V=4)
    ref = [torch.tensor([[0]]), torch.tensor([[2, 1]])]
    ours = [torch.tensor([[1]]), torch.tensor([[2, 1]])]
    check = gpu_check.token_check("t", ours, ref,
                                  lambda k, b, i, o, r: gpu_check.sampled_token_margin(probs, b, i, o, r))
    assert not check["passed"] and check["differing_tokens"] == 1 and check["tokens"] == 3
    first = check["first_differences"][0]
    assert (first["scale"], first["image"], first["position"], first["ours"], first["reference"]) == (0, 0, 0, 1, 0)
    assert first["logit_margin"] == pytest.approx(math.log(0.3 / 0.5))
    # The reference token filtered out (probability 0) on this device: an infinite margin, said as such.
    assert gpu_check.sampled_token_margin(probs, 0, 0, 0, 3)["logit_margin"] == "inf"
    assert gpu_check.token_check("t", ref, ref)["passed"]
    # Tokenizer: squared distances 1 (code 0) and 4 (code 1) from z = 0.
    m = gpu_check.code_distance_margin(torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, 2.0]]), ours=1, ref=0)
    assert m["distance_margin"] == pytest.approx(-3.0)
    assert gpu_check.value_check("v", torch.ones(2), torch.zeros(2), 1e-3)["max_abs_diff"] == 1.0


def test_cpu_generator_bridge_draws_what_the_cpu_path_draws(tiny_models):
    _, var = tiny_models
    plain = nextscale.sample(var, [1, 2], seed=3, cfg=2.0, top_k=20, top_p=0.9, more_smooth=True)
    record = []
    with gpu_check.cpu_generator_bridge(record):
        bridged = nextscale.sample(var, [1, 2], generator=nextscale.inference_options.make_generator(3, "cpu"), cfg=2.0,
                                   top_k=20, top_p=0.9, more_smooth=True)
    assert all(torch.equal(a, b) for a, b in zip(plain.tokens, bridged.tokens))
    assert [r.shape for r in record] == [(2, pn * pn, 64) for pn in var.patch_nums]
    assert nextscale.sampling.draw_tokens is gpu_check._DRAW_TOKENS  # restored
    assert nextscale.sampling.gumbel_noise is gpu_check._GUMBEL_NOISE


def test_collect_errors_finds_nested_row_errors():
    result = {"rows": [{"batch": 1}, {"batch": 2, "error": "OutOfMemoryError: x"}], "ddp": {"error": "boom"}}
    assert gpu_check.collect_errors(result) == ["rows[1]: OutOfMemoryError: x", "ddp: boom"]


# ---------------------------------------------------------------------------------------- whole runs
def test_spent_time_budget_skips_every_section_with_a_note(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--minutes", "0", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(report["sections"]) == SECTIONS
    for entry in report["sections"].values():
        assert entry["status"] == "skipped" and "time budget of 0 min" in entry["note"]
    assert "| peak | skipped |" in (tmp_path / "gpu_check.md").read_text()
    assert "every section that ran succeeded" in capsys.readouterr().out


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    # A generous budget: the default 8 minutes are for the GPU run; a busy CI machine must not skip rows here.
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--minutes", "30",
                        "--out", str(out)], capture_output=True, text=True, timeout=1800, cwd=REPO)
    return r, out


@pytest.mark.slow
def test_dry_run_runs_every_section_without_error(dry_run):
    r, out = dry_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["failed"] == []
    assert report["environment"]["device"] == "cpu" and report["environment"]["tf32_matmul"] is False
    sections = report["sections"]
    assert list(sections) == SECTIONS
    for name, entry in sections.items():
        allowed = {"ok", "skipped"} if name in ("parity", "compile") else {"ok"}
        assert entry["status"] in allowed, (name, entry)
        assert "error" not in entry
    assert sections["compile"]["status"] == "skipped" and "dry run" in sections["compile"]["note"]

    parity = sections["parity"]
    if gpu_check.find_reference(None) is not None:  # where the script looked (its environment is ours)
        assert parity["status"] == "ok" and parity["result"]["passed"] and not parity["result"]["failed"]
        names = {c["name"] for c in parity["result"]["checks"]}
        assert {"tokenizer.tokens", "transformer.logits", "sample.cfg1.5_k20_p0.9.tokens",
                "sample.cfg2_k30_p0.95_smooth.images", "edit.inpaint_center.images"} <= names
        assert all(c["differing_tokens"] == 0 for c in parity["result"]["checks"] if c.get("kind") == "tokens")
    else:
        assert parity["status"] == "skipped" and "reference vectors not found" in parity["note"]

    peak = sections["peak"]["result"]
    assert peak["bfloat16"]["flops_per_s"] > 0 and peak["float32"]["flops_per_s"] > 0

    dist = sections["distributed"]["result"]
    assert dist["backend"] == "gloo" and dist["world_size"] == 1
    assert dist["ddp"]["wrapper"].endswith("DistributedDataParallel")
    assert "FSDP" in dist["fsdp"]["wrapper"] and dist["fsdp"]["sharded_parameters"] > 0
    for p in ("ddp", "fsdp"):
        assert math.isfinite(dist[p]["loss"]) and dist[p]["grad_norm"] > 0

    train = sections["training"]["result"]
    assert train["batch"] == 2 and train["out_of_memory_at"] == []
    assert train["forward_flops_counted_batch1"] == train["forward_flops_analytic_batch1"] > 0
    assert train["model_flops_per_step"] == 3 * 2 * train["forward_flops_analytic_batch1"]
    assert train["tokens_per_s"] == pytest.approx(2 * train["tokens_per_image"] / train["step_seconds"])
    assert train["mfu"] == pytest.approx(train["achieved_tflops"] / train["bf16_peak_tflops"])
    assert train["mfu"] > 0 and math.isfinite(train["loss"])

    rows = sections["sampling"]["result"]["rows"]
    assert [(x["model"], x["precision"], x["batch"]) for x in rows] == [
        (m, p, b) for m in ("var-d16", "var-d30") for p in ("float32", "bfloat16") for b in (1, 2)]
    for x in rows:
        assert "error" not in x and "skipped" not in x
        assert x["images_per_s"] == pytest.approx(x["batch"] / (x["transformer_seconds"] + x["decoder_seconds"]))
        assert 0 < x["transformer_share"] < 1

    table = (out / "gpu_check.md").read_text()
    assert "| section | status | seconds | summary |" in table and "| var-d30 | bfloat16 | 2 |" in table
    assert table in r.stdout
