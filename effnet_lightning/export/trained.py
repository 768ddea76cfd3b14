"""What exporting a trained module (the export subcommand) adds to `export_model`: the
checkpoint loaded into the module, and the output folder named after it."""

from __future__ import annotations

from pathlib import Path

import torch

from effnet_lightning.models.state_dicts import read_checkpoint


def load_trained(module, ckpt_path: str | None) -> None:
    """The checkpoint's weights into the module; without one, the module's own weights must
    include a trained classifier."""
    if ckpt_path:
        checkpoint = read_checkpoint(ckpt_path)
        module.load_state_dict(checkpoint["state_dict"])
        if checkpoint.get("thresholds") is not None:  # a multi-label model's, chosen on validation
            module.thresholds = torch.tensor(checkpoint["thresholds"])
    elif not module.model.provenance.head_loaded:
        raise ValueError("nothing trained to export: pass --ckpt_path CKPT, or --model.weights with a classifier")


def output_folder(output_dir: str | None, root: str, module, ckpt_path: str | None) -> Path:
    """`output_dir`, else <root>/export/<run>-<checkpoint name> (<variant>-pretrained without a
    checkpoint); refused when it is a file."""
    out = Path(output_dir or Path(root) / "export" / export_name(module, ckpt_path))
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {out} is a file: give a folder (it is made if missing)")
    return out


def export_name(module, ckpt_path: str | None) -> str:
    """<logger name>-<version>-<checkpoint>: last.ckpt of two runs do not share a folder."""
    if not ckpt_path:
        return f"{module.hparams.variant}-pretrained"
    ckpt = Path(ckpt_path).resolve()
    in_run = ckpt.parent.name == "checkpoints"
    run = [ckpt.parents[2].name, ckpt.parents[1].name] if in_run else [ckpt.parent.name]
    return "-".join([*filter(None, run), ckpt.stem])
