"""Weights & Biases logging that never prompts and never hangs without a network."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_info


def wandb_credentials_available() -> bool:
    """An API key in WANDB_API_KEY or in ~/.netrc (where `wandb login` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC") or Path.home() / ".netrc").authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger, offline unless credentials exist or WANDB_MODE says otherwise.

    Offline runs are written under `save_dir`/wandb/ and can be uploaded later with
    `wandb sync <that run folder>`.
    """

    def __init__(self, project: str = "effnet-lightning", save_dir: str = "runs", offline: bool | None = None, **kwargs):
        if offline is None:
            offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun") or (
                "WANDB_MODE" not in os.environ and not wandb_credentials_available()
            )
        if offline:
            rank_zero_info(f"W&B: no credentials, logging offline under {save_dir}/wandb (upload later with `wandb sync`)")
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(project=project, save_dir=save_dir, offline=offline, **kwargs)
