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
