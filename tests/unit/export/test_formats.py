"""The export formats' registry: what it finds, in which order, and that a new format file is
found without being listed anywhere."""

import importlib
import pkgutil
import sys

import pytest

import effnet_lightning.export as export_package
from effnet_lightning.export.formats import (
    Format,
    all_formats,
    check_formats,
    default_formats,
    registered,
    requested_formats,
)

NEW_FORMAT = """
from effnet_lightning.export.formats import Checked, Format



def write(job, path):
    path.write_bytes(b"")


def check(job, path):
    return Checked()


FORMAT = Format(name="tflite", file="model.tflite", rank=60, write=write, check=check)
"""


def test_every_format_has_a_file_a_writer_and_a_check():
    formats = registered()
    assert formats and all(isinstance(fmt, Format) for fmt in formats.values())
    for name, fmt in formats.items():
        assert fmt.name == name and fmt.file and callable(fmt.write) and callable(fmt.check)
    assert len({fmt.file for fmt in formats.values()}) == len(formats)  # no two write the same file


def test_names_and_order_are_the_ones_the_cli_lists():
    assert all_formats() == ("onnx", "torchscript", "safetensors", "hub", "onnx_int8")
    assert default_formats() == ("onnx", "torchscript", "safetensors")
    with pytest.raises(ValueError, match=r"^unknown export formats \['tflite'\]: choose from onnx, torchscript, "):
        check_formats(["onnx", "tflite"])
    with pytest.raises(ValueError, match="^no export format given: choose from onnx, torchscript, safetensors, hub, "):
        check_formats([])


def test_requested_formats_parse_the_flag_and_an_upload_adds_the_hub_folder():
    assert requested_formats(None) == ["onnx", "torchscript", "safetensors"]
    assert requested_formats("onnx, torchscript") == ["onnx", "torchscript"]
    assert requested_formats(["safetensors"], push_to="me/repo") == ["safetensors", "hub"]
    assert requested_formats(["hub"], push_to="me/repo") == ["hub"]


def test_every_format_module_of_the_package_is_registered():
    declared = set()
    for info in pkgutil.iter_modules(export_package.__path__):
        module = importlib.import_module(f"effnet_lightning.export.{info.name}")
        if hasattr(module, "FORMAT"):
            declared.add(module.FORMAT.name)
    assert declared == set(all_formats())


def test_a_format_file_added_to_the_package_registers_itself(tmp_path, monkeypatch):
    (tmp_path / "tflite.py").write_text(NEW_FORMAT)
    monkeypatch.setattr(export_package, "__path__", [*export_package.__path__, str(tmp_path)])
    try:
        assert all_formats() == ("onnx", "torchscript", "safetensors", "hub", "onnx_int8", "tflite")
        assert registered()["tflite"].file == "model.tflite" and "tflite" not in default_formats()
    finally:
        sys.modules.pop("effnet_lightning.export.tflite", None)
