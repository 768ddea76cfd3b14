"""Callbacks the tests add to real CLI runs (`--trainer.callbacks probes.X`) to see inside."""

import json
import os
from pathlib import Path

import lightning as L
import torch


class TrainStartProbe(L.Callback):
    """Writes the shape of the first batch the network sees, the global step and a fingerprint
    of the optimizer state at the start of training, to $PROBE_FILE."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if getattr(self, "done", False):
            return
        self.done = True
        state = trainer.optimizers[0].state_dict()["state"]
        fingerprint = {str(k): [float(t.double().sum()) for t in v.values() if torch.is_tensor(t)] for k, v in state.items()}
        record = {
            "input_shape": list(batch[0].shape),
            "global_step": trainer.global_step,
            "optimizer_state": fingerprint,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
        }
        with open(os.environ["PROBE_FILE"], "w") as f:
            json.dump(record, f)


class RecipeProbe(L.Callback):
    """Writes to $PROBE_FILE: the optimizer's class and settings, the learning rate of the first
    group before every optimizer step, which parameters each group decays, and the targets of
    the first training batch."""

    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not hasattr(self, "targets"):
            self.targets = batch[1].tolist()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def on_fit_end(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        names = {id(p): n for n, p in pl_module.named_parameters()}
        groups = [{"weight_decay": g["weight_decay"], "params": [names[id(p)] for p in g["params"]]}
                  for g in optimizer.param_groups]  # fmt: skip
        settings = {k: v for k, v in optimizer.defaults.items() if isinstance(v, (int, float, bool))}
        record = {"optimizer": type(optimizer).__name__, "defaults": settings, "lrs": self.lrs, "groups": groups,
                  "first_targets": self.targets, "accumulate": trainer.accumulate_grad_batches}  # fmt: skip
        with open(os.environ["PROBE_FILE"], "w") as f:
            json.dump(record, f)


class RecordProbe(L.Callback):
    """At the start of the second epoch, writes the run record as it is then and the global step
    of the `last` checkpoint it names, to $PROBE_FILE."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch != 1:
            return
        record = json.loads((Path(trainer.default_root_dir) / "latest_fit.json").read_text())
        last = record["last_model_path"]
        step = torch.load(last, weights_only=True)["global_step"] if last else None
        with open(os.environ["PROBE_FILE"], "w") as f:
            json.dump({"record": record, "last_global_step": step}, f)
