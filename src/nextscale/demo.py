"""`make demo`: generate images with a small model and write them to a folder.

For now the models are the tiny reference models of `../shared/reference` (random weights: the
images are noise-like; the point is that the whole pipeline runs). The Fashion-MNIST model shipped
with the package replaces them once it is trained.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nextscale
from nextscale.images import make_grid, save_png


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nextscale.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo", help="output folder (default: demo)")
    parser.add_argument("--reference-dir", default=os.environ.get("NEXTSCALE_REFERENCE_DIR", "../shared/reference"),
                        help="folder with tiny_d2_vae.pth and tiny_d2_var.pth (default: $NEXTSCALE_REFERENCE_DIR "
                             "or ../shared/reference)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)

    ref = Path(args.reference_dir)
    if not (ref / "tiny_d2_var.pth").is_file():
        print(f"error: {ref / 'tiny_d2_var.pth'} not found; pass --reference-dir", file=sys.stderr)
        return 2
    vae = nextscale.load_vae(ref / "tiny_d2_vae.pth", patch_nums=(1, 2, 3, 4))
    var = nextscale.load_var(ref / "tiny_d2_var.pth", vae=vae, patch_nums=(1, 2, 3, 4))
    labels = [c for c in range(var.num_classes) for _ in range(4)]
    out = nextscale.sample(var, labels, seed=args.seed, cfg=1.5, top_k=20, top_p=0.9, progress=True)
    path = save_png(make_grid(out.images, ncols=8), Path(args.out) / "samples.png")
    print(f"wrote {path.resolve()} ({len(labels)} samples of the tiny reference model, {var.num_classes} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
