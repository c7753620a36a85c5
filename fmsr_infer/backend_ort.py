"""ONNX Runtime backend: one network call on numpy arrays."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fmsr_infer.model_info import ModelError, ModelInfo

log = logging.getLogger(__name__)


class OrtBackend:
    """Run the exported network with ONNX Runtime's CPU execution provider.

    Call with x_t [N, 3, H, W], cond [N, 3, H, W] and t [N], float32; returns the
    network output [N, 3, H, W] float32.
    """

    name = "onnxruntime-cpu"

    def __init__(self, model_path: str | Path, info: ModelInfo, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ONNX Runtime raises its own Fail/InvalidGraph types
            raise ModelError(f"cannot load ONNX model {model_path}: {exc}") from exc
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != list(info.input_names):
            raise ModelError(
                f"ONNX model {model_path} has inputs {inputs}, expected {info.input_names}"
            )
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, x_t: np.ndarray, cond: np.ndarray, t: np.ndarray) -> np.ndarray:
        feeds = {
            "x_t": np.ascontiguousarray(x_t, dtype=np.float32),
            "cond": np.ascontiguousarray(cond, dtype=np.float32),
            "t": np.ascontiguousarray(t, dtype=np.float32),
        }
        return self.session.run([self.output_name], feeds)[0]
