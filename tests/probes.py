"""Callbacks the tests add to real CLI runs (`--trainer.callbacks probes.X`) to see inside."""

import json
import os

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
