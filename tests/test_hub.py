"""Hub weights by name (`hf-hub:<repo>`, short names, `imagenet` for lite3/lite4), from a
Hugging Face cache the tests build from randomly initialised timm models, offline."""

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from cli_helpers import CSV, ROOT, TINY, run_cli
from conftest import randomise_batchnorm
from probes import read_input_sizes
from timm.data import resolve_data_config
from weights_cache import add_to_cache, commit_of

from effnet_lightning import create_model
from effnet_lightning.cli.app import main
from effnet_lightning.data.datamodule import ImageFolderDataModule
from effnet_lightning.export.folder import export_model
from effnet_lightning.models.factory import imagenet_categories, preprocessing_for
from effnet_lightning.models.preprocessing import Preprocessing
from effnet_lightning.models.state_dicts import WeightsError

REPOS = {  # a TF-ported B variant, a PyTorch-trained B variant, a TF Lite variant, AdvProp
    "timm/tf_efficientnet_b0.ns_jft_in1k": "b0",
    "timm/efficientnet_b0.ra_in1k": "b0",
    "timm/tf_efficientnet_lite0.in1k": "lite0",
    "timm/tf_efficientnet_b0.ap_in1k": "b0",
}


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """{repo: the timm model in the cache}, with non-trivial BatchNorm statistics."""
    cache = tmp_path_factory.mktemp("hf-cache")
    models = {}
    for i, repo in enumerate(REPOS):
        torch.manual_seed(i)
        model = timm.create_model(repo.split("/")[1], pretrained=False)
        models[repo] = randomise_batchnorm(model, seed=i).eval()
        add_to_cache(cache, repo, models[repo])
    add_to_cache(cache, "timm/resnet50.a1_in1k", config={"architecture": "resnet50", "num_classes": 1000})
    # trained at 288 px, published with a 320-px test size
    b3 = timm.create_model("efficientnet_b3.ra2_in1k", pretrained=False).pretrained_cfg
    add_to_cache(
        cache, "timm/efficientnet_b3.ra2_in1k", config={"architecture": "efficientnet_b3", "pretrained_cfg": b3}
    )
    return cache, models


@pytest.fixture
def offline_hub(hub_cache, monkeypatch):
    cache, models = hub_cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return models


def test_hub_weights_give_timms_logits_with_the_repositorys_variant_build_and_preprocessing(offline_hub):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for repo, variant in REPOS.items():
        theirs = offline_hub[repo]
        ours = create_model(weights=f"hf-hub:{repo}").eval()  # no variant: the repository names it
        assert ours.variant.name == variant
        with torch.no_grad():
            diff = (ours(x) - theirs(x)).abs().max().item()
        assert diff <= 1e-4, f"{repo}: max |logit difference| {diff}"
        provenance = ours.provenance
        assert provenance.source == f"hf-hub:{repo}@{commit_of(repo)}" and provenance.revision == commit_of(repo)
        assert provenance.build.padding == ("same" if "/tf_" in repo else "symmetric")
        assert provenance.build.bn_eps == (1e-3 if "/tf_" in repo else 1e-5)
        assert provenance.head_loaded and provenance.categories == imagenet_categories()
        expected = resolve_data_config({}, model=theirs)
        pre = provenance.preprocessing
        assert (pre.crop_size, pre.interpolation) == (expected["input_size"][-1], expected["interpolation"])
        assert pre.resize_size == math.floor(expected["input_size"][-1] / expected["crop_pct"])
        assert pre.mean == pytest.approx(expected["mean"]) and pre.std == pytest.approx(expected["std"])
    assert create_model(weights="hf-hub:timm/tf_efficientnet_b0.ap_in1k").provenance.preprocessing.mean == (0.5,) * 3
    # a new classifier for 5 classes on the hub backbone
    five = create_model(num_classes=5, weights="hf-hub:timm/tf_efficientnet_lite0.in1k")
    assert five.classifier.out_features == 5 and not five.provenance.head_loaded


def test_short_names_and_revisions_resolve_to_the_hub_repositories(offline_hub):
    ns = create_model("b0", weights="ns")
    repo = "timm/tf_efficientnet_b0.ns_jft_in1k"
    assert ns.provenance.source == f"hf-hub:{repo}@{commit_of(repo)}"
    pinned = create_model(weights=f"hf-hub:timm/efficientnet_b0.ra_in1k@{commit_of('timm/efficientnet_b0.ra_in1k')}")
    assert pinned.provenance.revision == commit_of("timm/efficientnet_b0.ra_in1k")
    assert create_model("lite0", weights="tf").provenance.source.startswith("hf-hub:timm/tf_efficientnet_lite0.in1k@")


