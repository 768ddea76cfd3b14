"""Every private Lightning and torch member this project relies on, in one place.

Private members change without notice between releases. Each one used is listed in `PRIVATE`
with where it is used and why no public API does the job; `tests/unit/test_compat.py` checks that
each still exists with the parameters relied on, and names it when it does not, so an upgrade
fails there, in one line per member, rather than somewhere in a fit.

Uses that are not overrides go through the functions below. Overrides of private methods are
the mixins below (`CLIHooks`, `CheckpointHooks`): each hands a private step to a public-named
method of the class that mixes it in, so no other file names a private member.

Lightning is imported inside the functions: `models/` uses the torch entries and never imports
Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PrivateMember:
    """owner: the class or module that has it; name: the member (dotted for a path of
    attributes); params: the parameters relied on, in order, for a callable (None: an
    attribute); used_in: the project's files; why: why nothing public does it."""

    owner: str
    name: str
    params: tuple[str, ...] | None
    used_in: str
    why: str

    @property
    def qualname(self) -> str:
        return f"{self.owner}.{self.name}"


PRIVATE: tuple[PrivateMember, ...] = (
    # Overrides (in the mixins below; used_in: the class that mixes them in)
    PrivateMember(
        "lightning.pytorch.cli.LightningCLI",
        "_instantiate_trainer",
        ("self", "config", "callbacks"),
        "effnet_lightning/cli/app.py",
        "no public hook leaves out a callback made from class arguments before the Trainer is built",
    ),
    PrivateMember(
        "lightning.pytorch.cli.LightningCLI",
        "_prepare_subcommand_parser",
        ("self", "klass", "subcommand", "kwargs"),
        "effnet_lightning/cli/app.py",
        "no public hook sets per-subcommand defaults",
    ),
    PrivateMember(
        "lightning.pytorch.cli.LightningCLI",
        "_parse_ckpt_path",
        ("self",),
        "effnet_lightning/cli/app.py",
        "the one hook between parsing and instantiation that may replace the config with a checkpoint's",
    ),
    PrivateMember(
        "lightning.pytorch.callbacks.ModelCheckpoint",
        "_save_checkpoint",
        ("self", "trainer", "filepath"),
        "effnet_lightning/callbacks/checkpoint.py",
        "the one place every checkpoint file is written: the run record follows each write",
    ),
    # Calls and attributes (through the functions below)
    PrivateMember(
        "lightning.pytorch.callbacks.ModelCheckpoint",
        "_save_last_checkpoint",
        ("self", "trainer", "monitor_candidates"),
        "effnet_lightning/callbacks/checkpoint.py",
        "writes last.ckpt outside Lightning's own schedule (a stop signal, the end of an epoch)",
    ),
    PrivateMember(
        "lightning.pytorch.callbacks.ModelCheckpoint",
        "_monitor_candidates",
        ("self", "trainer"),
        "effnet_lightning/callbacks/checkpoint.py",
        "the metrics a checkpoint's name and score are made of",
    ),
    PrivateMember(
        "lightning.pytorch.callbacks.ModelCheckpoint",
        "_should_skip_saving_checkpoint",
        ("self", "trainer"),
        "effnet_lightning/callbacks/checkpoint.py",
        "whether Lightning already saved at this step",
    ),
    PrivateMember(
        "lightning.pytorch.callbacks.WeightAveraging",
        "_average_model",
        None,
        "effnet_lightning/callbacks/ema.py",
        "the averaged copy is not exposed publicly; validating the raw weights needs it",
    ),
    PrivateMember(
        "lightning.pytorch.callbacks.WeightAveraging",
        "_swap_models",
        ("self", "pl_module"),
        "effnet_lightning/callbacks/ema.py",
        "puts the raw weights back when a fit stops during validation",
    ),
    PrivateMember(
        "lightning.pytorch.Trainer",
        "_signal_connector.received_sigterm",
        None,
        "effnet_lightning/callbacks/graceful_interrupt.py",
        "no public API stops a fit at the next batch boundary across processes",
    ),
    PrivateMember(
        "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector",
        "register_signal_handlers",
        ("self",),
        "effnet_lightning/callbacks/graceful_interrupt.py",
        "no public switch keeps Lightning's SIGTERM handler (a collective inside a signal handler) out of a fit",
    ),
    PrivateMember(
        "lightning.pytorch.Trainer",
        "fit_loop.epoch_loop.batch_progress.current.completed",
        None,
        "effnet_lightning/data/datamodule.py",
        "the batches the current epoch has completed, to save the loader's position mid-epoch",
    ),
    PrivateMember(
        "lightning.pytorch.strategies.DDPStrategy",
        "_ddp_kwargs",
        None,
        "effnet_lightning/training/module.py",
        "find_unused_parameters is taken only at construction, which the user's config owns",
    ),
    PrivateMember(
        "lightning.pytorch.LightningModule",
        "_trainer",
        None,
        "effnet_lightning/training/module.py",
        "`trainer` raises when the module is not attached; nothing public asks whether it is",
    ),
    PrivateMember(
        "torch.nn.modules.batchnorm",
        "_BatchNorm",
        None,
        "effnet_lightning/training/finetuning.py",
        "the one base class of every BatchNorm (1d, 2d, 3d, SyncBatchNorm)",
    ),
    PrivateMember(
        "torch",
        "_foreach_lerp_",
        ("self", "tensors1", "weight"),
        "effnet_lightning/callbacks/ema.py",
        "one fused update of every averaged tensor instead of a Python loop over them",
    ),
    PrivateMember(
        "torch.ops.mkldnn",
        "_convolution_pointwise",
        ("X", "W", "B", "padding", "stride", "dilation", "groups", "attr", "scalars", "algorithm"),
        "effnet_lightning/models/inference.py",
        "PyTorch has no public eager convolution with a fused activation",
    ),
)


