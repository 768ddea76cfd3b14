"""predict --onnx: the ONNX predictor applies test-time flip as the network does."""

import torch

from effnet_lightning import create_model
from effnet_lightning.cli.onnx_predict import OnnxPredictor
from effnet_lightning.data import demo
from effnet_lightning.export.folder import export_model
from tests.helpers.networks import randomise_batchnorm

CLASSES = sorted(demo.CLASSES)


def test_the_onnx_predictor_applies_test_time_flip_as_the_network_does(tmp_path):
    torch.manual_seed(0)
    model = create_model("lite0", num_classes=10)
    size = model.provenance.preprocessing.crop_size
    randomise_batchnorm(model, size=size).eval()
    export_model(model, tmp_path, class_names=CLASSES, formats=["onnx"])
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain, mirrored = model(x), model(x.flip(3))
    for flip, logits in ((False, plain), (True, (plain + mirrored) / 2)):
        predictor = OnnxPredictor(tmp_path / "model.onnx", test_time_flip=flip)
        probs = predictor.predict_step((x, torch.arange(4)), 0)["probs"]
        assert (probs - logits.softmax(1)).abs().max() < 1e-5, flip
    assert (plain.softmax(1) - ((plain + mirrored) / 2).softmax(1)).abs().max() > 1e-3  # the flip matters here
