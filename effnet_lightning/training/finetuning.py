"""The fine-tuning policy: which parts of a pretrained network train in which epoch.

    policy = FineTuning(freeze_backbone_epochs=1, unfreeze_groups_per_epoch=4)
    message = policy.start_epoch(network, epoch)     # at each training epoch's start
    policy.hold_frozen_in_eval(network, epoch)        # before each training batch

The backbone can be frozen for the first epochs (only the classifier trains), then unfrozen
all at once or a few block groups per epoch from the top (`EfficientNet.block_groups`: stem,
one per row of the block table, head convolution); `freeze_bn` keeps every BatchNorm layer on
its stored statistics, scale and shift for the whole run. Parts that do not train run in eval
mode, so their BatchNorm uses the stored statistics.

Plain PyTorch, no Lightning: `EfficientNetModule` calls it from its hooks, with the epoch, or
None when no trainer is attached (nothing is frozen then).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from effnet_lightning.compat import is_batchnorm


def batchnorms(network: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer of `network`, in module order."""
    return [m for m in network.modules() if is_batchnorm(m)]


@dataclass(frozen=True)
class FineTuning:
    """Args:
    freeze_backbone_epochs: for this many epochs only the classifier trains (the backbone
        runs without gradients, its BatchNorm on the stored statistics), then the backbone.
    unfreeze_groups_per_epoch: after the frozen epochs, the backbone's block groups start
        training this many per epoch, from the classifier down; 0: all at once.
    freeze_bn: every BatchNorm layer on its stored statistics, scale and shift, all run long.
    """

    freeze_backbone_epochs: int = 0
    unfreeze_groups_per_epoch: int = 0
    freeze_bn: bool = False

    def __post_init__(self):
        if self.freeze_backbone_epochs < 0 or self.unfreeze_groups_per_epoch < 0:
            raise ValueError(
                f"need freeze_backbone_epochs >= 0 and unfreeze_groups_per_epoch >= 0, got "
                f"{self.freeze_backbone_epochs} and {self.unfreeze_groups_per_epoch}"
            )

    @property
    def freezes(self) -> bool:
        """Whether some epochs leave part of the backbone frozen."""
        return bool(self.freeze_backbone_epochs or self.unfreeze_groups_per_epoch)

    @property
    def needs_unused_parameters(self) -> bool:
        """Whether parameters go without gradients in some steps (DDP must not wait for them)."""
        return self.freezes

    @property
    def model_options(self) -> dict:
        """Build options the policy needs: frozen BatchNorm keeps its initial scale, and a zero
        one would switch the residual branches off for good."""
        return {"zero_init_residual": False} if self.freeze_bn else {}

    def fix_batchnorm(self, network: nn.Module) -> None:
        """With `freeze_bn`, no BatchNorm scale or shift gets a gradient (called once, at build)."""
        if self.freeze_bn:
            for bn in batchnorms(network):
                bn.requires_grad_(False)

    def backbone_frozen(self, epoch: int | None) -> bool:
        """Whether only the classifier trains in `epoch` (None: no fit, nothing frozen)."""
        return epoch is not None and epoch < self.freeze_backbone_epochs

    def frozen_groups(self, network: nn.Module, epoch: int | None) -> list[list[nn.Module]]:
        """The block groups that do not train in `epoch`, from the input up: all of them in the
        frozen epochs, then fewer by `unfreeze_groups_per_epoch` each epoch. None: no fit, none."""
        if epoch is None:
            return []
        groups = network.block_groups()
        unfrozen_epochs = epoch - self.freeze_backbone_epochs + 1
        if unfrozen_epochs <= 0:
            return groups
        if not self.unfreeze_groups_per_epoch:
            return []
        return groups[: max(0, len(groups) - self.unfreeze_groups_per_epoch * unfrozen_epochs)]

    def start_epoch(self, network: nn.Module, epoch: int) -> str | None:
        """Set which parameters train in `epoch` (the classifier always, BatchNorm never with
        `freeze_bn`, the frozen groups not) and put `network` in train mode. Returns the line
        to log when more of the backbone starts training in this epoch, else None."""
        frozen_groups, total = self.frozen_groups(network, epoch), len(network.block_groups())
        before = len(self.frozen_groups(network, epoch - 1)) if epoch else total
        message = None
        if self.freezes and len(frozen_groups) < before:
            training = total - len(frozen_groups)
            message = (
                f"epoch {epoch}: the backbone trains from now on"
                if not frozen_groups
                else f"epoch {epoch}: the top {training} of the backbone's {total} block groups train"
            )
        fixed = {id(p) for bn in batchnorms(network) for p in bn.parameters()} if self.freeze_bn else set()
        frozen = {id(p) for modules in frozen_groups for m in modules for p in m.parameters()}
        head = {id(p) for p in network.classifier.parameters()}
        for p in network.parameters():
            if id(p) not in head and id(p) not in fixed:
                p.requires_grad_(id(p) not in frozen)
        network.train()  # undo the frozen epochs' eval mode; hold_frozen_in_eval sets it again where due
        return message

    def hold_frozen_in_eval(self, network: nn.Module, epoch: int | None) -> None:
        """Put what does not train in `epoch` in eval mode (Lightning switches the whole module
        to train mode around validation, so this runs before every training batch)."""
        if self.freeze_bn:
            for bn in batchnorms(network):
                bn.eval()
        if self.backbone_frozen(epoch):
            for m in network.modules():
                if m is not network.classifier and m is not network.dropout:
                    m.eval()
        else:
            for modules in self.frozen_groups(network, epoch):
                for m in modules:
                    m.eval()
