"""Compound scaling for EfficientNet: every number the family is built from, V1 and V2.

Pure Python (no torch import), so data transforms and CLI defaults can read the
variant table without loading the network code.

    python -m effnet_lightning.tools.variant_table            # resolution, params, GMACs of every variant
    python -m effnet_lightning.tools.variant_table --phi 1.5  # ... plus a custom compound-scaled variant

The published B1-B7 coefficients were rounded by hand and differ from the formula, so the
table is used for b0-b7 and the formula (depth alpha^phi, width beta^phi, resolution
gamma^phi) only for custom phi.

EfficientNetV2 (Tan & Le, 2021) is built from the same kind of table: its own block rows, with
Fused-MBConv (one regular kxk convolution in place of the 1x1 expansion and the depthwise
convolution) in the early rows, a smaller training size than evaluation size, and the
official code's width/depth scaling of its base rows for v2-b0 to v2-b3.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # the paper's grid-searched depth, width, resolution bases
DROP_PATH_RATE = 0.2  # stochastic depth at the last block, every variant
BASE_RESOLUTION = 224
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
SE_RATIO = 0.25  # of the block's input channels, not the expanded ones
CHANNEL_DIVISOR = 8


@dataclass(frozen=True)
class BlockRow:
    """One row of a block table (B0's: the paper's Table 1); stride applies to the first block
    only. `fused`: Fused-MBConv (EfficientNetV2's early rows: no squeeze-and-excitation)."""

    expand_ratio: int
    kernel_size: int
    stride: int
    out_channels: int
    repeats: int
    fused: bool = False


B0_ROWS: tuple[BlockRow, ...] = (
    BlockRow(expand_ratio=1, kernel_size=3, stride=1, out_channels=16, repeats=1),
    BlockRow(expand_ratio=6, kernel_size=3, stride=2, out_channels=24, repeats=2),
    BlockRow(expand_ratio=6, kernel_size=5, stride=2, out_channels=40, repeats=2),
    BlockRow(expand_ratio=6, kernel_size=3, stride=2, out_channels=80, repeats=3),
    BlockRow(expand_ratio=6, kernel_size=5, stride=1, out_channels=112, repeats=3),
    BlockRow(expand_ratio=6, kernel_size=5, stride=2, out_channels=192, repeats=4),
    BlockRow(expand_ratio=6, kernel_size=3, stride=1, out_channels=320, repeats=1),
)


def _fused(expand_ratio: int, stride: int, out_channels: int, repeats: int) -> BlockRow:
    return BlockRow(expand_ratio, 3, stride, out_channels, repeats, fused=True)


def _mbconv(expand_ratio: int, stride: int, out_channels: int, repeats: int) -> BlockRow:
    return BlockRow(expand_ratio, 3, stride, out_channels, repeats)


# EfficientNetV2's tables (the official effnetv2_configs.py; torchvision's and timm's are the
# same): every kernel is 3x3.
V2_BASE_ROWS = (  # scaled by width and depth for v2-b0 to v2-b3
    _fused(1, 1, 16, 1),
    _fused(4, 2, 32, 2),
    _fused(4, 2, 48, 2),
    _mbconv(4, 2, 96, 3),
    _mbconv(6, 1, 112, 5),
    _mbconv(6, 2, 192, 8),
)
V2_S_ROWS = (
    _fused(1, 1, 24, 2),
    _fused(4, 2, 48, 4),
    _fused(4, 2, 64, 4),
    _mbconv(4, 2, 128, 6),
    _mbconv(6, 1, 160, 9),
    _mbconv(6, 2, 256, 15),
)
V2_M_ROWS = (
    _fused(1, 1, 24, 3),
    _fused(4, 2, 48, 5),
    _fused(4, 2, 80, 5),
    _mbconv(4, 2, 160, 7),
    _mbconv(6, 1, 176, 14),
    _mbconv(6, 2, 304, 18),
    _mbconv(6, 1, 512, 5),
)
V2_L_ROWS = (
    _fused(1, 1, 32, 4),
    _fused(4, 2, 64, 7),
    _fused(4, 2, 96, 7),
    _mbconv(4, 2, 192, 10),
    _mbconv(6, 1, 224, 19),
    _mbconv(6, 2, 384, 25),
    _mbconv(6, 1, 640, 7),
)
V2_XL_ROWS = (
    _fused(1, 1, 32, 4),
    _fused(4, 2, 64, 8),
    _fused(4, 2, 96, 8),
    _mbconv(4, 2, 192, 16),
    _mbconv(6, 1, 256, 24),
    _mbconv(6, 2, 512, 32),
    _mbconv(6, 1, 640, 8),
)


@dataclass(frozen=True)
class Variant:
    """Scaling coefficients of one family member.

    `resolution`: the size it is evaluated at (and, unless `train_resolution` says otherwise,
    trained at). `lite` selects EfficientNet-Lite: ReLU6, no SE, stem/head channels and the
    first and last row's repeats left unscaled. `rows` and `stem_channels`: the block table and
    stem width that `width` and `depth` scale (B0's for V1). `round_limit`: channels round down
    to a multiple of 8 by at most this fraction (V1's 0.9 never shrinks them by more than 10%;
    the official V2 code rounds to the nearest multiple, 0).
    """

    name: str
    width: float
    depth: float
    resolution: int
    dropout: float
    lite: bool = False
    rows: tuple[BlockRow, ...] = B0_ROWS
    stem_channels: int = STEM_CHANNELS
    train_resolution: int | None = None
    round_limit: float = 0.9

    @property
    def v2(self) -> bool:
        return any(row.fused for row in self.rows)


def _v2(name, rows, stem, train, evaluate, dropout, width=1.0, depth=1.0) -> Variant:
    """An EfficientNetV2 member: trained at `train` px, evaluated at `evaluate` px."""
    return Variant(
        name, width, depth, evaluate, dropout, rows=rows, stem_channels=stem, train_resolution=train, round_limit=0.0
    )


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("b0", width=1.0, depth=1.0, resolution=224, dropout=0.2),
        Variant("b1", width=1.0, depth=1.1, resolution=240, dropout=0.2),
        Variant("b2", width=1.1, depth=1.2, resolution=260, dropout=0.3),
        Variant("b3", width=1.2, depth=1.4, resolution=300, dropout=0.3),
        Variant("b4", width=1.4, depth=1.8, resolution=380, dropout=0.4),
        Variant("b5", width=1.6, depth=2.2, resolution=456, dropout=0.4),
        Variant("b6", width=1.8, depth=2.6, resolution=528, dropout=0.5),
        Variant("b7", width=2.0, depth=3.1, resolution=600, dropout=0.5),
        # Beyond the paper's table: TF's B8 (AdvProp) and L2 (NoisyStudent).
        Variant("b8", width=2.2, depth=3.6, resolution=672, dropout=0.5),
        Variant("l2", width=4.3, depth=5.3, resolution=800, dropout=0.5),
        Variant("lite0", width=1.0, depth=1.0, resolution=224, dropout=0.2, lite=True),
        Variant("lite1", width=1.0, depth=1.1, resolution=240, dropout=0.2, lite=True),
        Variant("lite2", width=1.1, depth=1.2, resolution=260, dropout=0.3, lite=True),
        Variant("lite3", width=1.2, depth=1.4, resolution=280, dropout=0.3, lite=True),
        Variant("lite4", width=1.4, depth=1.8, resolution=300, dropout=0.3, lite=True),
        _v2("v2-b0", V2_BASE_ROWS, 32, train=192, evaluate=224, dropout=0.2),
        _v2("v2-b1", V2_BASE_ROWS, 32, train=192, evaluate=240, dropout=0.2, depth=1.1),
        _v2("v2-b2", V2_BASE_ROWS, 32, train=208, evaluate=260, dropout=0.3, width=1.1, depth=1.2),
        _v2("v2-b3", V2_BASE_ROWS, 32, train=240, evaluate=300, dropout=0.3, width=1.2, depth=1.4),
        _v2("v2-s", V2_S_ROWS, 24, train=300, evaluate=384, dropout=0.2),
        _v2("v2-m", V2_M_ROWS, 24, train=384, evaluate=480, dropout=0.3),
        _v2("v2-l", V2_L_ROWS, 32, train=384, evaluate=480, dropout=0.4),
        _v2("v2-xl", V2_XL_ROWS, 32, train=384, evaluate=512, dropout=0.4),
        # timm's EfficientNetV2-Tiny (efficientnetv2_rw_t): V2-S's table at width 0.8, depth 0.9,
        # rounded as V1 rounds; not in the paper
        replace(
            _v2("v2-rw-t", V2_S_ROWS, 24, train=224, evaluate=288, dropout=0.2, width=0.8, depth=0.9), round_limit=0.9
        ),
    )
}

