"""Weights & Biases logging that never prompts and never hangs without a network.

Settings follow W&B's own order: what is passed explicitly (flags, config), then W&B's
environment variables (WANDB_PROJECT, WANDB_DIR, WANDB_MODE, WANDB_BASE_URL, WANDB_API_KEY,
WANDB_IDENTITY_TOKEN_FILE; wandb itself reads WANDB_ENTITY and the rest), then this project's
defaults.
"""

from __future__ import annotations

import configparser
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_info

DEFAULT_PROJECT = "effnet-lightning"

DEFAULT_SAVE_DIR = "runs"

# The W&B cloud: `wandb login` writes one of these into .netrc, depending on the client's version,
# and wandb accepts either for it.
CLOUD_HOSTS = ("api.wandb.ai", "api.forge.coreweave.com")


def wandb_base_url(environ: Mapping[str, str]) -> str | None:
    """The W&B server in use: WANDB_BASE_URL, else the one `wandb login --host URL` saved in W&B's
    settings file ($WANDB_CONFIG_DIR/settings or ~/.config/wandb/settings); None: the W&B cloud."""
    if environ.get("WANDB_BASE_URL"):
        return environ["WANDB_BASE_URL"]
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    config_dir = Path(environ["WANDB_CONFIG_DIR"]).expanduser() if environ.get("WANDB_CONFIG_DIR") else None
    parser = configparser.ConfigParser()
    try:
        parser.read((config_dir or home / ".config" / "wandb") / "settings")
    except (OSError, configparser.Error):
        return None
    return parser.get("default", "base_url", fallback=None)


def netrc_machines(base_url: str | None) -> tuple[str, ...]:
    """The .netrc machine names wandb takes an API key from for a server: the URL's host[:port], as
    `wandb login --host URL` writes it; for the W&B cloud either of its names."""
    netloc = urlsplit(base_url).netloc if base_url else CLOUD_HOSTS[0]
    return CLOUD_HOSTS if netloc in CLOUD_HOSTS else (netloc,)


def default_netrc_path(environ: Mapping[str, str]) -> Path:
    """$NETRC, else ~/.netrc (~/_netrc where only that exists), where wandb looks."""
    if environ.get("NETRC"):
        return Path(environ["NETRC"]).expanduser()
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    unix, windows = home / ".netrc", home / "_netrc"
    return windows if windows.exists() and not unix.exists() else unix


def wandb_credentials_available(environ: Mapping[str, str] | None = None, netrc_path: str | Path | None = None) -> bool:
    """Whether wandb would log in without asking: an API key in WANDB_API_KEY, an existing
    WANDB_IDENTITY_TOKEN_FILE, or an API key in .netrc for the server in use (`wandb_base_url`)."""
    environ = os.environ if environ is None else environ
    if environ.get("WANDB_API_KEY"):
        return True
    token_file = environ.get("WANDB_IDENTITY_TOKEN_FILE")
    if token_file and Path(token_file).expanduser().is_file():
        return True
    try:
        entries = netrc.netrc(netrc_path or default_netrc_path(environ))
    except (OSError, netrc.NetrcParseError):
        return False
    # An entry without a password is no API key (wandb skips it too).
    machines = netrc_machines(wandb_base_url(environ))
    return any((entries.authenticators(m) or (None, None, None))[2] for m in machines)


def resolve_wandb_settings(
    project: str | None,
    save_dir: str | None,
    offline: bool | None,
    environ: Mapping[str, str] | None = None,
    netrc_path: str | Path | None = None,
) -> tuple[str, str, bool]:
    """(project, save_dir, offline) for a run: each given value (not None) wins, then WANDB_PROJECT /
    WANDB_DIR / WANDB_MODE, then the defaults: the project "effnet-lightning", runs/, and offline
    exactly when wandb would find no credentials (it would otherwise prompt or fail)."""
    environ = os.environ if environ is None else environ
    project = project or environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
    save_dir = save_dir or environ.get("WANDB_DIR") or DEFAULT_SAVE_DIR
    if offline is None:
        mode = environ.get("WANDB_MODE")
        # Other modes (online, disabled, ...) are wandb's to apply.
        offline = mode in ("offline", "dryrun") if mode else not wandb_credentials_available(environ, netrc_path)
    return project, save_dir, offline


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger, offline unless credentials exist or WANDB_MODE says otherwise.

    Offline runs are written under `save_dir`/wandb/ and can be uploaded later with
    `wandb sync <that run folder>`.

    Args:
        project: None: WANDB_PROJECT, else "effnet-lightning".
        save_dir: the folder that holds wandb/; None: WANDB_DIR, else runs.
        offline: None: as WANDB_MODE says, else offline when there are no credentials for the W&B
            server in use (WANDB_BASE_URL, the one of `wandb login --host`, or the W&B cloud).
    """

    def __init__(self, project: str | None = None, save_dir: str | None = None, offline: bool | None = None, **kwargs):
        # Lightning's own alias of save_dir counts as given too.
        save_dir = save_dir if save_dir is not None else kwargs.pop("dir", None)
        mode_set = offline is not None or bool(os.environ.get("WANDB_MODE"))
        project, save_dir, offline = resolve_wandb_settings(project, save_dir, offline)
        if offline:
            why = "offline mode" if mode_set else f"no credentials for {wandb_base_url(os.environ) or 'W&B'}"
            rank_zero_info(f"W&B: {why}, logging offline under {save_dir}/wandb (upload later with `wandb sync`)")
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(project=project, save_dir=save_dir, offline=offline, **kwargs)
