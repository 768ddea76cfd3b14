"""ONNX files run by onnxruntime on the CPU: what the export checks, `predict --onnx` and
`serve --onnx` share."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def onnx_session(path: str | Path, options=None):
    """An onnxruntime InferenceSession of the ONNX file at `path` on the CPU (`options`: its
    SessionOptions, None for onnxruntime's defaults)."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session, images: torch.Tensor) -> torch.Tensor:
    """The session's output for a batch of images, fed to its (one) input as float32."""
    feed = {session.get_inputs()[0].name: images.float().contiguous().cpu().numpy()}
    return torch.from_numpy(session.run(None, feed)[0])


def onnx_probabilities(
    session, images: torch.Tensor, test_time_flip: bool = False, multilabel: bool = False
) -> torch.Tensor:
    """Class probabilities as the network's evaluation gives them: the softmax of the logits
    (`multilabel`: each class's sigmoid), with `test_time_flip` of the mean of each image's and
    its mirror image's logits."""
    logits = onnx_logits(session, images)
    if test_time_flip:
        logits = (logits + onnx_logits(session, images.flip(3))) / 2
    return logits.sigmoid() if multilabel else logits.softmax(1)
