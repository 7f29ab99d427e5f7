"""The Inception-v3 network of the standard FID (the TensorFlow `inception-2015-12-05` graph), for FID, IS and P/R.

We build the module; the user supplies the weights: pytorch-fid's port of that graph,
`pt_inception-2015-12-05-6726825d.pth` (we cannot download it). Our parameter names follow that file
(`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`, ..., `fc.weight` of 1008 x 2048), so it
loads strictly. What differs from the Inception-v3 of the paper, as in that graph:
- 1008 output classes;
- the average pools inside blocks ignore the zero padding (TensorFlow's SAME average pooling);
- the last block (Mixed_7c) pools its fourth branch with a max pool, not an average pool.
Inputs in [0, 1] are resized to 299x299 (bilinear, like pytorch-fid) and mapped to [-1, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

INCEPTION_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FEATURE_DIM = 2048
NUM_LOGITS = 1008


class ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, TensorFlow's), ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def avg_pool_same(x):
    """3x3 stride-1 average over the valid pixels only (padding not counted), as TensorFlow pools."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


# Kernel shapes of the factorised convolutions, with the padding that keeps the spatial size.
ROW, ROW_PAD = (1, 7), (0, 3)
COL, COL_PAD = (7, 1), (3, 0)


class Block35(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avgpool -> 1x1."""

    def __init__(self, in_ch: int, pool_ch: int):
        super().__init__()
        self.branch1x1 = ConvBN(in_ch, 64, 1)
        self.branch5x5_1 = ConvBN(in_ch, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(in_ch, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(in_ch, pool_ch, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(avg_pool_same(x))
        return torch.cat([a, b, c, d], dim=1)


class Reduce35to17(nn.Module):
    """Mixed_6a: stride-2 3x3 | 1x1 -> 3x3 -> stride-2 3x3 | stride-2 max pool."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.branch3x3 = ConvBN(in_ch, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(in_ch, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], dim=1)


class Block17(nn.Module):
    """17x17 block (Mixed_6b..e) with 1x7 / 7x1 factorised convolutions of `mid` channels."""

    def __init__(self, in_ch: int, mid: int):
        super().__init__()
        self.branch1x1 = ConvBN(in_ch, 192, 1)
        self.branch7x7_1 = ConvBN(in_ch, mid, 1)
        self.branch7x7_2 = ConvBN(mid, mid, ROW, padding=ROW_PAD)
        self.branch7x7_3 = ConvBN(mid, 192, COL, padding=COL_PAD)
        self.branch7x7dbl_1 = ConvBN(in_ch, mid, 1)
        self.branch7x7dbl_2 = ConvBN(mid, mid, COL, padding=COL_PAD)
        self.branch7x7dbl_3 = ConvBN(mid, mid, ROW, padding=ROW_PAD)
        self.branch7x7dbl_4 = ConvBN(mid, mid, COL, padding=COL_PAD)
        self.branch7x7dbl_5 = ConvBN(mid, 192, ROW, padding=ROW_PAD)
        self.branch_pool = ConvBN(in_ch, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(avg_pool_same(x))
        return torch.cat([a, b, c, d], dim=1)


class Reduce17to8(nn.Module):
    """Mixed_7a: 1x1 -> stride-2 3x3 | 1x1 -> 1x7 -> 7x1 -> stride-2 3x3 | stride-2 max pool."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(in_ch, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(in_ch, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, ROW, padding=ROW_PAD)
        self.branch7x7x3_3 = ConvBN(192, 192, COL, padding=COL_PAD)
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], dim=1)


class Block8(nn.Module):
    """8x8 block (Mixed_7b/c): the 3x3 branches fork into parallel 1x3 and 3x1 convolutions."""

    def __init__(self, in_ch: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = ConvBN(in_ch, 320, 1)
        self.branch3x3_1 = ConvBN(in_ch, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(in_ch, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(in_ch, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], dim=1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], dim=1)
        pooled = avg_pool_same(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([a, b, c, self.branch_pool(pooled)], dim=1)


class FIDInceptionV3(nn.Module):
    """Images (B, 3, H, W) in [0, 1] -> {'pool': (B, 2048), 'logits': (B, 1008), 'logits_unbiased': (B, 1008)}.

    'pool' are the FID features (and precision/recall's). 'logits_unbiased' leaves out the bias of the last
    layer: the original Inception Score code (and ADM's evaluator) take the softmax of pool @ W, no bias.
    """

    def __init__(self):
        super().__init__()
        # Stem: 299 -> 149 -> 147 -> 147 -> (max pool) 73 -> 73 -> 71 -> (max pool) 35.
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = Block35(192, pool_ch=32)   # -> 256 channels
        self.Mixed_5c = Block35(256, pool_ch=64)   # -> 288
        self.Mixed_5d = Block35(288, pool_ch=64)   # -> 288
        self.Mixed_6a = Reduce35to17(288)          # -> 768, 17x17
        self.Mixed_6b = Block17(768, mid=128)
        self.Mixed_6c = Block17(768, mid=160)
        self.Mixed_6d = Block17(768, mid=160)
        self.Mixed_6e = Block17(768, mid=192)
        self.Mixed_7a = Reduce17to8(768)           # -> 1280, 8x8
        self.Mixed_7b = Block8(1280, pool="avg")   # -> 2048
        self.Mixed_7c = Block8(2048, pool="max")   # -> 2048
        self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS)

    def forward(self, images_BCHW: torch.Tensor) -> dict[str, torch.Tensor]:
        if images_BCHW.ndim != 4 or images_BCHW.shape[1] != 3:
            raise ValueError(f"Inception takes (B, 3, H, W) images in [0, 1], got shape {tuple(images_BCHW.shape)}")
        x = F.interpolate(images_BCHW.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool_BD = x.mean(dim=(2, 3))
        return {"pool": pool_BD, "logits": self.fc(pool_BD), "logits_unbiased": F.linear(pool_BD, self.fc.weight)}


def load_inception(path: str | os.PathLike, device: torch.device | str | None = None) -> FIDInceptionV3:
    """FIDInceptionV3 in eval mode with the weights of `path` (pytorch-fid's .pth, or a .safetensors of it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file not found: {path} (the standard FID weights are "
                                f"pytorch-fid's {INCEPTION_WEIGHTS_NAME})")
    from nextscale.model_folder import CheckpointError, read_state_dict
    try:
        state = read_state_dict(path)
    except CheckpointError as e:  # a truncated or foreign file: say which file, not a pickle traceback
        raise ValueError(f"cannot read Inception weights from {path}: {e}") from None
    model = FIDInceptionV3()
    expected = model.state_dict()
    # Files written before PyTorch 0.4.1 have no batch-norm step counters; they play no part in inference.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state.update({k: v for k, v in expected.items() if k.endswith("num_batches_tracked")})
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        details = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                            for what, keys in (("missing", missing), ("unexpected", unexpected),
                                               ("wrong shape", wrong_shape)) if keys)
        raise ValueError(f"{path} is not the FID Inception weights ({INCEPTION_WEIGHTS_NAME}): {details}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval() if device is not None else model.eval()
