"""Image folders the tests build: good images and every kind of bad file."""

import os


def make_bad_folder(root, per_class: int = 6):
    """Class folders of good images, plus every kind of bad or odd file in class `ant`: a
    truncated JPEG, an empty file, text under an image name, a dangling link, an unreadable file
    (where permissions apply), a plain text file, CMYK, RGBA, 16-bit and grayscale images, and
    hidden files and folders. Returns {kind: file name}."""
    from PIL import Image

    for c_index, name in enumerate(("ant", "bee", "cat")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (48, 40), (c_index * 80, i * 30, 100)).save(root / name / f"{i}.png")
    ant = root / "ant"
    full = ant / "full.jpg"
    Image.effect_noise((64, 64), 60).convert("RGB").save(full, quality=95)
    data = full.read_bytes()
    (ant / "truncated.jpg").write_bytes(data[: len(data) // 2])
    full.unlink()
    (ant / "empty.jpg").write_bytes(b"")
    (ant / "text.png").write_text("not a picture")
    (ant / "notes.txt").write_text("a plain file: not listed")
    (ant / "dangling.jpg").symlink_to(root / "missing.jpg")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(ant / "cmyk.jpg")
    Image.new("RGBA", (40, 40), (10, 200, 10, 128)).save(ant / "rgba.png")
    Image.new("I;16", (40, 40), 40000).save(ant / "deep.png")
    Image.new("L", (40, 40), 90).save(ant / "gray.png")
    (ant / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(ant / ".hidden" / "skip.png")
    Image.new("RGB", (8, 8)).save(ant / ".thumb.png")
    (root / ".cache").mkdir()
    Image.new("RGB", (8, 8)).save(root / ".cache" / "not_a_class.png")
    kinds = {"truncated": "truncated.jpg", "empty": "empty.jpg", "text": "text.png", "dangling": "dangling.jpg"}
    if os.geteuid() != 0:  # root reads any file
        Image.new("RGB", (8, 8)).save(ant / "locked.png")
        (ant / "locked.png").chmod(0)
        kinds["unreadable"] = "locked.png"
    return kinds
