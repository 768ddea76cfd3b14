"""Learning rates logged per parameter group."""

from __future__ import annotations

from typing import Literal

from lightning.pytorch.callbacks import LearningRateMonitor


class LearningRateLog(LearningRateMonitor):
    """Lightning's LearningRateMonitor, with the `enabled` switch every always-on callback has."""

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] | None = None,
        log_momentum: bool = False,
        log_weight_decay: bool = False,
        enabled: bool = True,
    ):
        super().__init__(logging_interval, log_momentum, log_weight_decay)
        self.enabled = enabled
