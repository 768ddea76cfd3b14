"""export_model: the files it writes, their logits against PyTorch, and what a failed export leaves."""

import json

import pytest
import torch

from effnet_lightning import create_model
from effnet_lightning.data import demo
from effnet_lightning.export.folder import export_model
from tests.helpers.exports import reload_and_compare
from tests.helpers.networks import randomise_batchnorm

CLASSES = sorted(demo.CLASSES)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["b0", "lite0"])
def test_onnx_and_torchscript_exports_match_pytorch(variant, tmp_path):
    torch.manual_seed(0)
    model = create_model(variant, num_classes=10)
    pre = model.provenance.preprocessing.to_dict()
    randomise_batchnorm(model, size=pre["crop_size"]).eval()
    info = export_model(model, tmp_path, class_names=CLASSES)
    assert info["files"] == {
        "onnx": "model.onnx",
        "torchscript": "model.torchscript.pt",
        "safetensors": "model.safetensors",
    }
    x = torch.randn(5, 3, pre["crop_size"], pre["crop_size"], generator=torch.Generator().manual_seed(7))
    diffs = reload_and_compare(tmp_path, model, x)
    print(f"{variant} at {pre['crop_size']} px, batch 5: max |logit difference| {diffs}")
    assert diffs["onnx"] < 1e-4 and diffs["torchscript"] < 1e-4
    reloaded = create_model(variant, num_classes=10, weights=str(tmp_path / "model.safetensors")).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved["class_names"] == CLASSES and saved["preprocessing"] == pre and saved["variant"] == variant


def test_a_failed_export_replaces_nothing_and_an_export_touches_only_its_files(tmp_path):
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "model.json").write_text("the previous export")
    (out / "notes.txt").write_text("the user's")
    model = randomise_batchnorm(create_model("b0", num_classes=3)).eval()
    model.provenance = model.provenance.with_preprocessing(model.provenance.preprocessing.resized(64))
    with pytest.raises(ValueError, match="nothing was written to"):  # tolerance -1: every check fails
        export_model(model, out, class_names=["a", "b", "c"], formats=["safetensors"], tolerance=-1.0)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "notes.txt"]
    assert (out / "model.json").read_text() == "the previous export"
    info = export_model(model, out, class_names=["a", "b", "c"], formats=["safetensors"])
    assert json.loads((out / "model.json").read_text()) == info and (out / "notes.txt").read_text() == "the user's"
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors", "notes.txt"]
