"""Hub weights by name (`hf-hub:<repo>`, short names, `imagenet` for lite3/lite4), from a
Hugging Face cache the tests build from randomly initialised timm models, offline."""

import hashlib
import json
import math
import os
import shutil

import huggingface_hub.constants
import pytest
import timm
import torch
from cli_helpers import CSV, ROOT, TINY, run_cli
from conftest import randomise_batchnorm
from probes import read_input_sizes
from timm.data import resolve_data_config

# timm's own writer of its hub repository layout (config.json + model.safetensors); timm has no
# public name for it.
from timm.models._hub import save_for_hf

from effnet_lightning import create_model
from effnet_lightning.models.factory import imagenet_categories
from effnet_lightning.models.state_dicts import WeightsError

REPOS = {  # a TF-ported B variant, a PyTorch-trained B variant, a TF Lite variant, AdvProp
    "timm/tf_efficientnet_b0.ns_jft_in1k": "b0",
    "timm/efficientnet_b0.ra_in1k": "b0",
    "timm/tf_efficientnet_lite0.in1k": "lite0",
    "timm/tf_efficientnet_b0.ap_in1k": "b0",
}


def commit_of(repo: str) -> str:
    return hashlib.sha1(repo.encode()).hexdigest()


def add_to_cache(cache, repo: str, model=None, config: dict | None = None):
    """`repo` in huggingface_hub's cache layout (refs/main -> snapshots/<commit>/), holding
    `model` as timm writes it, or just `config`."""
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / commit_of(repo)
    if model is not None:
        save_for_hf(model, snapshot, safe_serialization=True)
    else:
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text(json.dumps(config))
    (snapshot.parents[1] / "refs").mkdir(exist_ok=True)
    (snapshot.parents[1] / "refs" / "main").write_text(commit_of(repo))


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
    batches = [r for r in read_input_sizes(tmp_path / "probe.jsonl") if r["stage"] == "test"]
    assert batches and min(r["min"] for r in batches) >= -1.0001 and max(r["max"] for r in batches) <= 1.0001
    assert min(r["min"] for r in batches) < -0.8  # dark pixels exist: ImageNet's statistics would give < -1.5
