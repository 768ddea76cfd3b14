"""Compound scaling: the variant table, rounding, the B0 block rows, custom phi."""

import subprocess
import sys

import pytest

from effnet_lightning.models import scaling
from effnet_lightning.models.scaling import (
    VARIANTS,
    build_architecture,
    from_phi,
    get_variant,
    round_channels,
    round_repeats,
)


def test_scaling_module_does_not_import_torch():
    code = "import sys, effnet_lightning.models.scaling; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "channels, width, expected",
    [(32, 1.0, 32), (32, 1.1, 32), (32, 1.2, 40), (1280, 1.4, 1792), (16, 1.8, 32), (320, 2.0, 640), (24, 1.1, 24)],
)
def test_round_channels(channels, width, expected):
    assert round_channels(channels, width) == expected


def test_round_channels_never_shrinks_more_than_ten_percent():
    for c in (8, 16, 24, 40, 80, 112, 192, 320, 1280):
        for w in (0.5, 0.75, 1.1, 1.3, 1.7, 2.3):
            r = round_channels(c, w)
            assert r % 8 == 0 and r >= 0.9 * c * w


def test_round_repeats_is_ceiling():
    assert [round_repeats(n, 3.1) for n in (1, 2, 3, 4)] == [4, 7, 10, 13]
    assert round_repeats(3, 1.0) == 3


def test_table_holds_the_published_coefficients():
    got = {n: (v.width, v.depth, v.resolution, v.dropout) for n, v in VARIANTS.items() if not v.lite and not v.v2}
    assert got == {
        "b0": (1.0, 1.0, 224, 0.2),
        "b1": (1.0, 1.1, 240, 0.2),
        "b2": (1.1, 1.2, 260, 0.3),
        "b3": (1.2, 1.4, 300, 0.3),
        "b4": (1.4, 1.8, 380, 0.4),
        "b5": (1.6, 2.2, 456, 0.4),
        "b6": (1.8, 2.6, 528, 0.5),
        "b7": (2.0, 3.1, 600, 0.5),
        # TF's efficientnet_builder.py, for the AdvProp / NoisyStudent weights
        "b8": (2.2, 3.6, 672, 0.5),
        "l2": (4.3, 5.3, 800, 0.5),
    }


@pytest.mark.parametrize("name, blocks, stem, head", [("b0", 16, 32, 1280), ("b3", 26, 40, 1536), ("b7", 55, 64, 2560)])
def test_architecture_sizes(name, blocks, stem, head):
    arch = build_architecture(name)
    assert (len(arch.blocks), arch.stem_channels, arch.head_channels) == (blocks, stem, head)
    first = arch.blocks[0]
    assert first.in_channels == stem and first.expand_ratio == 1 and first.se_channels == stem // 4
    # stride only on the first block of a row; channels chain block to block
    for prev, cur in zip(arch.blocks, arch.blocks[1:]):
        assert cur.in_channels == prev.out_channels
        assert cur.stride == 1 or cur.index == 0


def test_b0_blocks_follow_table_1():
    arch = build_architecture("b0")
    per_row = [sum(b.row == r for b in arch.blocks) for r in range(7)]
    assert per_row == [1, 2, 2, 3, 3, 4, 1]
    assert [b.out_channels for b in arch.blocks if b.index == 0] == [16, 24, 40, 80, 112, 192, 320]
    assert [b.kernel_size for b in arch.blocks if b.index == 0] == [3, 3, 5, 3, 5, 5, 3]
    assert [b.stride for b in arch.blocks if b.index == 0] == [1, 2, 2, 2, 1, 2, 1]


def test_lite_keeps_stem_head_and_end_stages_unscaled():
    arch = build_architecture("lite4")
    per_row = [sum(b.row == r for b in arch.blocks) for r in range(7)]
    assert per_row == [1, 4, 4, 6, 6, 8, 1]  # ceil(n * 1.8) except first and last
    assert arch.stem_channels == 32 and arch.head_channels == 1280
    assert all(b.se_channels == 0 for b in arch.blocks)
    assert arch.blocks[-1].out_channels == round_channels(320, 1.4)


def test_se_can_be_switched_off():
    assert all(b.se_channels == 0 for b in build_architecture("b0", se=False).blocks)


def test_phi_zero_is_b0_and_phi_follows_the_formula():
    v0 = from_phi(0)
    b0 = VARIANTS["b0"]
    assert (v0.width, v0.depth, v0.resolution, v0.dropout) == (b0.width, b0.depth, b0.resolution, b0.dropout)
    assert build_architecture(v0) == build_architecture("b0")
    v2 = from_phi(2, alpha=1.2, beta=1.1, gamma=1.15)
    assert v2.depth == pytest.approx(1.44) and v2.width == pytest.approx(1.21)
    assert v2.resolution == 296  # 224 * 1.15^2 = 296.2, to a multiple of 8


