"""Export a trained network for deployment: ONNX, TorchScript and safetensors, plus a JSON file
with the class names and preprocessing, and on request a folder in timm's Hugging Face Hub
layout or a statically quantized ONNX file. Every file is loaded back and checked against the
PyTorch model before the export counts as done.

    python cli.py export                                  # best checkpoint of the latest fit
    python cli.py export --ckpt_path runs/.../last.ckpt --output_dir deploy/ --formats [onnx]
    python cli.py export --formats [hub] --push_to me/my-effnet   # hub/ folder, uploaded

The exported networks take float32 NCHW images, already resized, cropped and normalised as
`preprocessing` in the JSON says, and return logits (any batch size).

Each format is one file of this package that declares a `FORMAT` (`formats.py`): onnx.py,
torchscript.py, safetensors.py, hub.py, onnx_int8.py. `folder.py` writes the chosen ones and
model.json into the output folder; `runtime.py` runs ONNX files with onnxruntime.
"""
