"""The hub format: a `hub/` folder in timm's Hugging Face Hub layout (`config.json`,
`model.safetensors` in timm's key names, a model card `README.md`), checked by loading it back
with this project's loader and, where timm is installed, with timm's; and its upload
(`export --push_to`). Reading such folders and repositories is `effnet_lightning/models/hub.py`.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

from effnet_lightning.export.formats import Checked, Format
from effnet_lightning.export.job import ExportJob, compare_logits
from effnet_lightning.models.factory import create_model
from effnet_lightning.models.hub import parse_architecture, timm_architecture_name
from effnet_lightning.models.preprocessing import Preprocessing
from effnet_lightning.models.state_dicts import WeightsError, key_map


def timm_architecture(model) -> tuple[str, dict]:
    """timm's architecture name and `model_args` for one of our networks; networks timm has no
    architecture for are refused in one line."""
    variant, build = model.variant.name, model.provenance.build
    lite = variant.startswith("lite")
    # timm builds v2-b0 to v2-b3 only as TF ports (with symmetric padding: their port without
    # SAME) and v2-rw-t only as its own (with SAME padding: pad_type "same")
    tf = (build.padding == "same" or variant.startswith("v2-b")) and variant != "v2-rw-t"
    architecture = timm_architecture_name(variant, tf)
    try:
        implied = parse_architecture(architecture)[1]
    except WeightsError:
        raise WeightsError(
            f"variant {variant} is a custom compound scaling that timm has no architecture for: export it as "
            f"onnx, torchscript or safetensors instead of hub"
        ) from None
    if build.activation is not None or (not build.se and not lite):
        raise WeightsError(
            f"{variant} built with {'activation ' + build.activation if build.activation else 'no squeeze-and-excitation'}"
            f" has no timm architecture: export it as onnx, torchscript or safetensors instead of hub"
        )
    args = {"in_chans": build.in_channels, "num_classes": model.num_classes}
    for key in ("bn_eps", "bn_momentum"):  # timm's keyword names are ours
        if getattr(build, key) != getattr(implied, key):
            args[key] = getattr(build, key)
    if build.padding != implied.padding:
        args["pad_type"] = "same" if build.padding == "same" else ""
    return architecture, args


def _crop_pct(pre: Preprocessing) -> float:
    """The crop fraction whose floor(crop / fraction) is our resize size, as timm computes it."""
    pct = pre.crop_size / pre.resize_size
    while math.floor(pre.crop_size / pct) < pre.resize_size:
        pct = math.nextafter(pct, 0.0)
    return pct


def hub_config(model, class_names: list[str]) -> dict:
    """timm's `config.json` for our network: architecture, classes, preprocessing."""
    architecture, args = timm_architecture(model)
    pre, channels = model.provenance.preprocessing, model.provenance.build.in_channels
    mean, std = list(pre.mean), list(pre.std)
    if channels != len(mean):  # one grey channel: the mean of the RGB statistics, as timm does
        mean, std = [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
    size = pre.crop_size
    pretrained_cfg = {
        "input_size": [channels, size, size],
        "fixed_input_size": False,
        "interpolation": pre.interpolation,
        "crop_pct": _crop_pct(pre),
        "crop_mode": pre.crop_mode,
        "mean": mean,
        "std": std,
        "num_classes": model.num_classes,
        "pool_size": [math.ceil(size / 32)] * 2,
        "first_conv": "conv_stem",
        "classifier": "classifier",
    }
    if pre.test_size:
        pretrained_cfg["test_input_size"] = [channels, pre.test_size, pre.test_size]
    return {
        "architecture": architecture,
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "global_pool": "avg",
        "model_args": args,
        "label_names": list(class_names),
        "pretrained_cfg": pretrained_cfg,
    }


def write_folder(model, folder: Path, class_names: list[str], card: str) -> dict:
    """`config.json`, `model.safetensors` (timm's key names) and the model card `README.md` in
    `folder`; returns the config."""
    from safetensors.torch import save_file

    config = hub_config(model, class_names)
    folder.mkdir(parents=True, exist_ok=True)
    names = key_map(model, "timm")
    state = {names[k]: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "README.md").write_text(card)
    return config


def model_card(config: dict, source: str | None, evaluation: dict[str, str], repo: str | None = None) -> str:
    """The repository's README.md: what the network is, its classes and preprocessing, how to
    load it (from `repo` where known), and the evaluation reports (`{split: report markdown}`)
    of the checkpoint exported."""
    cfg, names = config["pretrained_cfg"], config["label_names"]
    name = f"hf-hub:{repo}" if repo else "hf-hub:<user>/<repository>"
    size = cfg["input_size"][-1]
    resize = math.floor(size / cfg["crop_pct"])
    lines = [
        "---",
        "library_name: timm",
        "tags:",
        "- image-classification",
        "- timm",
        "- efficientnet",
        "---",
        "",
        f"# {config['architecture']}, {config['num_classes']} classes",
        "",
        f"An EfficientNet ({config['architecture']}) fine-tuned or trained with effnet-lightning"
        + (f", from `{source}`" if source else "")
        + ".",
        "",
        f"- Classes ({len(names)}): {', '.join(names[:20])}{', ...' if len(names) > 20 else ''}",
        f"- Input: {cfg['input_size'][0]} x {size} x {size}: {resize} px "
        + ("both sides" if cfg["crop_mode"] == "squash" else "short side")
        + f" ({cfg['interpolation']}), "
        + f"centre crop, mean {[round(m, 4) for m in cfg['mean']]}, std {[round(s, 4) for s in cfg['std']]}",
        "",
        "## Use",
        "",
        "```python",
        "import timm",
        f'model = timm.create_model("{name}", pretrained=True).eval()',
        "",
        "from effnet_lightning import create_model",
        f'model = create_model(weights="{name}").eval()',
        "```",
        "",
        "## Evaluation",
        "",
    ]
    if not evaluation:
        lines.append("No evaluation report was found beside the exported checkpoint.")
    for split, report in evaluation.items():
        body = report.split("\n", 1)[1] if report.startswith("# ") else report
        lines += [f"### {split}", "", body.strip().split("\n![", 1)[0].strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def require_token(repo: str) -> None:
    """A one-line error, before any work, when there is no token to upload to `repo` with."""
    from huggingface_hub import get_token

    if not get_token():
        raise WeightsError(f"--push_to {repo} needs a Hugging Face token: set HF_TOKEN or run `hf auth login`")


def push_folder(folder: Path, repo: str, private: bool = True) -> str:
    """Upload `folder` to the hub repository `repo` (created, private, if missing); returns the
    commit's URL."""
    from huggingface_hub import HfApi

    require_token(repo)
    api = HfApi()
    api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model", commit_message="Upload model")
    return str(getattr(info, "commit_url", info))


def write(job: ExportJob, path: Path) -> None:
    config = hub_config(job.model, list(job.class_names))
    card = model_card(config, job.source, job.evaluation, job.hub_repo)
    write_folder(job.model, path, list(job.class_names), card)


def check(job: ExportJob, path: Path) -> Checked:
    """Of the two loaders' logits, those farther from the model's are compared."""
    ours = create_model(weights=path).eval()
    try:
        import timm
    except ImportError:
        print("export: hub         (timm is not installed here: checked with this project's loader only)")
        return compare_logits(job, "hub", path, ours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = timm.create_model(f"local-dir:{path}", pretrained=True).eval()

    def farther(x):
        expected, a, b = job.model(x), ours(x), theirs(x)
        return a if (a - expected).abs().max() >= (b - expected).abs().max() else b

    return compare_logits(job, "hub", path, farther)


def refuse(job: ExportJob) -> None:
    timm_architecture(job.model)


FORMAT = Format(name="hub", file="hub", rank=40, write=write, check=check, refuse=refuse)
