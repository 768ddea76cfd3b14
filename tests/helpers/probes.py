"""Callbacks the tests add to real CLI runs (`--trainer.callbacks probes.X`) to see inside."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import lightning as L
import torch

from effnet_lightning.callbacks.graceful_interrupt import received_signal


class TrainStartProbe(L.Callback):
    """Writes the shape of the first batch the network sees, the global step and a fingerprint
    of the optimizer state at the start of training, to $PROBE_FILE."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if getattr(self, "done", False):
            return
        self.done = True
        state = trainer.optimizers[0].state_dict()["state"]
        fingerprint = {
            str(k): [float(t.double().sum()) for t in v.values() if torch.is_tensor(t)] for k, v in state.items()
        }
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
        groups = [
            {"weight_decay": g["weight_decay"], "params": [names[id(p)] for p in g["params"]]}
            for g in optimizer.param_groups
        ]
        settings = {k: v for k, v in optimizer.defaults.items() if isinstance(v, (int, float, bool))}
        record = {
            "optimizer": type(optimizer).__name__,
            "defaults": settings,
            "lrs": self.lrs,
            "groups": groups,
            "first_targets": self.targets,
            "accumulate": trainer.accumulate_grad_batches,
        }
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


class SignalAtStep(L.Callback):
    """Sends $PROBE_SIGNAL (e.g. SIGTERM) to this process after the optimizer step that makes
    the global step $PROBE_STEP, as a scheduler or a user's Ctrl+C would."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == int(os.environ["PROBE_STEP"]) and not getattr(self, "sent", False):
            self.sent = True
            os.kill(os.getpid(), getattr(signal, os.environ["PROBE_SIGNAL"]))


class GroupSignalAtStep(L.Callback):
    """Has $PROBE_SIGNAL sent to this process's whole process group (its loader workers and,
    under DDP, the other ranks too) after the optimizer step that makes the global step
    $PROBE_STEP. The sender is a `kill` outside the group, as `timeout`, systemd or SLURM's
    `--signal` are: a loader worker treats a SIGTERM from its own parent differently (it exits
    quietly), so a signal from the main process would not show what a launcher's does. Under
    DDP only rank 0 has it sent. With $PROBE_GROUP=parent the group is the parent process's
    (the command that started this fit), which passes the signal on: the probe waits for it to
    arrive, so that the fit stops at this step however long passing it on takes; with $PROBE_IN, only a fit whose default_root_dir ends
    with it sends. With $PROBE_FILE set, each rank writes the global step it stopped at to
    $PROBE_FILE.<rank>."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != int(os.environ["PROBE_STEP"]) or getattr(self, "sent", False):
            return
        if not str(trainer.default_root_dir).endswith(os.environ.get("PROBE_IN", "")):
            return
        self.sent = True
        if trainer.global_rank == 0:
            pid = os.getppid() if os.environ.get("PROBE_GROUP") == "parent" else 0
            subprocess.run(
                ["kill", "-s", os.environ["PROBE_SIGNAL"].removeprefix("SIG"), "--", f"-{os.getpgid(pid)}"],
                start_new_session=True,
                check=True,
            )
            if pid:  # the parent passes the signal on: wait for it here, so the fit stops at this step
                deadline = time.monotonic() + 30
                while received_signal() is None and time.monotonic() < deadline:
                    time.sleep(0.01)

    def on_exception(self, trainer, pl_module, exception):
        if os.environ.get("PROBE_FILE"):
            Path(f"{os.environ['PROBE_FILE']}.{trainer.global_rank}").write_text(str(trainer.global_step))


