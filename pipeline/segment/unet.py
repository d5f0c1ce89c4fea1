"""U-Net for lumen segmentation (3-D, and its 2-D form), in PyTorch.

The encoder-decoder of Ronneberger et al. (2015) and Çiçek et al. (2016, 3-D), as nnU-Net
configures it (Isensee et al. 2021): per stage two convolutions (3 x 3 x 3), each followed by
instance normalisation and a leaky ReLU (slope 0.01); strided convolutions down, transposed
convolutions up, skip connections by concatenation. At the bottleneck a dilated context block
(three parallel 3 x 3 x 3 convolutions with dilation 1, 2 and 4, summed, as in the context
modules of Yu & Koltun 2016 and DeepLab's ASPP) widens the receptive field without another
stage. With ``deep_supervision`` the forward pass in training mode also returns the logits of
the coarser decoder stages (nnU-Net's deep supervision), finest first.

torch is imported here only: ``import pipeline.segment`` stays free of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["UNetConfig", "UNet", "count_parameters"]


@dataclass(frozen=True)
class UNetConfig:
    """The network's shape.

    ``dims`` 2 or 3; ``in_channels`` image channels; ``n_classes`` output classes (background
    included: 2 for lumen / not lumen); ``width`` channels of the first stage, doubled per stage
    up to ``max_width``; ``depth`` number of down-samplings (the patch size must be divisible by
    ``2 ** depth``); ``context`` the dilated block at the bottleneck; ``deep_supervision``.
    """

    dims: int = 3
    in_channels: int = 1
    n_classes: int = 2
    width: int = 8
    depth: int = 3
    max_width: int = 128
    context: bool = True
    deep_supervision: bool = False

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {self.dims!r}")
        for name in ("in_channels", "width", "depth", "max_width"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2 (background included), got {self.n_classes!r}")

    def to_json_dict(self) -> dict:
        return asdict(self)

    @property
    def divisor(self) -> int:
        """Every spatial size of the input must be a multiple of this."""
        return 2 ** self.depth


def _layers(dims: int):
    if dims == 3:
        return nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d
    return nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d


class _ConvBlock(nn.Module):
    """Two (convolution, instance norm, leaky ReLU); the first may stride (down-sampling)."""

    def __init__(self, dims: int, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        conv, _, norm = _layers(dims)
        self.body = nn.Sequential(
            conv(c_in, c_out, 3, stride=stride, padding=1), norm(c_out, affine=True), nn.LeakyReLU(0.01, True),
            conv(c_out, c_out, 3, padding=1), norm(c_out, affine=True), nn.LeakyReLU(0.01, True),
        )

    def forward(self, x):
        return self.body(x)


class _Context(nn.Module):
    """Dilated context block: the sum of 3^d convolutions with dilation 1, 2 and 4 (padding keeps
    the size), instance norm and leaky ReLU, added to its input (residual)."""

    RATES = (1, 2, 4)

    def __init__(self, dims: int, c: int):
        super().__init__()
        conv, _, norm = _layers(dims)
        self.branches = nn.ModuleList(conv(c, c, 3, padding=r, dilation=r) for r in self.RATES)
        self.post = nn.Sequential(norm(c, affine=True), nn.LeakyReLU(0.01, True))

    def forward(self, x):
        return x + self.post(sum(b(x) for b in self.branches))


class UNet(nn.Module):
    """U-Net (see the module docstring). ``forward(x)`` takes (N, C, [D,] H, W) and returns the
    logits (N, n_classes, [D,] H, W); in training mode with deep supervision a list of logits,
    full resolution first, then each coarser decoder stage."""

    def __init__(self, config: UNetConfig | None = None, **kwargs):
        super().__init__()
        self.config = cfg = config or UNetConfig(**kwargs)
        conv, up, _ = _layers(cfg.dims)
        widths = [min(cfg.width * 2 ** k, cfg.max_width) for k in range(cfg.depth + 1)]
        self.encoder = nn.ModuleList([_ConvBlock(cfg.dims, cfg.in_channels, widths[0])])
        for k in range(1, cfg.depth + 1):
            self.encoder.append(_ConvBlock(cfg.dims, widths[k - 1], widths[k], stride=2))
        self.context = _Context(cfg.dims, widths[-1]) if cfg.context else nn.Identity()
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for k in range(cfg.depth, 0, -1):
            self.up.append(up(widths[k], widths[k - 1], 2, stride=2))
            self.decoder.append(_ConvBlock(cfg.dims, 2 * widths[k - 1], widths[k - 1]))
            self.heads.append(conv(widths[k - 1], cfg.n_classes, 1))

    def forward(self, x):
        if any(s % self.config.divisor for s in x.shape[2:]):
            raise ValueError(f"input size {tuple(x.shape[2:])} is not a multiple of {self.config.divisor} "
                             f"(2 ** depth, depth {self.config.depth}): pad or crop the patch")
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = self.context(skips.pop())
        outs = []
        for up, block, head in zip(self.up, self.decoder, self.heads):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
            outs.append(head(x))
        if self.config.deep_supervision and self.training:
            return outs[::-1]
        return outs[-1]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
