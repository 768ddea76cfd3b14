"""The forms a network runs in: the plain network (fit, checkpoints), its folded copy during
validate / test / predict, and either of them compiled.

    forms = NetworkForms(model, compile=True, fold_bn=True)
    forms.start_evaluation()            # validate / test / predict begin: fold a copy
    logits = forms.network(training=False)(images)
    forms.end_evaluation()              # drop the copy

Neither the folded copy nor the compiled wrapper is a submodule of anything: the module that
owns the network keeps only the plain network's state_dict keys, so checkpoints are the same
whichever form ran. Plain PyTorch, no Lightning.
"""

from __future__ import annotations

from torch import nn

from effnet_lightning.models.compilation import CompiledOrEager
from effnet_lightning.models.inference import fold_batchnorm


class NetworkForms:
    """Args:
    model: the plain network (trained, checkpointed).
    compile: run through `torch.compile` (`CompiledOrEager`); the folded form compiles with
        inductor's freezing (its weights are constants folded into the graph).
    fold_bn: `start_evaluation` makes a copy with each BatchNorm folded into its convolution
        (`inference.fold_batchnorm`: the same logits, faster).
    """

    def __init__(self, model: nn.Module, *, compile: bool = False, fold_bn: bool = True):
        self.model = model
        self.compile = compile
        self.fold_bn = fold_bn
        self.folded: nn.Module | None = None  # made by start_evaluation, dropped by end_evaluation
        self._compiled: CompiledOrEager | None = None  # made at the first call of `network`

    def start_evaluation(self) -> None:
        """validate / test / predict begin: fold a copy of the weights they evaluate (`fold_bn`)."""
        self.folded = fold_batchnorm(self.model) if self.fold_bn else None

    def end_evaluation(self) -> None:
        """validate / test / predict end: drop the folded copy."""
        self.folded = None

    def network(self, training: bool) -> nn.Module | CompiledOrEager:
        """What runs now: the plain network in training, else its folded copy where there is
        one; compiled when `compile` is on (the compiled wrapper is made again only when the
        form it wraps changes)."""
        inference = self.folded is not None and not training
        model = self.folded if inference else self.model
        if not self.compile:
            return model
        if self._compiled is None or self._compiled.module is not model:
            self._compiled = CompiledOrEager(model, **({"options": {"freezing": True}} if inference else {}))
        return self._compiled
