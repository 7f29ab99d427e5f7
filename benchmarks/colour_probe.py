"""Why the small tokenizer lost colour: can it learn to reconstruct flat colours?

    python benchmarks/colour_probe.py                       # the table below, about 1 minute per row
    python benchmarks/colour_probe.py --steps 50 --rows g32-lr1e-4,g1-lr1e-4 --out bench_results/colour_probe.json

The own-images tokenizer's architecture (ch 32, ch_mult 1,1,2,2, one block per level), quantizer bypassed, is
trained with AdamW (betas 0.9, 0.95, no warmup) to reconstruct 64x64 images that are one random colour each (plus
a little noise): the colour is all there is to learn, the case of the flat backgrounds that came out grey.
Printed per row: the training loss at the end (0.33 is what outputting grey for every image scores) and the
held-out mean-colour error (0-255; about 64 for grey outputs). Rows are NAME = g<norm groups>-lr<peak lr>, or
"nonorm-lr..." (every GroupNorm replaced by identity). Same seeds for every row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench import processor_name  # noqa: E402

ROWS = ("g32-lr1e-4", "g1-lr1e-4", "g1-lr5e-4", "g1-lr2e-3", "g32-lr2e-3", "nonorm-lr1e-4")


def flat_colours(n: int, generator: torch.Generator) -> torch.Tensor:
    colour = torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1
    return (colour + 0.05 * torch.randn(n, 3, 64, 64, generator=generator)).clamp(-1, 1)


def run_row(name: str, steps: int, batch: int = 16) -> dict:
    from nextscale.tokenizer import autoencoder
    from nextscale.tokenizer.vqvae import VQVAE, VQVAEConfig
    norm, lr = name.split("-lr")
    original = autoencoder.group_norm
    if norm == "nonorm":
        autoencoder.group_norm = lambda channels, groups=32: torch.nn.Identity()
    try:
        torch.manual_seed(0)
        vae = VQVAE(VQVAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=32, vocab_size=512,
                                patch_nums=(1, 2, 3, 4, 6, 8), norm_groups=1 if norm == "nonorm" else int(norm[1:])))
    finally:
        autoencoder.group_norm = original

    def reconstruct(x):
        return vae.decoder(vae.post_quant_conv(vae.quant_conv(vae.encoder(x))))

    opt = torch.optim.AdamW(vae.parameters(), lr=float(lr), betas=(0.9, 0.95), weight_decay=0.0)
    data = torch.Generator().manual_seed(1)
    held_out = flat_colours(64, torch.Generator().manual_seed(2))
    start = time.time()
    for _ in range(steps):
        x = flat_colours(batch, data)
        loss = (reconstruct(x) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        rec = reconstruct(held_out)
    error = (rec.mean((2, 3)) - held_out.mean((2, 3))).abs().mean().item() * 127.5
    return {"row": name, "steps": steps, "final_loss": loss.item(), "mean_colour_error": error,
            "seconds": time.time() - start}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--steps", type=int, default=100, help="training steps per row (default 100)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows (default {','.join(ROWS)})")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=Path("bench_results/colour_probe.json"), help="JSON results")
    a = p.parse_args(argv)
    rows = [r.strip() for r in a.rows.split(",") if r.strip()]
    for r in rows:
        norm, _, lr = r.partition("-lr")
        try:
            ok = (norm == "nonorm" or (norm.startswith("g") and int(norm[1:]) >= 1)) and float(lr) > 0
        except ValueError:
            ok = False
        if not ok:
            p.error(f"row {r!r} is not g<groups>-lr<lr> or nonorm-lr<lr> (e.g. g1-lr1e-4)")
    if a.steps < 1 or a.threads < 1:
        p.error("--steps and --threads must be >= 1")
    torch.set_num_threads(a.threads)
    results = []
    print(f"{processor_name()}, {a.threads} thread(s), {a.steps} steps per row")
    print(f"{'row':<16} {'loss':>7} {'mean-colour error':>18} {'s':>6}")
    for r in rows:
        res = run_row(r, a.steps)
        results.append(res)
        print(f"{r:<16} {res['final_loss']:>7.3f} {res['mean_colour_error']:>18.1f} {res['seconds']:>6.1f}", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"processor": processor_name(), "threads": a.threads,
                                 "torch": torch.__version__, "results": results}, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
