"""PyTorch backend: TorchScript archives, ``torch.export`` archives (.pt2), and state dicts (``torch.save``
checkpoints or safetensors files) loaded into the module a ``module:function`` factory builds.

torch is imported only when such a model is loaded, so the worker runs without it.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas import Framework
from schemas.artifact_formats import is_safetensors

from ..errors import ModelExecutionError, ModelLoadError
from .base import Arrays, Runtime, cast_outputs, choose_device, map_positionally


def _import_torch() -> Any:
    return importlib.import_module("torch")


class TorchRuntime(Runtime):
    """A model version run by PyTorch under ``torch.inference_mode()``; inputs are passed positionally."""

    _torch: Any = None
    _module: Any = None

    def load(self) -> None:
        name, version = self.record.name, self.record.version
        try:
            torch = _import_torch()
        except ImportError as exc:
            raise ModelLoadError(name, version, "torch is not installed (pip install inference-fleet[torch])") from exc
        device = choose_device(self.requested_device, bool(torch.cuda.is_available()), "torch")
        try:
            torch.set_num_threads(self.threads)
            if self.record.framework is Framework.TORCHSCRIPT:
                with warnings.catch_warnings():
                    # torch >= 2.10 deprecates TorchScript, but registered archives must keep loading.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    module = torch.jit.load(self.record.artifact, map_location=device)
                module.eval()
            elif self.record.framework is Framework.TORCH_EXPORT:
                # An exported program is already in inference form (its module refuses eval()).
                module = torch.export.load(self.record.artifact).module().to(device)
            else:
                module = self._build(torch, device)
                module.eval()
        except ModelLoadError:
            raise
        except Exception as exc:  # torch raises many unrelated types for bad archives
            raise ModelLoadError(name, version, f"{type(exc).__name__}: {exc}") from exc
        self._torch, self._module = torch, module
        self.device = device
        self.providers = ("torch-cuda",) if device.startswith("cuda") else ("torch-cpu",)

    def _build(self, torch: Any, device: str) -> Any:
        module_name, _, function = (self.record.factory or "").partition(":")
        if not module_name or not function:
            raise ModelLoadError(self.record.name, self.record.version, f"bad factory {self.record.factory!r}")
        factory = getattr(importlib.import_module(module_name), function)
        module = factory()
        if is_safetensors(self.record.artifact):
            try:
                from safetensors.torch import load_file
            except ImportError as exc:
                problem = "safetensors is not installed (pip install inference-fleet[torch])"
                raise ModelLoadError(self.record.name, self.record.version, problem) from exc
            state = load_file(self.record.artifact, device=device)
        else:
            state = torch.load(self.record.artifact, map_location=device, weights_only=True)
        module.load_state_dict(state)
        return module.to(device)

    def predict(self, inputs: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        torch, module = self._torch, self._module
        if module is None:
            raise ModelExecutionError(f"model {self.record.name}:{self.record.version} is not loaded")
        try:
            args = []
            for spec in self.record.inputs:
                array = inputs[spec.name]
                if array.dtype == object:
                    raise ModelExecutionError(f"torch models cannot take BYTES input {spec.name!r}")
                # torch.from_numpy warns on read-only buffers (wire tensors are): copy those.
                writable = array if array.flags.writeable else np.array(array)
                args.append(torch.from_numpy(writable).to(self.device))
            with torch.inference_mode():
                result = module(*args)
            produced = self._name_outputs(result)
        except ModelExecutionError:
            raise
        except Exception as exc:  # whatever the model code raises
            raise ModelExecutionError(f"torch model failed: {type(exc).__name__}: {exc}") from exc
        return cast_outputs(self.record, produced)

    def _name_outputs(self, result: Any) -> Arrays:
        def to_numpy(value: Any) -> npt.NDArray[Any]:
            return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)

        if isinstance(result, Mapping):
            names = {spec.name for spec in self.record.outputs}
            if names <= set(result):
                return {key: to_numpy(value) for key, value in result.items() if key in names}
            return map_positionally(self.record, [to_numpy(v) for v in result.values()])
        if isinstance(result, tuple | list):
            return map_positionally(self.record, [to_numpy(v) for v in result])
        return map_positionally(self.record, [to_numpy(result)])

    def unload(self) -> None:
        self._module = None
        if self._torch is not None and self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
