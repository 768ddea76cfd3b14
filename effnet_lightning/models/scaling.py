"""Compound scaling for EfficientNet: every number the family is built from.

Pure Python (no torch import), so data transforms and CLI defaults can read the
variant table without loading the network code.

    python -m effnet_lightning.tools.variant_table            # resolution, params, GMACs of every variant
    python -m effnet_lightning.tools.variant_table --phi 1.5  # ... plus a custom compound-scaled variant

The published B1-B7 coefficients were rounded by hand and differ from the formula, so the
table is used for b0-b7 and the formula (depth alpha^phi, width beta^phi, resolution
gamma^phi) only for custom phi.
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
    """One row of the B0 baseline (paper, Table 1); stride applies to the first block only."""

    expand_ratio: int
    kernel_size: int
    stride: int
    out_channels: int
    repeats: int


B0_ROWS: tuple[BlockRow, ...] = (
    BlockRow(expand_ratio=1, kernel_size=3, stride=1, out_channels=16, repeats=1),
    BlockRow(expand_ratio=6, kernel_size=3, stride=2, out_channels=24, repeats=2),
    BlockRow(expand_ratio=6, kernel_size=5, stride=2, out_channels=40, repeats=2),
    BlockRow(expand_ratio=6, kernel_size=3, stride=2, out_channels=80, repeats=3),
    BlockRow(expand_ratio=6, kernel_size=5, stride=1, out_channels=112, repeats=3),
    BlockRow(expand_ratio=6, kernel_size=5, stride=2, out_channels=192, repeats=4),
    BlockRow(expand_ratio=6, kernel_size=3, stride=1, out_channels=320, repeats=1),
)


@dataclass(frozen=True)
class Variant:
    """Scaling coefficients of one family member.

    `lite` selects EfficientNet-Lite: ReLU6, no SE, stem/head channels and the first and
    last row's repeats left unscaled.
    """

    name: str
    width: float
    depth: float
    resolution: int
    dropout: float
    lite: bool = False


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


def round_channels(channels: int, width: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """Scale a channel count by `width`, to a multiple of `divisor`, never down by >10%."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
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
    """Look a variant up by name: b0-b7, lite0-lite4, `phi<value>` (e.g. `phi1.5`, the paper's
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
    """One MBConv block with final integer sizes: blocks never see multipliers."""

    row: int  # of the block table
    index: int  # within its row
    in_channels: int
    out_channels: int
    expand_ratio: int
    kernel_size: int
    stride: int
    se_channels: int  # 0: no squeeze-and-excitation

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels

    @property
    def hidden_channels(self) -> int:
        return self.in_channels * self.expand_ratio


@dataclass(frozen=True)
class Architecture:
    stem_channels: int
    blocks: tuple[BlockConfig, ...]
    head_channels: int
    num_rows: int


def build_architecture(variant: str | Variant, se: bool = True, rows: tuple[BlockRow, ...] = B0_ROWS) -> Architecture:
    """Apply a variant's width and depth to the B0 rows once, giving every block's sizes.

    Squeeze-and-excitation is on unless `se` is False or the variant is Lite."""
    v = get_variant(variant)
    use_se = se and not v.lite
    last = len(rows) - 1
    stem = STEM_CHANNELS if v.lite else round_channels(STEM_CHANNELS, v.width)
    head = HEAD_CHANNELS if v.lite else round_channels(HEAD_CHANNELS, v.width)
    blocks: list[BlockConfig] = []
    in_channels = stem
    for r, row in enumerate(rows):
        out_channels = round_channels(row.out_channels, v.width)
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
                    se_channels=max(1, int(in_channels * SE_RATIO)) if use_se else 0,
                )
            )
            in_channels = out_channels
    return Architecture(stem_channels=stem, blocks=tuple(blocks), head_channels=head, num_rows=len(rows))


def drop_path_rates(num_blocks: int, drop_path_rate: float = DROP_PATH_RATE) -> list[float]:
    """Stochastic depth ramps linearly with the global block index: rate * i / N."""
    return [drop_path_rate * i / num_blocks for i in range(num_blocks)]


def with_resolution(variant: Variant, resolution: int) -> Variant:
    return replace(variant, resolution=int(resolution))
