"""Reading exported files back and comparing their logits with PyTorch's."""

from pathlib import Path

import onnxruntime
import torch


def reload_and_compare(folder: Path, model: torch.nn.Module, x: torch.Tensor) -> dict:
    with torch.no_grad():
        expected = model(x)
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    scripted = torch.jit.load(str(folder / "model.torchscript.pt"))
    with torch.no_grad():
        script_logits = scripted(x)
    return {
        "onnx": (onnx_logits - expected).abs().max().item(),
        "torchscript": (script_logits - expected).abs().max().item(),
    }