def test_hub_names_that_cannot_be_used_are_one_line_errors(offline_hub):
    cases = [
        (
            {"variant": "b3", "weights": "hf-hub:timm/tf_efficientnet_b0.ns_jft_in1k"},
            (
                "variant b3 contradicts hf-hub:timm/tf_efficientnet_b0.ns_jft_in1k, which holds b0 weights: choose "
                "variant b0 or leave the variant out"
            ),
        ),
        (
            {"weights": "hf-hub:timm/resnet50.a1_in1k"},
            (
                "the repository holds a 'resnet50', not an EfficientNet this project builds ((tf_)efficientnet_b0-b8, "
                "l2, lite0-lite4)"
            ),
        ),
        (
            {"variant": "b1", "weights": "ra2"},
            (
                "weights 'ra2' exist for b3, b4, not for variant 'b1': choose one of those, or another set (tf, ns, ap, "
                "aa, ra, ra2, imagenet)"
            ),
        ),
        (
            {"weights": "hf-hub:timm/tf_efficientnet_b9.in1k"},
            (
                "timm/tf_efficientnet_b9.in1k is not in the Hugging Face cache and the hub cannot be reached: run `hf "
                "download timm/tf_efficientnet_b9.in1k` where there is internet (or unset HF_HUB_OFFLINE)"
            ),
        ),
        (
            {"weights": "hf-hub:timm/efficientnet_b0.ra_in1k@0123abc"},
            (
                "timm/efficientnet_b0.ra_in1k@0123abc is not in the Hugging Face cache and the hub cannot be reached: "
                "run `hf download timm/efficientnet_b0.ra_in1k --revision 0123abc` where there is internet (or unset "
                "HF_HUB_OFFLINE)"
            ),
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(WeightsError) as error:
            create_model(**kwargs)
        assert str(error.value) == message


def test_a_published_test_size_is_the_default_evaluation_size_of_a_fine_tune_that_sets_none(offline_hub, small_root):
    pre = preprocessing_for(None, "hf-hub:timm/efficientnet_b3.ra2_in1k")
    assert (pre.crop_size, pre.test_size) == (288, 320)
    data = ImageFolderDataModule(root=small_root, preprocessing=pre.to_dict())
    assert data.train_size == 288 and data.preprocessing.crop_size == 320
    assert data.preprocessing.resize_size == math.floor(320 / pre.crop_pct) and data.preprocessing.test_size is None
    typed = ImageFolderDataModule(root=small_root, image_size=96, preprocessing=pre.to_dict())
    assert typed.train_size == typed.preprocessing.crop_size == 96  # what the user typed wins


HUB_EXPORTS = {  # name: (variant, build options), each a timm architecture of its own
    "b0": ("b0", {}),
    "tf-lite0": ("lite0", {"padding": "same", "bn_eps": 1e-3, "bn_momentum": 0.01}),
    "b1-tv-bn": ("b1", {"bn_eps": 1e-3, "bn_momentum": 0.01}),  # torchvision's b5-b7 BatchNorm
    "b0-grey": ("b0", {"in_channels": 1}),
}


def test_exported_hub_folder_loads_in_timm_and_back_with_identical_logits(offline_hub, tmp_path):
    cache = huggingface_hub.constants.HF_HUB_CACHE
    classes = ["cat", "dog", "eel", "fox"]
    pre = Preprocessing.for_resolution(72, crop_pct=0.9, mean=(0.5,) * 3, std=(0.25,) * 3, interpolation="bilinear")
    for i, (name, (variant, options)) in enumerate(HUB_EXPORTS.items()):
        channels = options.get("in_channels", 3)
        model = create_model(variant, num_classes=4, **options)
        model = randomise_batchnorm(model, seed=i, in_channels=channels).eval()
        model.provenance = model.provenance.with_preprocessing(pre)
        info = export_model(model, tmp_path / name, class_names=classes, formats=["hub"], source="run.ckpt")
        # measured 0.0 here: the same operations in both libraries; float rounding at most elsewhere
        assert info["files"] == {"hub": "hub"} and info["max_abs_logit_difference"]["hub"] <= 1e-5
        config = json.loads((tmp_path / name / "hub" / "config.json").read_text())
        assert config["architecture"] == ("tf_" if "tf" in name else "") + f"efficientnet_{variant}"
        assert config["label_names"] == classes and config["model_args"]["in_chans"] == channels
        add_to_cache(Path(cache), f"me/{name}", folder=tmp_path / name / "hub")  # as if pushed

        theirs = timm.create_model(f"hf-hub:me/{name}", pretrained=True).eval()
        back = create_model(weights=f"hf-hub:me/{name}").eval()
        x = torch.randn(3, channels, 72, 72, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            expected = model(x)
            assert (theirs(x) - expected).abs().max().item() <= 1e-6 * expected.abs().max().item(), name
            assert (back(x) - expected).abs().max().item() == 0, name  # this project's own network, reloaded
        assert expected.std() > 0.1  # logits that depend on the input, not a washed-out constant
        assert back.variant.name == variant and back.provenance.build == model.provenance.build
        # one grey channel: the mean of the RGB statistics, as timm reads them
        grey = dataclasses.replace(pre, mean=(sum(pre.mean) / 3,), std=(sum(pre.std) / 3,))
        expected_pre = pre if channels == 3 else grey
        assert back.provenance.categories == tuple(classes) and back.provenance.preprocessing == expected_pre
        data = resolve_data_config({}, model=theirs)  # timm's preprocessing of the folder
        assert data["input_size"] == (channels, 72, 72) and data["interpolation"] == "bilinear"
        assert math.floor(72 / data["crop_pct"]) == pre.resize_size == 80
        assert data["mean"] == pytest.approx(expected_pre.mean) and data["std"] == pytest.approx(expected_pre.std)
    card = (tmp_path / "b0" / "hub" / "README.md").read_text()
    assert "library_name: timm" in card and "Classes (4): cat, dog, eel, fox" in card and "from `run.ckpt`" in card
    assert "Input: 3 x 72 x 72: 80 px short side (bilinear)" in card
    # networks timm has no architecture for: one line, nothing written
    for model, message in [
        (create_model("phi1_a1.3_b1.1_g1", num_classes=4), "variant phi1_a1.3_b1.1_g1 is a custom compound scaling"),
        (
            create_model("b0", num_classes=4, activation="relu"),
            "b0 built with activation relu has no timm architecture",
        ),
    ]:
        with pytest.raises(WeightsError, match=message):
            export_model(model, tmp_path / "refused", class_names=classes, formats=["hub"])
        assert not (tmp_path / "refused").exists()


def test_push_to_uploads_the_checked_hub_folder(offline_hub, tmp_path, monkeypatch, capsys):
    uploads = []

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)  # what would be uploaded, read at upload time
        uploads.append(
            (repo_id, sorted(p.name for p in folder.iterdir()), json.loads((folder / "config.json").read_text()))
        )
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    created = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo, **kw: created.append((repo, kw)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.chdir(tmp_path)
    args = [
        "export",
        "--model.weights",
        "hf-hub:timm/efficientnet_b0.ra_in1k",
        "--output_dir",
        "out",
        "--formats",
        "[safetensors]",
    ]
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(SystemExit) as stopped:  # no token: refused before any export
        main([*args, "--push_to", "me/b0-test"])
    assert stopped.value.code == 2 and not (tmp_path / "out").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --push_to me/b0-test needs a Hugging Face token: set HF_TOKEN or run `hf auth login`"
    )
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    main([*args, "--push_to", "me/b0-test"])
    assert created == [("me/b0-test", {"repo_type": "model", "private": True, "exist_ok": True})]
    ((repo, files, config),) = uploads
    assert repo == "me/b0-test" and files == ["README.md", "config.json", "model.safetensors"]
    assert config["architecture"] == "efficientnet_b0" and config["num_classes"] == 1000
    assert config["label_names"] == list(imagenet_categories())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.yaml",
        "hub",
        "model.json",
        "model.safetensors",
    ]
    assert 'create_model("hf-hub:me/b0-test", pretrained=True)' in (tmp_path / "out" / "hub" / "README.md").read_text()
    assert "export: pushed" in capsys.readouterr().out


def test_b8_and_l2_match_timms_networks():
    # b8: every tensor of timm's network loads into ours, shape by shape (load_weights checks all)
    theirs = timm.create_model("tf_efficientnet_b8", pretrained=False)
    ours = create_model("b8", weights=theirs.state_dict())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert ours.variant.resolution == 672
    # l2 (480 M parameters): the same count, without allocating it
    with torch.device("meta"):
        theirs = timm.create_model("tf_efficientnet_l2", pretrained=False)
        ours = create_model("l2")
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


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
    run_cli([*test, "--trainer.callbacks+=probes.InputSizeProbe"], tmp_path, env=env)
    predict = [
        "predict",
        "--data.predict_root",
        small_root / "val" / min(hparams["class_names"]),
        *TINY,
        *CSV,
        "--ckpt_path",
        best,
    ]
    run_cli([*predict, "--trainer.callbacks+=probes.InputSizeProbe"], tmp_path, env=env)
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
