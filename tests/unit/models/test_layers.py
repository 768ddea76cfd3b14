"""Layers: SAME padding and stochastic depth."""

import pytest
import torch
import torch.nn.functional as F

from effnet_lightning.models.layers import Conv2dSame, DropPath, make_conv, same_padding


def test_same_padding_puts_the_extra_pixel_bottom_right():
    assert same_padding(224, 3, 2) == 1 and same_padding(225, 3, 2) == 2 and same_padding(7, 5, 1) == 4
    conv = Conv2dSame(1, 1, 3, stride=2, bias=False)
    torch.nn.init.ones_(conv.weight)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # TF SAME on 4x4, k3 s2: pad 0 top/left, 1 bottom/right -> windows start at 0 and 2
    expected = F.conv2d(F.pad(x, [0, 1, 0, 1]), conv.weight, stride=2)
    assert torch.equal(conv(x), expected)
    assert conv(x)[0, 0, 0, 0].item() == sum([0, 1, 2, 4, 5, 6, 8, 9, 10])


def test_make_conv_uses_symmetric_padding_where_same_agrees():
    assert isinstance(make_conv(4, 4, 3, stride=2, padding="same"), Conv2dSame)
    stride1 = make_conv(4, 4, 5, stride=1, padding="same")
    assert type(stride1) is torch.nn.Conv2d and stride1.padding == (2, 2)
    with pytest.raises(ValueError, match="unknown padding 'valid': choose one of symmetric, same"):
        make_conv(4, 4, 3, padding="valid")


def test_drop_path_is_identity_in_eval():
    dp = DropPath(0.5).eval()
    x = torch.randn(8, 4, 3, 3)
    assert dp(x) is x


def test_drop_path_drops_whole_samples_with_the_right_expectation():
    torch.manual_seed(0)
    dp = DropPath(0.3).train()
    x = torch.ones(20000, 2, 2, 2)
    y = dp(x)
    per_sample = y.flatten(1)
    # each sample is either all zero or all 1/keep
    assert torch.all(per_sample.amin(1) == per_sample.amax(1))
    kept = per_sample[:, 0] > 0
    assert torch.allclose(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.7))
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.01)
    assert y.mean().item() == pytest.approx(1.0, abs=0.02)


def test_drop_path_rejects_bad_rates():
    with pytest.raises(ValueError, match=r"drop path rate must be in \[0, 1\)"):
        DropPath(1.0)