def request_stop(trainer) -> None:
    """Stop the fit at the end of the current batch (Lightning's own SIGTERM flag). Under DDP
    every process must set it at the same batch."""
    trainer._signal_connector.received_sigterm = True


def keep_lightning_off_signals(trainer) -> None:
    """Have this fit's Trainer not install its SIGTERM / SIGUSR1 handlers (it would after the
    callbacks' `on_fit_start`): the project's own handle the stop signals."""
    trainer._signal_connector.received_sigterm = False
    trainer._signal_connector.register_signal_handlers = lambda: None


def completed_batches(trainer) -> int:
    """The training batches the current epoch has completed."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.completed


def find_unused_parameters(strategy) -> None:
    """Make a DDP strategy not yet wrapping its model tolerate parameters without gradients."""
    strategy._ddp_kwargs["find_unused_parameters"] = True


def attached_trainer(module):
    """The trainer `module` is attached to, or None (`module.trainer` raises when detached)."""
    return module._trainer


def save_last_checkpoint(callback, trainer) -> None:
    """Have a ModelCheckpoint write its `last` checkpoint now."""
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def saved_at_this_step(callback, trainer) -> bool:
    """Whether a ModelCheckpoint has already saved at this step (or must not save now)."""
    return callback._should_skip_saving_checkpoint(trainer)


def averaged_model(callback) -> torch.nn.Module | None:
    """A WeightAveraging callback's averaged copy (None before fit sets it up or when off)."""
    return callback._average_model


def swap_models(callback, pl_module) -> None:
    """Exchange the weights of a WeightAveraging callback's copy and the module's."""
    callback._swap_models(pl_module)


def is_batchnorm(module: torch.nn.Module) -> bool:
    """Whether `module` is a BatchNorm of any dimension, synchronised or not."""
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm)


def foreach_lerp_(starts: list[torch.Tensor], ends: list[torch.Tensor], weight: float) -> None:
    """starts += weight * (ends - starts), for every pair at once."""
    torch._foreach_lerp_(starts, ends, weight)


def fused_conv_activation() -> Callable | None:
    """oneDNN's convolution with a fused activation (what inductor's CPU code calls), or None
    in a build without oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


class CLIHooks:
    """Mixed into a LightningCLI subclass, before LightningCLI. Lightning's private steps call:
    `trainer_callbacks(config, callbacks)`, the callbacks the Trainer is built with;
    `set_subcommand_defaults(parser, subcommand)`, once each subcommand's parser is built;
    `settle_config()`, in place of Lightning's reading of `ckpt_path` (between parsing and
    instantiation, where the config may still be replaced)."""

    def _instantiate_trainer(self, config: dict, callbacks: list):
        return super()._instantiate_trainer(config, self.trainer_callbacks(config, callbacks))

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        self.set_subcommand_defaults(parser, subcommand)
        return parser

    def _parse_ckpt_path(self) -> None:
        self.settle_config()


class CheckpointHooks:
    """Mixed into a ModelCheckpoint subclass, before ModelCheckpoint: `after_save(trainer,
    filepath)` runs after every checkpoint file is written."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self.after_save(trainer, filepath)
