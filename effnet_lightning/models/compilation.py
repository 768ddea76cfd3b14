"""`torch.compile` of a network that falls back to eager execution where compiling is not
possible (no C++ compiler for inductor's CPU code, an unsupported Python or platform).

    run = CompiledOrEager(model)
    logits = run(images)        # compiled; on failure: one warning, then `model` itself

The compiled function is kept outside the network (not a submodule), so the network's
state_dict keys, checkpoints and exports stay exactly those of the eager network.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


class CompiledOrEager:
    """Calls `torch.compile(module)`; the first time compiling fails, warns once and calls
    `module` eagerly from then on. Errors of the network itself surface from the eager call."""

    def __init__(self, module: nn.Module, **compile_options):
        self.module = module
        self.compiled = None
        try:
            self.compiled = torch.compile(module, **compile_options)
        except Exception as e:  # raised here where torch.compile is unsupported altogether
            self._fall_back(e)

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # inductor compiles lazily, at the first call of each graph
                self._fall_back(e)
        return self.module(*args, **kwargs)

    def _fall_back(self, error: Exception) -> None:
        self.compiled = None
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        warnings.warn(
            f"torch.compile is unavailable here ({type(error).__name__}: {reason[:200]}); running eagerly",
            RuntimeWarning,
            stacklevel=3,
        )
