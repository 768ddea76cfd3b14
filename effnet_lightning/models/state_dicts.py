"""Weights files in any common EfficientNet layout, mapped onto ours.

Layouts (recognised from the keys, after any wrapper prefix such as Lightning's `model.`
or DDP's `module.`):

    effnet       stem.conv / blocks.N.dw.conv / head.conv / classifier    (this project)
    torchvision  features.0.0 / features.S.B.block.I.0 / classifier.1
    timm         conv_stem / blocks.S.B.conv_dw / conv_head / classifier
    lukemelas    _conv_stem / _blocks.N._depthwise_conv / _conv_head / _fc (EfficientNet-PyTorch)

Every tensor of the model must be filled, with the right shape, and every tensor of the file
used; the one allowed difference is the classifier (a new head for another class count).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from effnet_lightning.models.efficientnet import EfficientNet

log = logging.getLogger(__name__)

STEM_KEYS = {
    "lukemelas": "_conv_stem.weight",
    "timm": "conv_stem.weight",
    "torchvision": "features.0.0.weight",
    "effnet": "stem.conv.weight",
}
CLASSIFIERS = {"lukemelas": "_fc", "timm": "classifier", "torchvision": "classifier.1", "effnet": "classifier"}
LAYOUTS = tuple(STEM_KEYS)
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")


class WeightsError(ValueError):
    """A weights file or state dict that cannot be loaded as asked; the message says why."""


def read_state_dict(path: str | os.PathLike, weights_only: bool = True) -> dict[str, torch.Tensor]:
    """Tensors from a .pth / .pt / .bin / .safetensors / Lightning .ckpt file. Pickled code in
    the file never runs unless `weights_only` is False (only for files you trust)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path} (give a path to a {'/'.join(WEIGHT_SUFFIXES)} file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:
            raise WeightsError(f"cannot read {path} as safetensors: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"{path} holds pickled Python objects that are not plain tensors, so it was not loaded "
            f"({first}); re-save it with torch.save(model.state_dict(), ...) or as .safetensors, or, only if you "
            f"trust the file's source, pass --model.weights_only false to run the code in it"
        ) from None
    except Exception as e:
        raise WeightsError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from None
    return unwrap_state_dict(obj, str(path))


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A Lightning checkpoint of this project, read without running pickled code and without
    copying its tensors into memory (mmap): every reader of checkpoints goes through here."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"no such checkpoint file: {path}")
    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception as e:
        raise WeightsError(
            f"{path} is not a readable checkpoint ({type(e).__name__}): pick another file, e.g. the run's last.ckpt"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise WeightsError(f"{path} is not a Lightning checkpoint (no state_dict): pick a .ckpt written by fit")
    return checkpoint


def unwrap_state_dict(obj, source: str = "weights") -> dict[str, torch.Tensor]:
    """The tensor mapping inside checkpoint wrappers ({'state_dict': ...}, {'model': ...})."""
    while isinstance(obj, Mapping) and not _is_tensor_mapping(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{source} holds no state dict (found {type(obj).__name__})")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_tensor_mapping(obj: Mapping) -> bool:
    return any(isinstance(v, torch.Tensor) for v in obj.values())


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """The layout name and the state dict with any wrapper prefix (`model.`, `module.`) removed."""
    for key in state_dict:
        for layout, stem in STEM_KEYS.items():
            if key.endswith(stem) and (key == stem or key[-len(stem) - 1] == "."):
                prefix = key[: -len(stem)]
                stripped = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
                return layout, stripped
    sample = ", ".join(list(state_dict)[:3])
    raise WeightsError(
        f"unrecognised weights layout (first keys: {sample}); expected EfficientNet weights from "
        f"torchvision, timm, EfficientNet-PyTorch or this project, with a key like "
        f"{' / '.join(STEM_KEYS.values())}"
    )


def _module_map(model: EfficientNet, layout: str) -> dict[str, str]:
    """Our module names -> the layout's, for every module that holds tensors."""
    if layout == "effnet":
        return {name: name for name, m in model.named_modules() if _holds_tensors(m)}
    if layout == "torchvision":
        head = f"features.{model.blocks[-1].cfg.row + 2}"
        names = {"stem.conv": "features.0.0", "stem.bn": "features.0.1", "head.conv": f"{head}.0"}
        names["head.bn"] = f"{head}.1"
    elif layout == "timm":
        names = {"stem.conv": "conv_stem", "stem.bn": "bn1", "head.conv": "conv_head", "head.bn": "bn2"}
    else:
        names = {"stem.conv": "_conv_stem", "stem.bn": "_bn0", "head.conv": "_conv_head", "head.bn": "_bn1"}
    names["classifier"] = CLASSIFIERS[layout]
    for n, block in enumerate(model.blocks):
        ours = [f"blocks.{n}.{part}" for part in _block_parts(block)]
        names.update(zip(ours, _block_names(block, n, layout)))
    return names


def _block_parts(block) -> list[str]:
    if block.cfg.fused:
        return ["conv.conv", "conv.bn"] + (["project.conv", "project.bn"] if block.cfg.expand_ratio != 1 else [])
    parts = ["expand.conv", "expand.bn"] if block.cfg.expand_ratio != 1 else []
    parts += ["dw.conv", "dw.bn"]
    parts += ["se.reduce", "se.expand"] if block.cfg.se_channels else []
    return parts + ["project.conv", "project.bn"]


def _block_names(block, n: int, layout: str) -> list[str]:
    """The layout's names for `_block_parts(block)`, in the same order."""
    cfg = block.cfg
    expand, se = cfg.expand_ratio != 1, cfg.se_channels > 0
    if cfg.fused:
        return _fused_block_names(cfg, layout)
    if layout == "lukemelas":
        base = f"_blocks.{n}."
        names = ["_expand_conv", "_bn0"] if expand else []
        names += ["_depthwise_conv", "_bn1"] + (["_se_reduce", "_se_expand"] if se else [])
        return [base + x for x in names + ["_project_conv", "_bn2"]]
    if layout == "timm":
        base = f"blocks.{cfg.row}.{cfg.index}."
        se_names = ["se.conv_reduce", "se.conv_expand"] if se else []
        if expand:  # timm InvertedResidual
            names = ["conv_pw", "bn1", "conv_dw", "bn2"] + se_names + ["conv_pwl", "bn3"]
        else:  # timm DepthwiseSeparableConv
            names = ["conv_dw", "bn1"] + se_names + ["conv_pw", "bn2"]
        return [base + x for x in names]
    # torchvision: block.I is a Conv2dNormActivation (.0 conv, .1 bn) or SqueezeExcitation.
    base = f"features.{cfg.row + 1}.{cfg.index}.block."
    names, i = [], 0
    if expand:
        names += [f"{i}.0", f"{i}.1"]
        i += 1
    names += [f"{i}.0", f"{i}.1"]
    i += 1
    if se:
        names += [f"{i}.fc1", f"{i}.fc2"]
        i += 1
    return [base + x for x in names + [f"{i}.0", f"{i}.1"]]


def _fused_block_names(cfg, layout: str) -> list[str]:
    """The layout's names for a Fused-MBConv's convolution (and projection, where it expands)."""
    expand = cfg.expand_ratio != 1
    if layout == "timm":  # EdgeResidual, or ConvBnAct without expansion
        names = ["conv_exp", "bn1", "conv_pwl", "bn2"] if expand else ["conv", "bn1"]
        return [f"blocks.{cfg.row}.{cfg.index}.{x}" for x in names]
    if layout == "torchvision":  # FusedMBConv: block.0 (and block.1 where it expands)
        names = ["0.0", "0.1", "1.0", "1.1"] if expand else ["0.0", "0.1"]
        return [f"features.{cfg.row + 1}.{cfg.index}.block.{x}" for x in names]
    raise WeightsError(
        "EfficientNet-PyTorch weights hold no EfficientNetV2 (no Fused-MBConv blocks): load V2 weights from timm, "
        "torchvision or this project"
    )


def _holds_tensors(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))


def key_map(model: EfficientNet, layout: str) -> dict[str, str]:
    """Every key of `model.state_dict()` -> the key holding that tensor in `layout`."""
    if layout not in STEM_KEYS:
        raise WeightsError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    modules = _module_map(model, layout)
    mapping = {}
    for key in model.state_dict():
        module, _, tensor = key.rpartition(".")
        mapping[key] = f"{modules[module]}.{tensor}"
    return mapping


def load_weights(
    model: EfficientNet, state_dict: Mapping[str, torch.Tensor], source: str = "weights", optional: tuple[str, ...] = ()
) -> tuple[str, bool]:
    """Copy a state dict of any known layout into `model`, checking every key and shape.

    A classifier whose class count differs is left freshly initialised (logged); a stem with
    another input-channel count is adapted (summed for 1 channel); tensors of ours whose names
    start with one of `optional` may be missing (they keep their initialisation: a backbone
    does not use them). Returns the layout name and whether the classifier was loaded.
    """
    layout, state_dict = detect_layout(state_dict)
    mapping = key_map(model, layout)
    own = model.state_dict()
    new_state, used = {}, set()
    ours_head = [k for k in ("classifier.weight", "classifier.bias") if k in own]
    theirs_head = {f"{CLASSIFIERS[layout]}.{t}" for t in ("weight", "bias")}
    keep_head = bool(ours_head) and all(
        mapping[k] in state_dict and state_dict[mapping[k]].shape == own[k].shape for k in ours_head
    )
    if ours_head and not keep_head:
        theirs = state_dict.get(mapping["classifier.weight"])
        n_theirs = "no" if theirs is None else theirs.shape[0]
        log.info(
            "%s: classifier has %s classes, model has %d: backbone loaded, classifier freshly initialised",
            source,
            n_theirs,
            model.num_classes,
        )
    for ours, theirs in mapping.items():
        if ours in ours_head and not keep_head:
            new_state[ours] = own[ours]
            continue
        if theirs not in state_dict:
            # a counter, not weights (some exporters drop it), or a tensor the caller does not need
            if ours.endswith("num_batches_tracked") or ours.startswith(optional):
                new_state[ours] = own[ours]
                continue
            raise WeightsError(
                f"{source} ({layout} layout) has no tensor {theirs!r} for {ours!r}: "
                f"are these weights for variant {model.variant.name}?"
            )
        tensor = state_dict[theirs]
        if ours == "stem.conv.weight" and tensor.ndim == 4 and tensor.shape[1] != own[ours].shape[1]:
            tensor = adapt_input_channels(tensor, own[ours].shape[1])
            log.info(
                "%s: stem adapted from %d to %d input channels", source, state_dict[theirs].shape[1], tensor.shape[1]
            )
        if tensor.shape != own[ours].shape:
            raise WeightsError(
                f"{source} ({layout} layout): {theirs!r} has shape {tuple(tensor.shape)} but {ours!r} of "
                f"variant {model.variant.name} needs {tuple(own[ours].shape)}: are these weights for another variant?"
            )
        new_state[ours] = tensor
        used.add(theirs)
    unused = [k for k in state_dict if k not in used and k not in theirs_head]
    if unused:
        raise WeightsError(
            f"{source} ({layout} layout) has {len(unused)} tensors that variant {model.variant.name} has no place "
            f"for, first {unused[0]!r}: are these weights for a larger variant?"
        )
    model.load_state_dict(new_state, strict=True)
    return layout, keep_head


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Stem weights for another input-channel count: summed over RGB for grayscale, tiled
    and rescaled otherwise, so that a grey image gives the response the RGB image would."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)
