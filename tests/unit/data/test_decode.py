"""Decoding image files to 8-bit RGB, against PIL."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from effnet_lightning.data.decode import decode_rgb, load_rgb


def picture(height: int = 37, width: int = 53) -> np.ndarray:
    """Smooth gradients with some noise: JPEG-like content, odd sizes for chroma subsampling."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height) + 64], -1)
    return np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)


def write(tmp_path, name: str, image: Image.Image, **options) -> str:
    path = tmp_path / name
    image.save(path, **options)
    return str(path)


FILES = {
    "rgb.png": lambda: Image.fromarray(picture()),
    "gray.png": lambda: Image.fromarray(picture()[..., 0]),
    "rgba.png": lambda: Image.fromarray(np.dstack([picture(), picture()[..., 1]])),
    "gray_alpha.png": lambda: Image.fromarray(picture()).convert("LA"),
    "palette.png": lambda: Image.fromarray(picture()).convert("P"),
    "gray16.png": lambda: Image.fromarray(picture()[..., 0].astype(np.uint16) * 257),
    "cmyk.jpg": lambda: Image.fromarray(picture()).convert("CMYK"),
    "rgb.gif": lambda: Image.fromarray(picture()).convert("P"),
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_png_and_other_modes_give_exactly_load_rgbs_pixels(tmp_path, name):
    path = write(tmp_path, name, FILES[name]())
    decoded = decode_rgb(path)
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 37, 53)
    assert torch.equal(decoded, pil_to_tensor(load_rgb(path)))


def test_palette_png_with_transparency_is_composited_on_white(tmp_path):
    image = Image.fromarray(picture()).convert("P")
    index = int(np.bincount(np.asarray(image).ravel()).argmax())  # the most used colour becomes transparent
    path = write(tmp_path, "transparent.png", image, transparency=index)
    decoded = decode_rgb(path)
    assert torch.equal(decoded, pil_to_tensor(load_rgb(path)))
    transparent = np.asarray(image) == index
    assert transparent.any() and (decoded.permute(1, 2, 0).numpy()[transparent] == 255).all()


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("subsampling", [0, 2])  # 4:4:4 and 4:2:0
def test_jpeg_matches_load_rgb_within_decoder_rounding(tmp_path, mode, subsampling):
    path = write(tmp_path, f"{mode}.jpg", Image.fromarray(picture()).convert(mode), quality=90, subsampling=subsampling)
    decoded, expected = decode_rgb(path).int(), pil_to_tensor(load_rgb(path)).int()
    assert decoded.shape == expected.shape == (3, 37, 53)
    assert (decoded - expected).abs().max().item() <= 1
