"""Hub weights by name (`hf-hub:<repo>`, short names, `imagenet` for lite3/lite4), from a
Hugging Face cache the tests build from randomly initialised timm models, offline."""

import json
import os
import shutil

import pytest
import timm
import torch

from effnet_lightning import create_model
from tests.helpers.cli import CSV, ROOT, TINY, run_cli
from tests.helpers.probes import read_input_sizes
from tests.helpers.weights_cache import add_to_cache


@pytest.mark.slow
def test_fine_tuning_from_a_hub_name_keeps_its_preprocessing_through_test(tmp_path, small_root, hub_cache):
    cache = shutil.copytree(hub_cache[0], tmp_path / "cache")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "PROBE_FILE": str(tmp_path / "probe.jsonl")}
    args = ["--config", ROOT / "configs" / "finetune.yaml", "--data.root", small_root, *TINY, *CSV]
    repo = "hf-hub:timm/tf_efficientnet_b0.ap_in1k"  # AdvProp: mean = std = 0.5, SAME padding
    fit = ["fit", *args, "--model.weights", repo, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3"]
    run_cli(fit, tmp_path, env=env)
    best = json.loads((tmp_path / "runs" / "latest_fit.json").read_text())["best_model_path"]
    hparams = torch.load(tmp_path / best, weights_only=True)["hyper_parameters"]
    assert hparams["variant"] == "b0" and hparams["model_options"]["padding"] == "same"
    assert hparams["preprocessing"]["mean"] == hparams["preprocessing"]["std"] == [0.5, 0.5, 0.5]
    # test reads the checkpoint alone (no hub access): pixels normalised by 0.5 / 0.5 lie in [-1, 1]
    shutil.rmtree(cache / "models--timm--tf_efficientnet_b0.ap_in1k")
    test = ["test", "--data.root", small_root, *TINY, *CSV, "--ckpt_path", best]
    run_cli([*test, "--trainer.callbacks+=tests.helpers.probes.InputSizeProbe"], tmp_path, env=env)
    predict = [
        "predict",
        "--data.predict_root",
        small_root / "val" / min(hparams["class_names"]),
        *TINY,
        *CSV,
        "--ckpt_path",
        best,
    ]
    run_cli([*predict, "--trainer.callbacks+=tests.helpers.probes.InputSizeProbe"], tmp_path, env=env)
    for stage in ("test", "predict"):
        batches = [r for r in read_input_sizes(tmp_path / "probe.jsonl") if r["stage"] == stage]
        assert batches and min(r["min"] for r in batches) >= -1.0001 and max(r["max"] for r in batches) <= 1.0001
        assert min(r["min"] for r in batches) < -0.8  # dark pixels exist: ImageNet's statistics would give < -1.5
    # back to the hub layout: the fine-tuned network in timm, with the test report in its card
    run_cli(["export", "--ckpt_path", best, "--formats", "[hub]", "--output_dir", "exported"], tmp_path, env=env)
    folder = tmp_path / "exported" / "hub"
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_b0" and config["label_names"] == hparams["class_names"]
    assert config["pretrained_cfg"]["mean"] == [0.5] * 3 and config["pretrained_cfg"]["input_size"] == [3, 64, 64]
    report = (tmp_path / best).with_suffix(".test-report.md").read_text()
    accuracy_line = next(line for line in report.splitlines() if " images, accuracy " in line)
    assert accuracy_line in (folder / "README.md").read_text()
    add_to_cache(cache, "me/b0-finetuned", folder=folder)
    theirs = timm.create_model("hf-hub:me/b0-finetuned", pretrained=True, cache_dir=str(cache)).eval()
    ours = create_model(weights=tmp_path / best).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (theirs(x) - ours(x)).abs().max().item() <= 1e-5
