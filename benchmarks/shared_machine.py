"""On a shared machine: nextscale's thread policy against torch's default, idle and beside busy programs.

    python benchmarks/shared_machine.py [--busy 0,1,2] [--rounds 2] [--repeats 2] [--out bench_results/shared_machine.json]

For each number of busy programs (single-threaded busy loops started first, so that they are running when a
measurement starts), each policy runs in its own process (the OpenMP wait policy is read when torch loads) and
times, after one warm-up:
  - sampling: var-d16 + vae-f16c32 (published architectures, random weights), one 256px image, cfg 1.5,
    top-k 900, top-p 0.96: seconds per image;
  - training: one optimizer step (forward, backward, AdamW) of the shipped Fashion-MNIST transformer on a batch
    of 64 random token maps: seconds per step.
Policies:
  - today: torch's default thread count (one per core) and OpenMP's default waiting (libgomp: 300,000 spins, then
    sleep): torch is loaded before nextscale;
  - nextscale: what `nextscale` does: the free cores, measured at the start (`nextscale.threads.set_threads()`),
    and GOMP_SPINCOUNT 10,000 (set when nextscale loads before torch);
  - nextscale+passive: the same with OMP_WAIT_POLICY=PASSIVE (threads sleep at once when they wait).
Rounds alternate the policies (today, nextscale, ..., today, nextscale, ...) so that a drift of the machine's
speed hits all of them; the table gives the median over rounds and the spread (max/min - 1) of each, the run-to-run
noise against which "no slower" is read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import processor_name  # (benchmarks/ is on the path when this script runs)

POLICIES = {
    "today": {},
    "nextscale": {},
    "nextscale+passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}

WORKER = r"""
import json, sys, time
policy, repeats, smoke = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "smoke"
if policy == "today":
    import torch  # loaded before nextscale: OpenMP keeps its default spin (nextscale lowers it when it loads first)
import nextscale
import torch
from nextscale import threads
choice = threads.set_threads(0, announce=False) if policy.startswith("nextscale") else None
import os
spin = os.environ.get("GOMP_SPINCOUNT")
from nextscale.inference_options import make_generator
from nextscale.sampling import generate_tokens

def best(fn):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return min(times)

torch.manual_seed(0)
tiny_vae = dict(ch=32, ch_mult=(1, 1, 2, 2, 4), z_channels=8, vocab_size=64) if smoke else {}
tiny_var = dict(depth=2, embed_dim=64, num_heads=2, num_classes=10, vocab_size=64, vae_channels=8) if smoke else {}
vae = nextscale.build_vae("vae-f16c32", **tiny_vae).eval()
var = nextscale.build_var("var-d16", **tiny_var).eval(); var.init_weights(); var.attach_tokenizer(vae)
labels = torch.tensor([3])
def sample():
    with torch.no_grad():
        tokens, f_hat = generate_tokens(var, labels, make_generator(0, "cpu"), cfg=1.5, top_k=900, top_p=0.96)
        vae.decode_fhat(f_hat)
sampling = best(sample)
del var, vae

from nextscale.training.var_model import model_targets
small = nextscale.load_pretrained("fashion-mnist").train()
tokenizer = small.tokenizer
optimizer = torch.optim.AdamW(small.parameters(), lr=1e-4)
length = sum(p * p for p in small.config.patch_nums)
gen = torch.Generator().manual_seed(0)
tokens = torch.randint(0, tokenizer.config.vocab_size, (64, length), generator=gen)
batch_labels = torch.randint(0, small.config.num_classes, (64,), generator=gen)
def train_step():
    inputs, target = model_targets(small, tokenizer, tokens)
    logits = small(batch_labels, inputs)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), target.flatten())
    loss.backward(); optimizer.step(); optimizer.zero_grad(set_to_none=True)
training = best(train_step)
print(json.dumps({"threads": torch.get_num_threads(), "sampling_s": sampling, "train_step_s": training,
                  "busy_measured": None if choice is None else choice.busy, "spin": spin}))
"""


def start_busy(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(1.0)  # running, and counted by /proc/stat, before a worker measures
    return procs


def run_worker(policy: str, repeats: int, smoke: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICIES[policy])
    r = subprocess.run([sys.executable, "-c", WORKER, policy, str(repeats), "smoke" if smoke else "full"],
                       capture_output=True, text=True,
                       env=env, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"worker {policy} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {"median": statistics.median(values), "spread": max(values) / min(values) - 1, "values": values}


def measure(busy_levels, policies, rounds: int, repeats: int, smoke: bool = False) -> list[dict]:
    rows = []
    for busy in busy_levels:
        procs = start_busy(busy)
        try:
            runs = {p: [] for p in policies}
            for r in range(rounds):
                for p in policies:
                    print(f"busy {busy}, round {r + 1}/{rounds}: {p} ...", file=sys.stderr, flush=True)
                    runs[p].append(run_worker(p, repeats, smoke))
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
        for p in policies:
            rows.append({"busy_programs": busy, "policy": p, "threads": runs[p][-1]["threads"],
                         "spin": runs[p][-1]["spin"],
                         "busy_measured": runs[p][-1]["busy_measured"],
                         "sampling_s": summarise(runs[p], "sampling_s"),
                         "train_step_s": summarise(runs[p], "train_step_s")})
    return rows


def print_table(rows: list[dict]) -> None:
    today = {(r["busy_programs"]): r for r in rows if r["policy"] == "today"}
    print(f"{'busy':>4}  {'policy':<18} {'thr':>3}  {'sample s/img':>12} {'spread':>6} {'vs today':>8}  "
          f"{'train s/step':>12} {'spread':>6} {'vs today':>8}")
    for r in rows:
        base = today.get(r["busy_programs"])
        cells = []
        for key in ("sampling_s", "train_step_s"):
            m = r[key]["median"]
            speedup = base[key]["median"] / m if base else float("nan")
            cells.append(f"{m:>12.3f} {r[key]['spread']:>6.1%} {speedup:>7.2f}x")
        print(f"{r['busy_programs']:>4}  {r['policy']:<18} {r['threads']:>3}  {cells[0]}  {cells[1]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--busy", default="0,1,2", help="numbers of busy programs to measure beside (default: %(default)s)")
    p.add_argument("--policies", default="today,nextscale,nextscale+passive",
                   help=f"policies to compare, from {', '.join(POLICIES)} (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of all policies (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement after one warm-up; the "
                   "fastest counts (default: %(default)s)")
    p.add_argument("--out", default="bench_results/shared_machine.json", help="JSON file (default: %(default)s)")
    p.add_argument("--smoke", action="store_true", help="a tiny transformer instead of var-d16 (checks the "
                   "benchmark runs; its times mean nothing)")
    args = p.parse_args(argv)
    busy = [int(b) for b in args.busy.split(",")]
    policies = args.policies.split(",")
    unknown = [x for x in policies if x not in POLICIES]
    if unknown or args.rounds < 1 or args.repeats < 1 or min(busy) < 0:
        p.error(f"unknown policy {unknown}" if unknown else "--rounds and --repeats >= 1, --busy >= 0")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# {processor_name()}, {cores} cores usable, python {platform.python_version()}", flush=True)
    rows = measure(busy, policies, args.rounds, args.repeats, args.smoke)
    print_table(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": processor_name(), "cores": cores, "rounds": args.rounds, "smoke": args.smoke,
                               "repeats": args.repeats, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
