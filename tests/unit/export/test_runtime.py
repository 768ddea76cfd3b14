"""The onnxruntime session helper shared by the export checks and predict --onnx."""

import onnx
import torch
from onnx import TensorProto, helper

from effnet_lightning.export.runtime import onnx_logits, onnx_session, onnxruntime_installed


def _doubling_model(path, input_name: str) -> None:
    """An ONNX file whose output is its input times two, for any batch size."""
    graph = helper.make_graph(
        [helper.make_node("Add", [input_name, input_name], ["logits"])],
        "double",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_logits_feed_the_sessions_own_input_as_contiguous_float32(tmp_path):
    assert onnxruntime_installed()
    _doubling_model(tmp_path / "double.onnx", input_name="pixels")
    session = onnx_session(tmp_path / "double.onnx")
    images = torch.arange(12, dtype=torch.float64).reshape(3, 4)[:, :3]  # float64, not contiguous
    logits = onnx_logits(session, images)
    assert logits.dtype == torch.float32 and torch.equal(logits, 2 * images.float())
    assert onnx_logits(session, images[:1]).shape == (1, 3)
