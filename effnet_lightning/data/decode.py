"""Reading image files as 8-bit RGB: `load_rgb` (a PIL image, any mode PIL reads) and
`decode_rgb` (a uint8 tensor, 3 x H x W, decoded by torchvision.io's libjpeg-turbo / libpng
straight into a tensor, so the train transforms work on tensors without a PIL image between).

    image = decode_rgb("photo.jpg")     # torch.uint8, (3, H, W)

Only 8-bit RGB and grayscale JPEG and PNG files take the tensor path: their pixels are the
ones `load_rgb` gives (JPEG within the rounding of the decoder's colour conversion). Every
other file (CMYK, 16-bit, palette or transparency, which `load_rgb` composites on white, other
formats) goes through `load_rgb`. The header is read by PIL, which decodes no pixels for it.

Both read a path or an `EncodedImage`: a file's bytes as shards store them, decoded exactly as
the file would be.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2.functional import pil_to_tensor


@dataclass(frozen=True, repr=False)
class EncodedImage:
    """An image file's encoded bytes (as shards hold them), named by the file's path in the folder
    it came from: messages about it name that file."""

    name: str
    data: bytes

    def __str__(self) -> str:
        return self.name

    __repr__ = __str__


def open_image(source: str | EncodedImage) -> Image.Image:
    """PIL's lazy image of a file or of an `EncodedImage` (pixels are decoded on `load`)."""
    return Image.open(io.BytesIO(source.data) if isinstance(source, EncodedImage) else source)


def load_rgb(path: str | EncodedImage) -> Image.Image:
    """An 8-bit RGB image from any file PIL reads: transparency is composited on white, 16-bit
    and 32-bit grayscale is scaled to 8 bits, CMYK / palette / grayscale are converted."""
    with open_image(path) as img:
        img.load()
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
            rgba = img.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(canvas, rgba).convert("RGB")
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(img.convert("I"), dtype=np.float64)
            peak = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
            return Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
        if img.mode == "F":
            array = np.asarray(img, dtype=np.float64)
            scaled = np.clip(array * (255.0 if array.max() <= 1 else 1.0), 0, 255).astype(np.uint8)
            return Image.fromarray(scaled).convert("RGB")
        return img.convert("RGB")


# torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; they are still the
# fastest path here (benchmarks/input_pipeline.py), and load_rgb is the fallback.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
)

# (format, mode) pairs torchvision.io decodes to exactly what load_rgb gives.
FAST_KINDS = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L")}


def decode_rgb(path: str | EncodedImage) -> torch.Tensor:
    """An 8-bit RGB image as a (3, H, W) uint8 tensor; odd modes as `load_rgb` converts them."""
    with open_image(path) as img:
        # A PNG's transparency chunk, even on an RGB image, makes load_rgb composite on white.
        fast = (img.format, img.mode) in FAST_KINDS and "transparency" not in img.info
    if fast:
        try:
            data = (
                torch.frombuffer(bytearray(path.data), dtype=torch.uint8)
                if isinstance(path, EncodedImage)
                else read_file(str(path))
            )
            return decode_image(data, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # a truncated or unusual file: PIL decodes it, or raises its own clear error
    return pil_to_tensor(load_rgb(path))
