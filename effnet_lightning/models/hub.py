"""Published EfficientNet weights from the Hugging Face Hub, in timm's repository layout.

    create_model(weights="hf-hub:timm/tf_efficientnet_b3.ns_jft_in1k")       # the variant from the repo
    create_model("b3", weights="hf-hub:timm/tf_efficientnet_b3.ns_jft_in1k@<commit>")
    create_model("b3", weights="ns")                                        # a short name (`weights.py`)
    create_model(weights="export/run/hub")                                  # a folder in the same layout

A repository holds `config.json` (`architecture`, `num_classes`, optional `label_names` and
`model_args`, and `pretrained_cfg` with the input size, crop fraction, interpolation, mean
and std) and `model.safetensors` in timm's key names. The architecture gives the variant and
the build (`tf_` weights are TensorFlow ports: SAME padding and TF BatchNorm; `model_args` may
change the BatchNorm and input channels), the config the preprocessing and classes. Downloads
go through `huggingface_hub` (its cache, `HF_TOKEN`, `HF_HUB_OFFLINE`); the resolved commit is
recorded as the weights' revision. Writing a network of this project in the same layout
(`export --formats hub`, `--push_to`) is `effnet_lightning/export/hub.py`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from effnet_lightning.models.preprocessing import CROP_MODES, INTERPOLATIONS, Preprocessing
from effnet_lightning.models.provenance import TF_BUILD, BuildOptions
from effnet_lightning.models.state_dicts import WeightsError, read_state_dict

PREFIX = "hf-hub:"
# timm architecture names this project builds: (tf_)efficientnet_<variant>, and
# (tf_)efficientnetv2_<size> for the variant v2-<size> (efficientnetv2_rw_t: v2-rw-t)
_ARCHITECTURE = re.compile(
    r"^(tf_)?(?:efficientnet_(b[0-8]|l2|lite[0-4])|efficientnetv2_(b[0-3]|s|m|l|xl))$|^efficientnetv2_(rw_t)$"
)


def timm_architecture_name(variant: str, tf: bool) -> str:
    """timm's architecture name for one of our variant names (`tf`: its TensorFlow port)."""
    if variant.startswith("v2-"):
        family = f"efficientnetv2_{variant[3:].replace('-', '_')}"
    else:
        family = f"efficientnet_{variant}"
    return f"tf_{family}" if tf else family


@dataclass(frozen=True)
class HubWeights:
    """What a hub repository (or a local folder in its layout) says about its weights,
    downloaded and read on `load`. `categories` are the config's label names (empty when it has
    none)."""

    repo: str  # or the local folder
    revision: str | None  # the resolved commit; None for a local folder
    architecture: str
    variant: str
    build: BuildOptions
    preprocessing: Preprocessing
    num_classes: int
    categories: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.repo}@{self.revision}" if self.revision else self.repo

    def load(self):
        """The weights of the resolved commit, as a state dict in timm's key names."""
        for filename in ("model.safetensors", "pytorch_model.bin"):
            if self.revision is None:
                if (Path(self.repo) / filename).is_file():
                    return read_state_dict(Path(self.repo) / filename)
                continue
            try:
                return read_state_dict(_download(self.repo, filename, self.revision))
            except FileNotFoundError:
                continue
        raise WeightsError(f"{self.repo} has neither model.safetensors nor pytorch_model.bin")


def is_hub_name(weights) -> bool:
    return isinstance(weights, str) and weights.startswith(PREFIX)


def is_hub_folder(weights) -> bool:
    """A local folder in the hub layout (what `export --formats hub` writes)."""
    return isinstance(weights, (str, os.PathLike)) and (Path(weights).expanduser() / "config.json").is_file()


def parse_architecture(architecture: str, model_args: dict | None = None) -> tuple[str, BuildOptions]:
    """(variant, build options) of a timm architecture name and its `model_args` (input
    channels, BatchNorm, padding); other networks are refused."""
    match = _ARCHITECTURE.match(architecture or "")
    if not match:
        raise WeightsError(
            f"the repository holds a {architecture!r}, not an EfficientNet this project builds "
            f"((tf_)efficientnet_b0-b8, l2, lite0-lite4; (tf_)efficientnetv2_b0-b3, s, m, l, xl; efficientnetv2_rw_t)"
        )
    build, args = (TF_BUILD if match.group(1) else BuildOptions()), model_args or {}
    changes = {
        "in_channels": args.get("in_chans"),
        "bn_eps": args.get("bn_eps"),
        "bn_momentum": args.get("bn_momentum"),
    }
    if "pad_type" in args:
        changes["padding"] = "same" if args["pad_type"] == "same" else "symmetric"
    variant = match.group(2) or f"v2-{(match.group(3) or match.group(4)).replace('_', '-')}"
    return variant, replace(build, **{k: v for k, v in changes.items() if v is not None})


def preprocessing_from_config(cfg: dict) -> Preprocessing:
    """timm's pretrained_cfg -> our preprocessing (its test size, where it has one, becomes the
    default evaluation size)."""
    crop_mode = cfg.get("crop_mode", "center")
    if crop_mode not in CROP_MODES:
        raise WeightsError(f"crop_mode {crop_mode!r} is not supported: only {' and '.join(CROP_MODES)}")
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in INTERPOLATIONS:
        interpolation = "bicubic"
    size = int(cfg["input_size"][-1])
    pre = Preprocessing.for_resolution(
        size,
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=interpolation,
    )
    pre = replace(pre, crop_mode=crop_mode)
    test = cfg.get("test_input_size")
    return replace(pre, test_size=int(test[-1])) if test and int(test[-1]) != size else pre


def _download(repo: str, filename: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise WeightsError("hub weights need huggingface_hub: pip install huggingface_hub") from None
    at = f"@{revision}" if revision else ""
    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except LocalEntryNotFoundError:
        raise WeightsError(
            f"{repo}{at} is not in the Hugging Face cache and the hub cannot be reached: run `hf download {repo}"
            + (f" --revision {revision}" if revision else "")
            + "` where there is internet (or unset HF_HUB_OFFLINE)"
        ) from None
    except GatedRepoError:
        raise WeightsError(f"{repo} is gated: accept its terms on the hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise WeightsError(f"no repository {repo} on the hub (a private one needs HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise WeightsError(f"{repo} has no revision {revision!r}") from None
    except EntryNotFoundError:
        raise FileNotFoundError(f"{repo} has no {filename}") from None


def hub_weights(name: str | os.PathLike) -> HubWeights:
    """Read `hf-hub:<repo>[@revision]`'s config (downloading it and, on `load`, its weights),
    or a local folder's."""
    if is_hub_name(name):
        repo, _, revision = str(name)[len(PREFIX) :].partition("@")
        try:
            config_file = _download(repo, "config.json", revision or None)
        except FileNotFoundError:
            raise WeightsError(f"{repo} has no config.json: not a timm model repository") from None
        revision = config_file.parent.name  # the cache keeps each commit's files under snapshots/<commit>/
    else:
        config_file, revision = Path(name).expanduser() / "config.json", None
        repo = str(config_file.parent)
    config = json.loads(config_file.read_text())
    variant, build = parse_architecture(config.get("architecture", ""), config.get("model_args"))
    return HubWeights(
        repo=repo,
        revision=revision,
        architecture=config["architecture"],
        variant=variant,
        build=build,
        preprocessing=preprocessing_from_config(config.get("pretrained_cfg", config)),
        num_classes=int(config.get("num_classes", 1000)),
        categories=tuple(config.get("label_names") or ()),
    )
