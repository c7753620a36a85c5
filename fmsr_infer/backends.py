"""Choose the network backend that runs the exported model."""

from __future__ import annotations

import logging
from pathlib import Path

from fmsr_infer.model_info import ModelInfo

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu")


def create_backend(name: str, model_path: str | Path, info: ModelInfo, threads: int = 0):
    """Create the backend `name` ("auto" picks the fastest available) for a model."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    from fmsr_infer.backend_ort import OrtBackend

    backend = OrtBackend(model_path, info, threads=threads)
    log.info("backend: %s", backend.name)
    return backend
