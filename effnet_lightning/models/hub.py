"""Published EfficientNet weights from the Hugging Face Hub, in timm's repository layout.

    create_model(weights="hf-hub:timm/tf_efficientnet_b3.ns_jft_in1k")       # the variant from the repo
    create_model("b3", weights="hf-hub:timm/tf_efficientnet_b3.ns_jft_in1k@<commit>")
    create_model("b3", weights="ns")                                        # a short name (`SHORT_NAMES`)

A repository holds `config.json` (`architecture`, `num_classes`, optional `label_names`, and
`pretrained_cfg` with the input size, crop fraction, interpolation, mean and std) and
`model.safetensors` in timm's key names. The architecture gives the variant and the build
(`tf_` weights are TensorFlow ports: SAME padding and TF BatchNorm), the config the
preprocessing and classes. Downloads go through `huggingface_hub` (its cache, `HF_TOKEN`,
`HF_HUB_OFFLINE`); the resolved commit is recorded as the weights' revision.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from effnet_lightning.models.preprocessing import INTERPOLATIONS, Preprocessing
from effnet_lightning.models.provenance import TF_BUILD, BuildOptions
from effnet_lightning.models.state_dicts import WeightsError, read_state_dict

PREFIX = "hf-hub:"
# timm architecture names this project builds: (tf_)efficientnet_<variant>
_ARCHITECTURE = re.compile(r"^(tf_)?efficientnet_(b[0-8]|l2|lite[0-4])$")
# Short names of the published sets: {short name: {variant: timm repository}}. "tf" is the
# original TensorFlow ImageNet training, "ns" NoisyStudent (JFT-300M pseudo-labels), "ap"
# AdvProp, "aa" AutoAugment, "ra" / "ra2" timm's RandAugment-trained PyTorch weights.
SHORT_NAMES: dict[str, dict[str, str]] = {
    "tf": {
        **{f"b{i}": f"timm/tf_efficientnet_b{i}.in1k" for i in range(6)},
        **{f"lite{i}": f"timm/tf_efficientnet_lite{i}.in1k" for i in range(5)},
    },
    "ns": {
        **{f"b{i}": f"timm/tf_efficientnet_b{i}.ns_jft_in1k" for i in range(8)},
        "l2": "timm/tf_efficientnet_l2.ns_jft_in1k",
    },
    "ap": {f"b{i}": f"timm/tf_efficientnet_b{i}.ap_in1k" for i in range(9)},
    "aa": {f"b{i}": f"timm/tf_efficientnet_b{i}.aa_in1k" for i in range(8)},
    "ra": {
        "b0": "timm/efficientnet_b0.ra_in1k",
        "b2": "timm/efficientnet_b2.ra_in1k",
        "lite0": "timm/efficientnet_lite0.ra_in1k",
        "b5": "timm/tf_efficientnet_b5.ra_in1k",
        "b7": "timm/tf_efficientnet_b7.ra_in1k",
        "b8": "timm/tf_efficientnet_b8.ra_in1k",
    },
    "ra2": {"b3": "timm/efficientnet_b3.ra2_in1k", "b4": "timm/efficientnet_b4.ra2_in1k"},
}
# "imagenet" for the variants torchvision and the PyPI packages do not cover.
IMAGENET_FROM_HUB = {"lite3": "timm/tf_efficientnet_lite3.in1k", "lite4": "timm/tf_efficientnet_lite4.in1k"}


@dataclass(frozen=True)
class HubWeights:
    """What a hub repository says about its weights (downloaded and read on `load`). `categories`
    are the config's label names (empty when it has none)."""

    repo: str
    revision: str  # the resolved commit
    architecture: str
    variant: str
    build: BuildOptions
    preprocessing: Preprocessing
    num_classes: int
    categories: tuple[str, ...]
    test_size: int | None = None

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.repo}@{self.revision}"

    def load(self):
        """The weights of the resolved commit, as a state dict in timm's key names."""
        for filename in ("model.safetensors", "pytorch_model.bin"):
            try:
                return read_state_dict(_download(self.repo, filename, self.revision))
            except FileNotFoundError:
                continue
        raise WeightsError(f"{self.repo} has neither model.safetensors nor pytorch_model.bin")


def is_hub_name(weights) -> bool:
    return isinstance(weights, str) and weights.startswith(PREFIX)


def resolve_short_name(weights, variant: str | None) -> str | None:
    """`hf-hub:<repo>` for a short name ("ns", "ap", ...) of `variant`; None when `weights` is
    not a short name. A set that lacks the variant is a one-line error naming those it has."""
    if not isinstance(weights, str) or weights.lower() not in SHORT_NAMES:
        return None
    table = SHORT_NAMES[weights.lower()]
    if variant not in table:
        raise WeightsError(
            f"weights {weights!r} exist for {', '.join(table)}, not for variant {variant!r}: choose one of those, "
            f"or another set ({', '.join(SHORT_NAMES)}, imagenet)"
        )
    return PREFIX + table[variant]


def parse_architecture(architecture: str) -> tuple[str, BuildOptions]:
    """(variant, build options) of a timm architecture name; other networks are refused."""
    match = _ARCHITECTURE.match(architecture or "")
    if not match:
        raise WeightsError(
            f"the repository holds a {architecture!r}, not an EfficientNet this project builds "
            f"((tf_)efficientnet_b0-b8, l2, lite0-lite4)"
        )
    return match.group(2), (TF_BUILD if match.group(1) else BuildOptions())


def preprocessing_from_config(cfg: dict) -> tuple[Preprocessing, int | None]:
    """timm's pretrained_cfg -> (our preprocessing, the test size if the config has one)."""
    if cfg.get("crop_mode", "center") != "center":
        raise WeightsError(f"crop_mode {cfg['crop_mode']!r} is not supported: only centre crops")
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
    test = cfg.get("test_input_size")
    return pre, (int(test[-1]) if test else None)


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


def hub_weights(name: str) -> HubWeights:
    """Read `hf-hub:<repo>[@revision]`'s config (downloading it and, on `load`, its weights)."""
    spec = name[len(PREFIX) :]
    repo, _, revision = spec.partition("@")
    try:
        config_file = _download(repo, "config.json", revision or None)
    except FileNotFoundError:
        raise WeightsError(f"{repo} has no config.json: not a timm model repository") from None
    config = json.loads(config_file.read_text())
    variant, build = parse_architecture(config.get("architecture", ""))
    pre, test_size = preprocessing_from_config(config.get("pretrained_cfg", config))
    return HubWeights(
        repo=repo,
        # The cache keeps each commit's files under snapshots/<commit>/.
        revision=config_file.parent.name,
        architecture=config["architecture"],
        variant=variant,
        build=build,
        preprocessing=pre,
        num_classes=int(config.get("num_classes", 1000)),
        categories=tuple(config.get("label_names") or ()),
        test_size=test_size,
    )