class NaNAtStep(L.Callback):
    """Fills the batch of global step $PROBE_STEP with NaN, as a corrupt input or a diverging
    run would make the loss."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == int(os.environ["PROBE_STEP"]):
            batch[0].fill_(float("nan"))


class FailOnRank(L.Callback):
    """Raises on rank $PROBE_RANK at global step $PROBE_STEP: one process of a DDP job dies.
    Meanwhile the other ranks work for $PROBE_STALL seconds outside any collective (so only the
    watchdog, not a collective's error, can notice)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != int(os.environ["PROBE_STEP"]):
            return
        if trainer.global_rank == int(os.environ["PROBE_RANK"]):
            raise RuntimeError(f"injected failure on rank {trainer.global_rank}")
        time.sleep(float(os.environ.get("PROBE_STALL", "0")))


def state_sums(state: dict) -> dict:
    return {k: float(v.double().sum()) for k, v in state.items() if torch.is_tensor(v)}


class ResumeStateProbe(L.Callback):
    """At the first training batch, writes to $PROBE_FILE the global step and the sums of every
    tensor of the module, optimizer, learning-rate scheduler and EMA, and which CheckpointIO writes."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if getattr(self, "done", False):
            return
        self.done = True
        optimizer = trainer.optimizers[0].state_dict()["state"]
        scheduler = trainer.lr_scheduler_configs[0].scheduler.state_dict()
        ema = next((cb for cb in trainer.callbacks if type(cb).__name__ == "EMA"), None)
        average = ema._average_model if ema is not None else None
        record = {
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "model": state_sums(pl_module.state_dict()),
            "optimizer": {str(k): state_sums(v) for k, v in optimizer.items()},
            "scheduler": {"last_epoch": scheduler["last_epoch"], "lr": scheduler["_last_lr"]},
            "ema": state_sums(
                {k[len("module.") :]: v for k, v in average.state_dict().items() if k.startswith("module.")}
            )
            if average is not None
            else None,
            "ema_n_averaged": int(average.n_averaged) if average is not None else None,
            "checkpoint_io": type(trainer.strategy.checkpoint_io).__name__,
        }
        with open(os.environ["PROBE_FILE"], "w") as f:
            json.dump(record, f)


class StopAfterEpoch(L.Callback):
    """Stops the fit at the end of epoch $PROBE_EPOCH, as a job that ran out of time at an epoch
    boundary would (the checkpoint callback has saved `last` by then)."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == int(os.environ["PROBE_EPOCH"]):
            trainer.should_stop = True


class InputSizeProbe(L.Callback):
    """Appends to $PROBE_FILE.<rank> one JSON line per batch: the stage of the run (train, val,
    test, predict), the epoch, the global step, the batch's image size (validation: per loader) and its
    smallest and largest normalised pixel."""

    def _write(self, trainer, stage, batch, loader=0):
        record = {
            "stage": stage,
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "size": list(batch[0].shape[-2:]),
            "loader": loader,
            "min": float(batch[0].min()),
            "max": float(batch[0].max()),
        }
        with open(f"{os.environ['PROBE_FILE']}.{trainer.global_rank}", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._write(trainer, "train", batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._write(trainer, "val", batch, dataloader_idx)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._write(trainer, "test", batch, dataloader_idx)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._write(trainer, "predict", batch, dataloader_idx)


def read_input_sizes(probe_file, rank: int = 0) -> list[dict]:
    return [json.loads(line) for line in Path(f"{probe_file}.{rank}").read_text().splitlines()]


def batchnorm_count(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())


class NetworkFormProbe(L.Callback):
    """Appends to $PROBE_FILE one JSON line per evaluation batch: the stage, the form of the
    network the module runs (`provenance.form`) and its BatchNorm layers, and those of the
    module's own (checkpointed) network."""

    def _write(self, trainer, pl_module, stage):
        network = pl_module.network
        network = getattr(network, "module", network)  # under compile: the network compiled
        record = {
            "stage": stage,
            "fn": trainer.state.fn.value,
            "form": network.provenance.form,
            "batchnorms": batchnorm_count(network),
            "model_batchnorms": batchnorm_count(pl_module.model),
        }
        with open(os.environ["PROBE_FILE"], "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._write(trainer, pl_module, "val")

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._write(trainer, pl_module, "test")

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._write(trainer, pl_module, "predict")


class SampleProbe(L.Callback):
    """Per epoch, the indices of the training images this process's sampler draws, its training
    steps and the indices of the validation images it evaluates, to $PROBE_FILE.<rank> (JSON)."""

    def __init__(self):
        self.epochs = []

    def on_train_epoch_start(self, trainer, pl_module):
        # Under DDP Lightning hands the loader its distributed sampler inside the batch sampler.
        sampler = trainer.train_dataloader.batch_sampler.sampler
        drawn = [index for _, index in sampler]  # (augmentation seed, index)
        self.epochs.append({"train": drawn, "steps": 0, "val": []})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.epochs[-1]["steps"] += 1

    def on_validation_epoch_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.epochs[-1]["val"] = list(trainer.val_dataloaders.batch_sampler.sampler)

    def on_train_epoch_end(self, trainer, pl_module):
        Path(f"{os.environ['PROBE_FILE']}.{trainer.global_rank}").write_text(json.dumps(self.epochs))


class TeacherProbe(L.Callback):
    """Watches the teacher of a distilled fit and writes to $PROBE_FILE: whether it is among the
    module's submodules or parameters, its training flag and the hash of its tensors at the start
    and the end of the fit, and, for the first training batch, the batch's images (labelled, then
    unlabelled) and what the teacher's network received, saved to $PROBE_FILE.pt."""

    def on_train_start(self, trainer, pl_module):
        teacher = pl_module.distill.teacher
        self.record = {
            "digest_at_start": teacher.state_digest(),
            "teacher_in_modules": any(m is teacher.network for m in pl_module.modules()),
            "teacher_params_in_module": len(
                {id(p) for p in teacher.network.parameters()} & set(map(id, pl_module.parameters()))
            ),
            "teacher_training": [],
        }
        self.seen = None
        teacher.network.register_forward_pre_hook(self._save_input)

    def _save_input(self, module, args):
        if self.seen is not None and "teacher_input" not in self.seen:
            self.seen["teacher_input"] = args[0].detach().clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.record["teacher_training"].append(pl_module.distill.teacher.network.training)
        if self.seen is None:
            self.seen = {"images": batch[0].detach().clone(), "unlabelled": batch[2].detach().clone()}

    def on_fit_end(self, trainer, pl_module):
        self.record["digest_at_end"] = pl_module.distill.teacher.state_digest()
        self.record["teacher_digest"] = pl_module.distill.teacher.digest
        torch.save(self.seen, os.environ["PROBE_FILE"] + ".pt")
        with open(os.environ["PROBE_FILE"], "w") as f:
            json.dump(self.record, f)


class RankLosses(L.Callback):
    """Each process writes its training loss of every step to $PROBE_FILE.<rank> (JSON list)."""

    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def on_fit_end(self, trainer, pl_module):
        with open(f"{os.environ['PROBE_FILE']}.{trainer.global_rank}", "w") as f:
            json.dump(self.losses, f)
