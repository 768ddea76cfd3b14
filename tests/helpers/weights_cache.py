"""Published weights in offline caches the tests build: huggingface_hub's cache layout, filled
with randomly initialised timm models (what a test checks is loading, not accuracy)."""

import hashlib
import json
import shutil

# timm's own writer of its hub repository layout (config.json + model.safetensors); timm has no
# public name for it.
from timm.models._hub import save_for_hf


def commit_of(repo: str) -> str:
    return hashlib.sha1(repo.encode()).hexdigest()


def add_to_cache(cache, repo: str, model=None, config: dict | None = None, folder=None):
    """`repo` in huggingface_hub's cache layout (refs/main -> snapshots/<commit>/), holding
    `model` as timm writes it, a `folder`'s files (as if uploaded), or just `config`."""
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / commit_of(repo)
    if model is not None:
        save_for_hf(model, snapshot, safe_serialization=True)
    elif folder is not None:
        shutil.copytree(folder, snapshot)
    else:
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text(json.dumps(config))
    (snapshot.parents[1] / "refs").mkdir(exist_ok=True)
    (snapshot.parents[1] / "refs" / "main").write_text(commit_of(repo))


REPOS = {  # a TF-ported B variant, a PyTorch-trained B variant, a TF Lite variant, AdvProp, two V2 TF ports
    "timm/tf_efficientnet_b0.ns_jft_in1k": "b0",
    "timm/efficientnet_b0.ra_in1k": "b0",
    "timm/tf_efficientnet_lite0.in1k": "lite0",
    "timm/tf_efficientnet_b0.ap_in1k": "b0",
    "timm/tf_efficientnetv2_b0.in1k": "v2-b0",
    "timm/tf_efficientnetv2_s.in21k_ft_in1k": "v2-s",
}
