"""What a POST /predict may carry: raw bytes or a multipart file, and the image checks."""

import io

import pytest
from PIL import Image

from effnet_lightning.serving.uploads import BadUpload, decode_upload, upload_bytes
from tests.helpers.serving import multipart


def jpeg(size=(32, 24), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "JPEG")
    return buffer.getvalue()


def refused(call, *args) -> tuple[int, str]:
    with pytest.raises(BadUpload) as error:
        call(*args)
    return error.value.status, error.value.message


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png; q=1", "application/octet-stream", "", "IMAGE/JPEG"])
def test_the_body_is_the_image_for_image_and_generic_types(content_type):
    assert upload_bytes(b"\xff\xd8data", content_type) == b"\xff\xd8data"


def test_a_multipart_forms_file_is_the_image_whatever_its_field_name():
    data = jpeg()
    for field in ("file", "image", "upload"):
        body, content_type = multipart(data, "photo.jpg", field)
        assert upload_bytes(body, content_type) == data
    body = b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\n' + data + b"\r\n--b--\r\n"
    assert upload_bytes(body, "multipart/form-data; boundary=b") == data  # no filename, named image


def test_a_form_without_a_file_and_other_types_are_refused_with_one_line():
    body = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--b--\r\n'
    assert refused(upload_bytes, body, "multipart/form-data; boundary=b") == (
        400,
        "the multipart form has no file: send the image as a form field named file",
    )
    status, message = refused(upload_bytes, jpeg(), "text/plain")
    assert status == 415 and message.startswith("content type text/plain is not an image: send")
    status, message = refused(upload_bytes, jpeg(), "application/x-www-form-urlencoded")
    assert status == 415 and "add -H 'Content-Type: image/jpeg'" in message
    assert refused(upload_bytes, b"", "image/png")[0] == 400


def test_uploads_are_decoded_whole_as_8_bit_rgb_within_size_bounds():
    assert decode_upload(jpeg((8, 8)), min_side=8, max_pixels=64).size == (8, 8)  # at both limits: accepted
    assert refused(decode_upload, jpeg((8, 9)), 8, 64) == (
        413,
        "the image is 8x9 pixels, more than the 64 this server decodes: send a smaller one",
    )
    assert refused(decode_upload, jpeg((7, 30)), 8, 10_000)[0] == 422
    data = jpeg((64, 64))
    status, message = refused(decode_upload, data[: len(data) // 2], 8, 10_000)
    assert status == 400 and message.startswith("the image could not be decoded (")
    assert refused(decode_upload, b"GIF89a not really", 8, 10_000)[0] == 400
    assert decode_upload(jpeg((16, 16), "CMYK"), 8, 10_000).mode == "RGB"  # as predict reads it
