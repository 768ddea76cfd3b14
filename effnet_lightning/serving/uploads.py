"""What a POST /predict carries, checked before it reaches the model: the image's bytes, from the
request body or from a multipart form's file. What is not an image the model can classify is
refused as `BadUpload`: an HTTP status and one line saying what was wrong.

    data = upload_bytes(body, "multipart/form-data; boundary=...")
    image = decode_upload(data, min_side=8, max_pixels=Image.MAX_IMAGE_PIXELS)   # or BadUpload
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

from effnet_lightning.data.decode import EncodedImage, load_rgb

# Content types sent as the image itself (besides image/*): what curl --data-binary and
# generic clients send.
RAW_TYPES = ("application/octet-stream", "")
FORM_TYPE = "application/x-www-form-urlencoded"

# decode_upload refuses large images itself, with a status and a line for the client.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class BadUpload(Exception):
    """A request the server refuses: `status` (4xx) and a one-line `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def media_type(content_type: str) -> str:
    """'image/jpeg' from 'image/jpeg; charset=...' (lower case; '' when none was sent)."""
    return content_type.split(";", 1)[0].strip().lower()


def upload_bytes(body: bytes, content_type: str) -> bytes:
    """The image's bytes: the body itself (image/*, application/octet-stream or no type), or
    the file of a multipart/form-data body."""
    kind = media_type(content_type)
    if kind == "multipart/form-data":
        data = multipart_file(body, content_type)
    elif kind.startswith("image/") or kind in RAW_TYPES:
        data = body
    else:
        curl = " (curl's default for --data-binary: add -H 'Content-Type: image/jpeg')" if kind == FORM_TYPE else ""
        raise BadUpload(
            415,
            f"content type {kind} is not an image{curl}: send the image's bytes (Content-Type image/jpeg, "
            f"image/png, ...) or a multipart/form-data form with the file",
        )
    if not data:
        raise BadUpload(400, "the request has no image: send an image file as the body or as a multipart form's file")
    return data


def multipart_file(body: bytes, content_type: str) -> bytes:
    """The first file of a multipart/form-data body (a part with a filename, or the field
    named `file` or `image`)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise BadUpload(400, "the multipart form could not be read: send the image as a form field named file")
    for part in message.iter_parts():
        if part.get_filename() is not None or part.get_param("name", header="content-disposition") in ("file", "image"):
            return part.get_payload(decode=True) or b""
    raise BadUpload(400, "the multipart form has no file: send the image as a form field named file")


def decode_upload(data: bytes, min_side: int, max_pixels: int) -> Image.Image:
    """The image as `predict` reads a file (8-bit RGB: `load_rgb`), decoded once; refuses what
    is not an image (400), a truncated file (400), an image of more than `max_pixels` pixels (a
    decompression bomb; 413, from its header alone) and one under `min_side` pixels a side (422)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        if width * height > max_pixels:
            raise too_many_pixels(f"{width}x{height}", max_pixels)
        if min(width, height) < min_side:
            raise BadUpload(
                422, f"the image is {width}x{height} pixels: too small to classify (at least {min_side} a side)"
            )
        return load_rgb(EncodedImage("upload", data))
    except Image.DecompressionBombError as e:  # PIL's own limit, met while opening
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise too_many_pixels(f"{int(found.group(1)):,}" if found else "too many", max_pixels) from None
    except UnidentifiedImageError:
        raise BadUpload(
            400, "the body is not an image file this server reads (JPEG, PNG, WebP, BMP, TIFF, ...)"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadUpload(400, f"the image could not be decoded ({reason}): send the whole file") from None


def too_many_pixels(size: str, max_pixels: int) -> BadUpload:
    return BadUpload(
        413, f"the image is {size} pixels, more than the {max_pixels:,} this server decodes: send a smaller one"
    )
