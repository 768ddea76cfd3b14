"""EfficientNetV2 through the real CLI: a fine-tune of v2-b0 from hub weights (a cache the tests
build) in progressive stages, then test, export to ONNX, INT8 and the hub layout, and timm
loading that folder with the same logits; the V2-S recipe as the CLI reads it."""

import json
import os
import shutil

import onnxruntime
import pytest
import timm
import torch

from effnet_lightning import create_model
from tests.helpers.cli import CSV, ROOT, TINY, printed_metric, run_cli, train_losses
from tests.helpers.weights_cache import add_to_cache

REPO = "timm/tf_efficientnetv2_b0.in1k"


@pytest.mark.slow
def test_v2_b0_fine_tunes_in_stages_tests_and_exports_to_onnx_int8_and_timm(tmp_path, small_root, hub_cache):
    cache = shutil.copytree(hub_cache[0], tmp_path / "cache")
    env = {**os.environ, "HF_HUB_CACHE": str(cache)}
    data = ["--data.root", small_root, *TINY, *CSV]
    fit = [
        "fit",
        "--config",
        ROOT / "configs" / "finetune.yaml",
        *data,
        "--model.weights",
        f"hf-hub:{REPO}",
        "--stages.count",
        "2",
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.log_every_n_steps",
        "1",
    ]
    out = run_cli(fit, tmp_path, env=env)
    # two stages of one epoch, 3 steps each: 48 px (32 + 32 x 1/2), then the training size, 64
    assert train_losses(tmp_path, metric="train/image_size") == {s: 48.0 if s < 3 else 64.0 for s in range(6)}
    assert "stage 2 of 2: 64 px" in out.stderr
    best = json.loads((tmp_path / "runs" / "latest_fit.json").read_text())["best_model_path"]
    hparams = torch.load(tmp_path / best, weights_only=True)["hyper_parameters"]
    assert hparams["variant"] == "v2-b0" and hparams["model_options"]["padding"] == "same"
    assert hparams["model_options"]["bn_eps"] == 1e-3  # the TF port's, from the hub architecture

    # test and export read the checkpoint alone: the hub repository is gone
    shutil.rmtree(cache / f"models--{REPO.replace('/', '--')}")
    out = run_cli(["test", "--ckpt_path", best, *data], tmp_path, env=env)
    assert 0 <= printed_metric(out.stdout, "test/acc") <= 1
    export = ["export", "--ckpt_path", best, *data, "--formats", "[onnx, onnx_int8, hub]", "--output_dir", "exported"]
    run_cli([*export, "--calibration_images", "16"], tmp_path, env=env)
    folder = tmp_path / "exported"
    info = json.loads((folder / "model.json").read_text())
    assert info["variant"] == "v2-b0" and set(info["files"]) == {"onnx", "onnx_int8", "hub"}
    assert info["int8"]["images"] == 71 and info["int8"]["calibration_images"] == 16  # every validation image

    ours = create_model(weights=tmp_path / best).eval()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(x)
    assert expected.std() > 0.01  # logits that depend on the input
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    from_onnx = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    assert (from_onnx - expected).abs().max().item() <= 1e-4 * max(1.0, expected.abs().max().item())
    int8 = onnxruntime.InferenceSession(str(folder / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    assert int8.run(None, {"images": x.numpy()})[0].shape == tuple(expected.shape)
    config = json.loads((folder / "hub" / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnetv2_b0" and config["label_names"] == hparams["class_names"]
    add_to_cache(cache, "me/v2-b0-finetuned", folder=folder / "hub")
    theirs = timm.create_model("hf-hub:me/v2-b0-finetuned", pretrained=True, cache_dir=str(cache)).eval()
    with torch.no_grad():
        assert (theirs(x) - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())


def test_the_v2_s_recipe_trains_v2_s_in_the_papers_four_stages(tmp_path):
    out = run_cli(["fit", "--config", ROOT / "configs" / "recipes" / "v2-s.yaml", "--print_config"], tmp_path)
    for line in (
        "variant: v2-s",
        "optimizer: rmsprop_tf",
        "randaugment_magnitude: 10",
        "augment: randaugment",
        "count: 4",
        "max_epochs: 350",
    ):
        assert f"  {line}\n" in out.stdout, line
    assert "  - randaugment\n  - dropout\n" in out.stdout and "bn_momentum: 0.01" in out.stdout
