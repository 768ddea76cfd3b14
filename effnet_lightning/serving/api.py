"""The LitAPI each inference worker runs: the cropped images the HTTP servers decoded
(`gate.RequestGate`) normalised, a batch through the network `predict` runs (the module with
its folded BatchNorm, or the exported ONNX file through onnxruntime), the top-k classes.

Each worker is a process of its own; it outlives a SIGTERM or Ctrl+C sent to the process group
until the server has answered every request it accepted (`released`), then exits.
"""

from __future__ import annotations

import base64
import os
import signal
import sys
import time

import litserve as ls
import onnxruntime
import torch

from effnet_lightning.data.transforms import eval_normalize
from effnet_lightning.export.runtime import onnx_probabilities, onnx_session
from effnet_lightning.models.preprocessing import Preprocessing


class ClassifierAPI(ls.LitAPI):
    """Requests are `{"pixels": <base64 of a 3 x crop x crop uint8 image>, "k": int}` (what
    `gate.RequestGate` passes on); answers are `{"top_k": [{"class": name, "prob": p}, ...]}`,
    as the rows of predict's JSON (a multi-label model's also `"labels"`: the classes at or
    above their thresholds).

    Args:
        module: the trained `EfficientNetModule` (None with `onnx`).
        onnx: path of an exported model.onnx (its model.json beside it).
        test_time_flip: with `onnx`, average each image's logits with its mirror's (as predict).
        preprocessing: the evaluation crop size and normalisation.
        class_names: the names the answers give.
        thresholds: a multi-label model's, one per class (None: a single-label model).
        released: set by the server once the HTTP servers have drained; only then does a
            SIGTERM end the worker.
        workers_per_device: CPU workers share the cores (torch threads = cores / workers).
    """

    def __init__(
        self,
        *,
        module=None,
        onnx: str | None = None,
        test_time_flip: bool = False,
        preprocessing: Preprocessing,
        class_names: list[str],
        thresholds: list[float] | None = None,
        released,
        workers_per_device: int = 1,
        max_batch_size: int = 1,
        batch_timeout: float = 0.0,
    ):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.module = module
        self.onnx = onnx
        self.test_time_flip = test_time_flip
        self.preprocessing = preprocessing
        self.class_names = list(class_names)
        self.thresholds = thresholds
        self.released = released
        self.workers_per_device = workers_per_device

    def setup(self, device: str) -> None:
        signal.signal(signal.SIGTERM, self.on_sigterm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C drains as SIGTERM does: the server stops this worker
        if device == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.workers_per_device))
        self.normalize = eval_normalize(self.preprocessing)
        if self.onnx:  # on the CPU, as predict --onnx
            options = onnxruntime.SessionOptions()
            # Idle threads that spin would take the cores from the HTTP server decoding uploads.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = onnx_session(self.onnx, options)
        else:
            self.module = self.module.to(device).eval()
            self.module.forms.start_evaluation()  # the folded copy predict runs
        self.device_name = "cpu" if self.onnx else device

    def on_sigterm(self, signum, frame) -> None:
        if self.released.is_set():
            raise SystemExit(0)

    def decode_request(self, request: dict) -> tuple[torch.Tensor, int]:
        size = self.preprocessing.crop_size
        pixels = torch.frombuffer(bytearray(base64.b64decode(request["pixels"])), dtype=torch.uint8)
        return self.normalize(pixels.view(3, size, size)), int(request["k"])

    def predict(self, x):
        """One request (`max_batch_size` 1) or a list of them: (image, k) -> (probabilities, k)."""
        requests = x if isinstance(x, list) else [x]
        start = time.perf_counter()
        images = torch.stack([image for image, _ in requests]).to(self.device_name)
        probs = self.probabilities(images)
        milliseconds = (time.perf_counter() - start) * 1000
        print(f"serve: batch of {len(requests)} in {milliseconds:.1f} ms", file=sys.stderr, flush=True)
        answers = [(row, k) for row, (_, k) in zip(probs, requests)]
        return answers if isinstance(x, list) else answers[0]

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """What predict gives for a batch: the module's predict_step, or the ONNX file's."""
        if self.onnx:
            return onnx_probabilities(self.session, images, self.test_time_flip, multilabel=self.thresholds is not None)
        with torch.inference_mode():
            return self.module.predict_step((images, None), 0)["probs"].float().cpu()

    def encode_response(self, output) -> dict:
        probs, k = output
        values, classes = probs.topk(k)
        top_k = [{"class": self.class_names[c], "prob": p} for c, p in zip(classes.tolist(), values.tolist())]
        if self.thresholds is None:
            return {"top_k": top_k}
        called = [name for name, p, t in zip(self.class_names, probs.tolist(), self.thresholds) if p >= t]
        return {"labels": called, "top_k": top_k}
