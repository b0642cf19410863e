"""Python runtime: any class ``package.module:Class`` on the worker's path serves a model version.

The contract a class fulfils (``fleet models register NAME --framework python --factory pkg.mod:Class``)::

    class Model:
        batchable = True  # False: one request at a time (register with --max-batch-size 1)

        def __init__(self, artifact: str, device: str) -> None: ...   # once per loaded version
        def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...   # one batch
        def unload(self) -> None: ...   # optional: called when the version is evicted or the worker stops

``artifact`` is the local path of the registered file (sha256-checked); ``device`` is the worker's
device setting (``auto``, ``cpu``, ``cuda[:N]``); a class that places itself on a GPU sets
``self.device`` to it (``cuda:0``), else the version counts as on the CPU. BYTES inputs arrive as
object arrays of ``bytes`` (:func:`texts` turns one into ``str``); outputs are checked against the
signature as for every runtime. Raise :class:`TransientModelError` for a failure that may pass (the
batch's requests are retried with backoff), :class:`PermanentModelError` for one that will not (error
reply and dead letter at once); other exceptions count as permanent when they are ValueError,
TypeError, KeyError, IndexError, AssertionError or NotImplementedError, as transient otherwise.

Registering a Python model is trusting its code: the worker imports and runs it with its own rights.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ModelExecutionError, ModelLoadError
from .base import Arrays, Runtime, as_text, cast_outputs

__all__ = ["PermanentModelError", "PythonRuntime", "TransientModelError", "import_factory", "texts"]

log = logging.getLogger("fleet.workers")


class TransientModelError(Exception):
    """Raised by a model's ``predict`` for a failure that may not happen again: the requests are retried."""


class PermanentModelError(Exception):
    """Raised by a model's ``predict`` for a failure that will happen again: error replies, dead letters."""


def texts(array: npt.NDArray[Any], name: str = "input") -> npt.NDArray[Any]:
    """A BYTES input (object array of ``bytes``) as an object array of ``str`` decoded as UTF-8, same shape.

    Raises PermanentModelError naming ``name`` when an element is not UTF-8.
    """
    try:
        return as_text(array, name)
    except ModelExecutionError as exc:
        raise PermanentModelError(exc.message) from None


def import_factory(factory: str | None) -> Any:
    """The object named by ``module:attribute``; ImportError, AttributeError or ValueError when it is not there."""
    module_name, _, attribute = (factory or "").partition(":")
    if not module_name or not attribute:
        raise ValueError(f"factory {factory!r} must look like package.module:Name")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def batchable(cls: Any) -> bool:
    """Whether a model class takes merged batches (its ``batchable`` attribute, True when absent)."""
    return bool(getattr(cls, "batchable", True))


class PythonRuntime(Runtime):
    """A model version served by an instance of a registered Python class."""

    _model: Any = None

    def load(self) -> None:
        name, version = self.record.name, self.record.version
        try:
            cls = import_factory(self.record.factory)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ModelLoadError(
                name, version, f"cannot import {self.record.factory!r} ({type(exc).__name__}: {exc})"
            ) from exc
        if not callable(cls):
            raise ModelLoadError(name, version, f"{self.record.factory!r} is not a class")
        if self.record.batched and not batchable(cls):
            raise ModelLoadError(
                name,
                version,
                f"{self.record.factory} declares batchable = False but the version is registered with batching: "
                "register it with --max-batch-size 1",
            )
        try:
            model = cls(self.record.artifact, self.requested_device)
        except Exception as exc:  # whatever the model's constructor raises
            problem = f"{self.record.factory}(...) raised {type(exc).__name__}: {exc}"
            raise ModelLoadError(name, version, problem) from exc
        if not callable(getattr(model, "predict", None)):
            raise ModelLoadError(name, version, f"{self.record.factory} has no predict(inputs) method")
        device = getattr(model, "device", None)
        self.device = device if isinstance(device, str) and device.startswith("cuda") else "cpu"
        self.providers = (f"python-{self.device.partition(':')[0]}",)
        self._model = model

    def predict(self, inputs: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        model = self._model
        if model is None:
            raise ModelExecutionError(f"model {self.record.name}:{self.record.version} is not loaded")
        feed = {spec.name: _writable(inputs[spec.name]) for spec in self.record.inputs}
        try:
            produced = model.predict(feed)
        except TransientModelError as exc:
            error = ModelExecutionError(f"TransientModelError: {exc}")
            error.retriable = True
            raise error from exc
        except PermanentModelError as exc:
            raise ModelExecutionError(f"PermanentModelError: {exc}") from None  # no cause: never retried
        except Exception as exc:  # whatever the model raises: its type decides (workers.retries.is_retriable)
            raise ModelExecutionError(f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(produced, Mapping):
            raise ModelExecutionError(
                f"{self.record.factory}.predict returned {type(produced).__name__}, not a dict of output arrays"
            )
        return cast_outputs(self.record, produced)

    def unload(self) -> None:
        model, self._model = self._model, None
        release = getattr(model, "unload", None)
        if callable(release):
            try:
                release()
            except Exception:  # an unload that fails must not stop the eviction
                log.exception("model %s:%s: unload() raised", self.record.name, self.record.version)


def _writable(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Wire tensors are read-only views; a model that writes into its inputs gets its own copy."""
    return array if array.flags.writeable else np.array(array)
