"""Image files to uint8 RGB tensors (3 x H x W), decoded by torchvision.io (libjpeg-turbo,
libpng) straight into a tensor, so the train transforms work on tensors without a PIL image
in between.

    image = decode_rgb("photo.jpg")     # torch.uint8, (3, H, W)

Only 8-bit RGB and grayscale JPEG and PNG files take that path: their pixels are the ones
`data.load_rgb` gives (JPEG within the rounding of the decoder's colour conversion). Every
other file (CMYK, 16-bit, palette or transparency, which `load_rgb` composites on white, other
formats) goes through `load_rgb`. The header is read by PIL, which decodes no pixels for it.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2.functional import pil_to_tensor

from effnet_lightning.data import load_rgb

# (format, mode) pairs torchvision.io decodes to exactly what load_rgb gives.
FAST_KINDS = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L")}


def decode_rgb(path: str) -> torch.Tensor:
    """An 8-bit RGB image as a (3, H, W) uint8 tensor; odd modes as `load_rgb` converts them."""
    with Image.open(path) as img:
        # A PNG's transparency chunk, even on an RGB image, makes load_rgb composite on white.
        fast = (img.format, img.mode) in FAST_KINDS and "transparency" not in img.info
    if fast:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    return pil_to_tensor(load_rgb(path))