def test_get_variant_names_and_errors():
    assert get_variant("B3") is VARIANTS["b3"]
    assert get_variant("phi1.5").depth == pytest.approx(1.2**1.5)
    custom = get_variant("phi1_a1.3_b1.05_g1.2")
    assert (custom.depth, custom.width, custom.resolution) == (pytest.approx(1.3), pytest.approx(1.05), 272)
    assert custom.name == "phi1_a1.3_b1.05_g1.2" and get_variant(custom.name) == custom
    assert from_phi(1).name == "phi1" and from_phi(2, 1.2, 1.1, 1.15).name == "phi2"
    with pytest.raises(ValueError, match="unknown EfficientNet variant 'b9'.*b0, b1.*lite4.*phi"):
        get_variant("b9")
    with pytest.raises(ValueError, match="alpha, beta, gamma must be >= 1"):
        from_phi(1, alpha=0.9)


def test_custom_variant_from_explicit_multipliers():
    v = scaling.custom(width=1.3, depth=1.5, resolution=320)
    arch = build_architecture(v)
    assert v.resolution == 320 and arch.stem_channels == round_channels(32, 1.3)
    assert len(arch.blocks) == sum(round_repeats(r.repeats, 1.5) for r in scaling.B0_ROWS)


def test_drop_path_rates_ramp_linearly():
    rates = scaling.drop_path_rates(16, 0.2)
    assert rates[0] == 0.0 and rates[8] == pytest.approx(0.1) and rates[-1] == pytest.approx(0.2 * 15 / 16)


def test_v2_table_holds_the_official_sizes_dropout_and_scaling():
    got = {n: (v.width, v.depth, v.train_resolution, v.resolution, v.dropout) for n, v in VARIANTS.items() if v.v2}
    assert got == {  # effnetv2_configs.py: (width, depth, train size, eval size, dropout)
        "v2-b0": (1.0, 1.0, 192, 224, 0.2),
        "v2-b1": (1.0, 1.1, 192, 240, 0.2),
        "v2-b2": (1.1, 1.2, 208, 260, 0.3),
        "v2-b3": (1.2, 1.4, 240, 300, 0.3),
        "v2-s": (1.0, 1.0, 300, 384, 0.2),
        "v2-m": (1.0, 1.0, 384, 480, 0.3),
        "v2-l": (1.0, 1.0, 384, 480, 0.4),
        "v2-xl": (1.0, 1.0, 384, 512, 0.4),
        "v2-rw-t": (0.8, 0.9, 224, 288, 0.2),  # timm's efficientnetv2_rw_t: V2-S's table scaled
    }


@pytest.mark.parametrize(
    "name, per_row, outs, stem",
    [
        ("v2-s", [2, 4, 4, 6, 9, 15], [24, 48, 64, 128, 160, 256], 24),
        ("v2-m", [3, 5, 5, 7, 14, 18, 5], [24, 48, 80, 160, 176, 304, 512], 24),
        ("v2-l", [4, 7, 7, 10, 19, 25, 7], [32, 64, 96, 192, 224, 384, 640], 32),
        # the base rows scaled: depth 1.4 rounds up, width 1.2 rounds to the nearest multiple of 8
        # (19.2 -> 16, where V1's rule would give 24)
        ("v2-b3", [2, 3, 3, 5, 7, 12], [16, 40, 56, 112, 136, 232], 40),
    ],
)
def test_v2_blocks_follow_the_official_tables(name, per_row, outs, stem):
    arch = build_architecture(name)
    rows = range(arch.num_rows)
    assert [sum(b.row == r for b in arch.blocks) for r in rows] == per_row
    assert [b.out_channels for b in arch.blocks if b.index == 0] == outs
    assert arch.stem_channels == stem and arch.head_channels == (1536 if name == "v2-b3" else 1280)
    firsts = [b for b in arch.blocks if b.index == 0]
    # Fused-MBConv in the first three rows, without SE; MBConv after, SE a quarter of the input
    assert [b.fused for b in firsts] == [True] * 3 + [False] * (arch.num_rows - 3)
    assert all(b.se_channels == 0 for b in arch.blocks if b.fused)
    assert all(b.se_channels == b.in_channels // 4 for b in arch.blocks if not b.fused)
    assert [b.expand_ratio for b in firsts][:4] == [1, 4, 4, 4] and {b.kernel_size for b in arch.blocks} == {3}
    # a Fused-MBConv without expansion has only its output channels
    assert firsts[0].hidden_channels == firsts[0].out_channels


def test_v2_names_are_their_own_and_phi_stays_v1():
    assert get_variant("V2-S").name == "v2-s" and get_variant("b0").v2 is False
    with pytest.raises(ValueError, match="v2-b0"):
        get_variant("v2-b4")
