"""The random streams saved in checkpoints, so a resumed fit continues them."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


class ResumableRNG(L.Callback):
    """Saves the random number generators (torch, CUDA, NumPy, Python) in every checkpoint and
    restores them when a fit resumes: a run stopped at an epoch boundary and resumed shuffles,
    augments and drops out exactly as the uninterrupted run."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "kind": kind,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning reads callback states after building the model and before it first draws
        # training data (already while counting the steps for the scheduler): from here the
        # draws follow the uninterrupted run's.
        torch.set_rng_state(state_dict["torch"])
        n = state_dict["numpy"]
        np.random.set_state(
            (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
        )
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
