"""Prototype of a faster ONNX Runtime CPU backend: one session per time value.

UNetSR adds a time bias, time_bias(emb(t)) of shape [N, C, 1, 1], after the first
convolution of every residual block. ONNX Runtime's NCHWc layout transformer does not
handle that broadcast Add, so the optimized graph leaves the blocked NCHWc layout and
re-enters it around each block (27 ReorderInput/ReorderOutput nodes per call for the
default architecture, with ORT_ENABLE_ALL, onnxruntime 1.32). With t fixed as a
constant initializer, constant folding turns the bias into [1, C, 1, 1] constants, the
Conv+Add fusion moves them into the convolution biases, and 7 reorders remain.

The samplers call the network with the same t for every image of a batch and with at
most 2·steps + 1 distinct values per run, so a small cache of sessions covers a run.
This module lets fmsr-bench measure the gain; it is not part of the runtime.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class FixedTimeOrtBackend:
    """Run the network with a session specialised to each t value, built on first use.

    Call with x_t [N, 3, H, W], cond [N, 3, H, W] and t [N], float32; returns the
    network output [N, 3, H, W] float32. A batch with differing t values runs in the
    general session of the model.
    """

    name = "onnxruntime-cpu-fixed-t"

    def __init__(self, model_path: str | Path, threads: int = 0):
        import onnx
        import onnxruntime as ort

        self.ort = ort
        self.threads = threads
        self.model = onnx.load(str(model_path))
        if [i.name for i in self.model.graph.input] != ["x_t", "cond", "t"]:
            raise ValueError(f"{model_path} does not have the inputs x_t, cond, t")
        self.general = self._session(self.model.SerializeToString())
        self.output_name = self.general.get_outputs()[0].name
        self.sessions: dict[float, object] = {}

    def _session(self, model_bytes: bytes):
        options = self.ort.SessionOptions()
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        return self.ort.InferenceSession(
            model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )

    def session_for(self, t: float):
        """Return the session with input t replaced by the constant [t], building it once."""
        key = float(np.float32(t))
        if key not in self.sessions:
            import onnx
            from onnx import numpy_helper

            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            t_input = next(i for i in model.graph.input if i.name == "t")
            model.graph.input.remove(t_input)
            model.graph.initializer.append(
                numpy_helper.from_array(np.array([key], dtype=np.float32), "t")
            )
            self.sessions[key] = self._session(model.SerializeToString())
        return self.sessions[key]

    def prebuild(self, times) -> None:
        """Build the sessions of these t values now, so that timed runs do not pay for it."""
        for t in times:
            self.session_for(t)

    def __call__(self, x_t: np.ndarray, cond: np.ndarray, t: np.ndarray) -> np.ndarray:
        x_t = np.ascontiguousarray(x_t, dtype=np.float32)
        cond = np.ascontiguousarray(cond, dtype=np.float32)
        t = np.asarray(t, dtype=np.float32)
        if t.size and np.all(t == t.flat[0]):
            session = self.session_for(float(t.flat[0]))
            return session.run([self.output_name], {"x_t": x_t, "cond": cond})[0]
        feeds = {"x_t": x_t, "cond": cond, "t": np.ascontiguousarray(t)}
        return self.general.run([self.output_name], feeds)[0]
