"""ONNX Runtime backend: CUDA when asked for and present (verified), else the CPU provider.

A DIRECTORY artifact holds the model file (``model.onnx``, or its only ``*.onnx``) beside its external
data files, which ONNX Runtime reads relative to the model file."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy.typing as npt

from schemas.artifact_formats import onnx_model_file
from schemas.registry import DIRECTORY

from ..errors import ModelExecutionError, ModelLoadError
from .base import Arrays, Runtime, as_text, cast_outputs, choose_device

log = logging.getLogger("fleet.workers")

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


class OnnxRuntime(Runtime):
    """A model version run by an ``onnxruntime.InferenceSession``.

    ONNX Runtime's string tensors take ``str`` (it would turn ``bytes`` into their repr, ``"b'abc'"``),
    so BYTES inputs are decoded as UTF-8; string outputs come back as ``str`` and leave as UTF-8 BYTES.
    """

    takes_text = True

    _session: Any = None
    _input_names: tuple[str, ...] = ()
    _output_names: tuple[str, ...] = ()

    def load(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelLoadError(self.record.name, self.record.version, "onnxruntime is not installed") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        device = choose_device(self.requested_device, _CUDA in ort.get_available_providers(), "ONNX Runtime")
        providers: list[Any] = [_CPU]
        if device.startswith("cuda"):
            index = int(device.partition(":")[2] or 0)
            providers = [(_CUDA, {"device_id": index}), _CPU]
        model_file = self.record.artifact
        if self.record.layout == DIRECTORY:
            found = onnx_model_file(model_file)
            if found is None:
                raise ModelLoadError(
                    self.record.name, self.record.version, "the artifact directory has no model.onnx (nor one *.onnx)"
                )
            model_file = str(found)
        try:
            session = ort.InferenceSession(model_file, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            raise ModelLoadError(self.record.name, self.record.version, f"{type(exc).__name__}: {exc}") from exc
        active = tuple(session.get_providers())
        if device.startswith("cuda") and (not active or active[0] != _CUDA):
            log.warning(
                "model %s:%s: ONNX Runtime could not use %s (providers %s); falling back to CPU",
                self.record.name,
                self.record.version,
                device,
                list(active),
            )
            device = "cpu"
        self._session = session
        self._input_names = tuple(i.name for i in session.get_inputs())
        self._output_names = tuple(o.name for o in session.get_outputs())
        self.device = device
        self.providers = active

    def predict(self, inputs: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        if self._session is None:
            raise ModelExecutionError(f"model {self.record.name}:{self.record.version} is not loaded")
        feed = {
            name: as_text(inputs[name], name) if inputs[name].dtype == object else inputs[name]
            for name in self._input_names
            if name in inputs
        }
        try:
            values = self._session.run(None, feed)
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            raise ModelExecutionError(f"ONNX Runtime failed: {type(exc).__name__}: {exc}") from exc
        return cast_outputs(self.record, dict(zip(self._output_names, values, strict=True)))

    def unload(self) -> None:
        self._session = None