_NUMBER = r"(-?\d+(?:\.\d+)?)"
# phi1.5, or with its own coefficients: phi1_a1.3_b1.05_g1.2
_PHI_NAME = re.compile(rf"^phi{_NUMBER}(?:_a{_NUMBER}_b{_NUMBER}_g{_NUMBER})?$")


def phi_name(phi: float, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA) -> str:
    """The variant name `get_variant` reads back: phi<phi>, plus _a<alpha>_b<beta>_g<gamma>
    unless the coefficients are the paper's."""
    if (alpha, beta, gamma) == (ALPHA, BETA, GAMMA):
        return f"phi{phi:g}"
    return f"phi{phi:g}_a{alpha:g}_b{beta:g}_g{gamma:g}"


def round_channels(channels: int, width: float, divisor: int = CHANNEL_DIVISOR, round_limit: float = 0.9) -> int:
    """Scale a channel count by `width`, to the nearest multiple of `divisor`, but never down by
    more than 1 - `round_limit` (10% by default)."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < round_limit * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    return math.ceil(repeats * depth)


def from_phi(
    phi: float, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA, name: str | None = None
) -> Variant:
    """A custom compound-scaled variant: depth alpha^phi, width beta^phi, resolution gamma^phi.

    Resolution rounds to a multiple of 8 (phi=0 gives B0's 224); dropout follows the table's
    trend, 0.2 at B0 rising 0.05 per unit of phi to at most 0.5.
    """
    if min(alpha, beta, gamma) < 1.0:
        raise ValueError(f"alpha, beta, gamma must be >= 1, got {alpha}, {beta}, {gamma}")
    resolution = round(BASE_RESOLUTION * gamma**phi / 8) * 8
    dropout = min(0.5, max(0.2, 0.2 + 0.05 * phi))
    return Variant(
        name=name or phi_name(phi, alpha, beta, gamma),
        width=beta**phi,
        depth=alpha**phi,
        resolution=resolution,
        dropout=round(dropout, 4),
    )


def custom(width: float, depth: float, resolution: int, dropout: float = 0.2, name: str = "custom") -> Variant:
    """A variant from explicit width / depth / resolution multipliers."""
    if width <= 0 or depth <= 0 or resolution <= 0:
        raise ValueError(f"width, depth and resolution must be positive, got {width}, {depth}, {resolution}")
    return Variant(name=name, width=width, depth=depth, resolution=int(resolution), dropout=dropout)


def get_variant(variant: str | Variant) -> Variant:
    """Look a variant up by name: b0-b8, l2, lite0-lite4, v2-b0 to v2-b3, v2-s, v2-m, v2-l,
    v2-xl, v2-rw-t, `phi<value>` (e.g. `phi1.5`, the paper's
    coefficients) or `phi<value>_a<alpha>_b<beta>_g<gamma>` (e.g. `phi1_a1.3_b1.05_g1.2`)."""
    if isinstance(variant, Variant):
        return variant
    key = str(variant).strip().lower()
    if key in VARIANTS:
        return VARIANTS[key]
    match = _PHI_NAME.match(key)
    if match:
        phi, alpha, beta, gamma = match.groups()
        if alpha is None:
            return from_phi(float(phi))
        return from_phi(float(phi), float(alpha), float(beta), float(gamma))
    raise ValueError(
        f"unknown EfficientNet variant {variant!r}: choose one of {', '.join(VARIANTS)}, phi<value> (e.g. phi1.5) "
        f"or phi<value>_a<alpha>_b<beta>_g<gamma> (e.g. phi1_a1.3_b1.05_g1.2)"
    )


@dataclass(frozen=True)
class BlockConfig:
    """One MBConv or Fused-MBConv block with final integer sizes: blocks never see multipliers."""

    row: int  # of the block table
    index: int  # within its row
    in_channels: int
    out_channels: int
    expand_ratio: int
    kernel_size: int
    stride: int
    se_channels: int  # 0: no squeeze-and-excitation
    fused: bool = False  # Fused-MBConv

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels

    @property
    def hidden_channels(self) -> int:
        """The expanded map's channels (a Fused-MBConv without expansion has only its output)."""
        if self.fused and self.expand_ratio == 1:
            return self.out_channels
        return self.in_channels * self.expand_ratio


@dataclass(frozen=True)
class Architecture:
    stem_channels: int
    blocks: tuple[BlockConfig, ...]
    head_channels: int
    num_rows: int


def build_architecture(variant: str | Variant, se: bool = True) -> Architecture:
    """Apply a variant's width and depth to its block rows once, giving every block's sizes.

    Squeeze-and-excitation is on unless `se` is False, the variant is Lite or the block is a
    Fused-MBConv."""
    v = get_variant(variant)
    rows = v.rows
    use_se = se and not v.lite
    last = len(rows) - 1

    def channels(n: int) -> int:
        return round_channels(n, v.width, round_limit=v.round_limit)

    stem = v.stem_channels if v.lite else channels(v.stem_channels)
    head = HEAD_CHANNELS if v.lite else channels(HEAD_CHANNELS)
    blocks: list[BlockConfig] = []
    in_channels = stem
    for r, row in enumerate(rows):
        out_channels = channels(row.out_channels)
        fixed_depth = v.lite and r in (0, last)
        repeats = row.repeats if fixed_depth else round_repeats(row.repeats, v.depth)
        for i in range(repeats):
            blocks.append(
                BlockConfig(
                    row=r,
                    index=i,
                    in_channels=in_channels,
                    out_channels=out_channels,
                    expand_ratio=row.expand_ratio,
                    kernel_size=row.kernel_size,
                    stride=row.stride if i == 0 else 1,
                    se_channels=max(1, int(in_channels * SE_RATIO)) if use_se and not row.fused else 0,
                    fused=row.fused,
                )
            )
            in_channels = out_channels
    return Architecture(stem_channels=stem, blocks=tuple(blocks), head_channels=head, num_rows=len(rows))


def drop_path_rates(num_blocks: int, drop_path_rate: float = DROP_PATH_RATE) -> list[float]:
    """Stochastic depth ramps linearly with the global block index: rate * i / N."""
    return [drop_path_rate * i / num_blocks for i in range(num_blocks)]


def with_resolution(variant: Variant, resolution: int) -> Variant:
    return replace(variant, resolution=int(resolution))
