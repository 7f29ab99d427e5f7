"""scripts/colour_corpus.py: the shipped colour tokenizer's corpus, built from the two registry packages' archives
(here: small archives of the same layout)."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import colour_corpus  # noqa: E402


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def fake_sources(tmp_path: Path) -> tuple[Path, Path]:
    """An emoji-datasource-google-like .tgz (3 RGBA emoji, one other file) and a scikit-image-like wheel."""
    emoji = tmp_path / "emoji.tgz"
    with tarfile.open(emoji, "w:gz") as tar:
        for i, colour in enumerate([(255, 0, 0, 255), (0, 200, 0, 255), (0, 0, 255, 255)]):
            im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
            im.paste(colour, (16, 16, 48, 48))
            data = _png(im)
            info = tarfile.TarInfo(f"{colour_corpus.EMOJI_FOLDER}{i:04x}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("package/emoji.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"[]"))
    wheel = tmp_path / "scikit_image-0.26.0-cp311-none.whl"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(wheel, "w") as z:
        for name in colour_corpus.PHOTOS:
            z.writestr(f"skimage/data/{name}", _png(Image.fromarray(rng.integers(0, 256, (90, 120, 3), np.uint8))))
    return emoji, wheel


def test_the_corpus_is_written_from_the_archives_and_is_reproducible(tmp_path):
    emoji, wheel = fake_sources(tmp_path)
    assert len(colour_corpus.read_emoji(emoji)) == 3 and len(colour_corpus.read_photos(wheel)) == len(colour_corpus.PHOTOS)
    for out in ("a", "b"):
        assert colour_corpus.main(["--emoji", str(emoji), "--photos", str(wheel), "--out", str(tmp_path / out),
                                   "--emoji-repeats", "2", "--photo-crops", "5", "--size", "32"]) == 0
    assert not list(tmp_path.glob("*.partial"))  # written aside, renamed when complete
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 11 and {f.parts[0] for f in files} == {"emoji", "photo"}
    for f in files:
        a, b = (np.asarray(Image.open(tmp_path / d / f)) for d in ("a", "b"))
        assert a.shape == (32, 32, 3) and np.array_equal(a, b)
    # each emoji scene shows its emoji: the red square's scene has pixels of pure red
    red = np.asarray(Image.open(tmp_path / "a" / "emoji" / "emoji_0_00000.png")).astype(int)
    assert ((red[..., 0] > 240) & (red[..., 1] < 15) & (red[..., 2] < 15)).sum() >= 16


def test_missing_or_bad_sources_are_refused_in_one_line(tmp_path):
    emoji, wheel = fake_sources(tmp_path)
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not a zip")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.png").write_bytes(b"x")
    for args, message in ((["--emoji", str(tmp_path / "none.tgz"), "--photos", str(wheel)], "does not exist"),
                          (["--emoji", str(emoji), "--photos", str(bad)], "error:"),
                          (["--emoji", str(emoji), "--photos", str(wheel)], "exists: remove it first"),
                          (["--emoji", str(emoji), "--photos", str(wheel), "--photo-crops", "10000000"], "0..1000000")):
        run = subprocess.run([sys.executable, str(ROOT / "scripts" / "colour_corpus.py"), *args, "--out",
                              str(tmp_path / "out")], capture_output=True, text=True)
        assert run.returncode != 0 and message in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert (tmp_path / "out" / "keep.png").read_bytes() == b"x"  # an existing folder is left as it was
