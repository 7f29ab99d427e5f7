"""docs/cca/lambda_sweep.png from docs/cca/results.json (benchmarks/fmnist_cca.py's output):
    python docs/cca/plot_sweep.py"""
import json
import re
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

here = Path(__file__).parent
models = json.loads((here / "results.json").read_text())["models"]
sweep = sorted(((float(m.group(1)), r) for n, r in models.items() if (m := re.fullmatch(r"cca_l(\d+)", n))
                and r["cfg"] == 0), key=lambda item: item[0])
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for ax, key, label in ((axes[0], "frechet_distance", "Fréchet distance (lower is better)"),
                       (axes[1], "class_accuracy", "class accuracy")):
    for tag, style in (("project", "o-"), ("second", "s--")):
        ax.plot([l for l, _ in sweep], [r["scores"][tag][key] for _, r in sweep], style, label=f"CCA, cfg 0 ({tag} classifier)")
        for name, colour in (("shipped_cfg3", "tab:green"), ("shipped_cfg0", "tab:red")):
            if name in models:
                ax.axhline(models[name]["scores"][tag][key], color=colour, ls=":" if tag == "second" else "-", lw=1,
                           label=f"shipped, cfg {models[name]['cfg']:g} ({tag})")
    ax.set_xscale("log")
    ax.set_xticks([l for l, _ in sweep], [f"{l:g}" for l, _ in sweep])
    ax.minorticks_off()
    ax.set_xlabel("λ (cca.negative_weight), 200 steps at lr 2e-5")
    ax.set_title(label)
axes[1].legend(fontsize=7, loc="lower right")
fig.tight_layout()
fig.savefig(here / "lambda_sweep.png", dpi=110)
print("wrote", here / "lambda_sweep.png")
