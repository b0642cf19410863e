"""Hugging Face transformers backend: a model directory (config, tokenizer, safetensors weights) and a task.

Text arrives as BYTES (decoded as UTF-8: a request with other bytes is refused before it is batched), is
tokenized here, padded to the longest text of the batch (not to ``max_length``) and run under
``torch.inference_mode()`` on CUDA when there is one. Tasks, options and outputs: ``schemas.text_models``.
Nothing is ever downloaded: the tokenizer and model load with ``local_files_only`` from the cached
directory, weights from safetensors only (a ``pytorch_model.bin`` pickle is never loaded), and no remote
code is trusted.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.artifact_formats import hf_config
from schemas.errors import SchemaError
from schemas.text_models import (
    FEATURE_EXTRACTION,
    TEXT_CLASSIFICATION,
    TextOptions,
    id2label,
    text_options,
)

from ..errors import ModelExecutionError, ModelLoadError
from .base import Arrays, Runtime, as_text, cast_outputs, choose_device, empty_outputs

_AUTO_CLASSES = {
    TEXT_CLASSIFICATION: "AutoModelForSequenceClassification",
    FEATURE_EXTRACTION: "AutoModel",
}
_TOKEN_CLASSIFICATION_CLASS = "AutoModelForTokenClassification"


class TransformersRuntime(Runtime):
    """A model version run by a transformers model and its tokenizer."""

    takes_text = True

    _torch: Any = None
    _model: Any = None
    _tokenizer: Any = None
    _options: TextOptions | None = None
    _labels: dict[int, str]

    def load(self) -> None:
        name, version = self.record.name, self.record.version
        config = hf_config(self.record.artifact)
        if config is None:
            raise ModelLoadError(name, version, "the model directory has no readable config.json")
        try:
            options = text_options(self.record.task, self.record.options, config)
        except SchemaError as exc:
            raise ModelLoadError(name, version, exc.message) from None
        try:
            torch = importlib.import_module("torch")
            transformers = importlib.import_module("transformers")
        except ImportError as exc:
            raise ModelLoadError(
                name, version, f"{exc.name} is not installed (pip install inference-fleet[transformers])"
            ) from exc
        transformers.utils.logging.disable_progress_bar()  # no tqdm bars in a worker's log
        device = choose_device(self.requested_device, bool(torch.cuda.is_available()), "torch")
        auto = getattr(transformers, _AUTO_CLASSES.get(options.task, _TOKEN_CLASSIFICATION_CLASS))
        try:
            torch.set_num_threads(self.threads)
            tokenizer = transformers.AutoTokenizer.from_pretrained(self.record.artifact, local_files_only=True)
            model = auto.from_pretrained(
                self.record.artifact, local_files_only=True, use_safetensors=True, trust_remote_code=False
            )
            model.eval()
            model.to(device)
        except Exception as exc:  # transformers raises OSError, ValueError and its own types for bad directories
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(
                name, version, f"transformers cannot load the model: {type(exc).__name__}: {first}"
            ) from None
        self._torch, self._model, self._tokenizer, self._options = torch, model, tokenizer, options
        self._labels = id2label(config)
        self.device = device
        self.providers = ("torch",)

    def predict(self, inputs: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        if self._model is None or self._options is None:
            raise ModelExecutionError(f"model {self.record.name}:{self.record.version} is not loaded")
        name = self.record.inputs[0].name
        texts = [str(text) for text in as_text(inputs[name], name).reshape(-1).tolist()]
        if not texts:  # the tokenizer fails on no text at all
            return empty_outputs(self.record)
        options, torch = self._options, self._torch
        try:
            encoded = self._tokenizer(
                texts,
                padding="longest",
                truncation=True,
                max_length=options.max_length,
                return_tensors="pt",
                return_special_tokens_mask=True,
            )
            special = encoded.pop("special_tokens_mask")
            feed = {key: value.to(self.device) for key, value in encoded.items()}
            with torch.inference_mode():
                output = self._model(**feed)
        except Exception as exc:  # torch and tokenizers raise many unrelated types
            raise ModelExecutionError(f"transformers failed: {type(exc).__name__}: {exc}") from exc
        if options.task == TEXT_CLASSIFICATION:
            produced = self._classified(output.logits)
        elif options.task == FEATURE_EXTRACTION:
            produced = {"embedding": self._pooled(output.last_hidden_state, feed["attention_mask"])}
        else:
            produced = self._tokens(output.logits, encoded["input_ids"], special, encoded["attention_mask"])
        return cast_outputs(self.record, produced)

    def _classified(self, logits: Any) -> Arrays:
        values = logits.float()
        probabilities = self._torch.softmax(values, dim=-1)
        labels = [self._labels.get(i, f"LABEL_{i}").encode() for i in values.argmax(dim=-1).tolist()]
        return {
            "logits": values.cpu().numpy(),
            "probabilities": probabilities.cpu().numpy(),
            "label": _objects(labels, (len(labels),)),
        }

    def _pooled(self, hidden: Any, mask: Any) -> npt.NDArray[Any]:
        assert self._options is not None
        hidden = hidden.float()
        if self._options.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        if self._options.normalize:
            pooled = self._torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return np.asarray(pooled.cpu().numpy())

    def _tokens(self, logits: Any, ids: Any, special: Any, mask: Any) -> Arrays:
        assert self._options is not None
        width = self._options.max_length
        predicted = logits.argmax(dim=-1).cpu().tolist()
        rows = len(predicted)
        tokens: list[bytes] = []
        labels: list[bytes] = []
        for row in range(rows):
            keep = [i for i, (s, m) in enumerate(zip(special[row].tolist(), mask[row].tolist(), strict=True))
                    if not s and m]  # fmt: skip
            words = self._tokenizer.convert_ids_to_tokens([ids[row, i].item() for i in keep])
            names = [self._labels.get(predicted[row][i], f"LABEL_{predicted[row][i]}") for i in keep]
            pad = width - len(keep)
            tokens += [word.encode() for word in words] + [b""] * pad
            labels += [label.encode() for label in names] + [b""] * pad
        return {"tokens": _objects(tokens, (rows, width)), "labels": _objects(labels, (rows, width))}

    def unload(self) -> None:
        self._model = self._tokenizer = None


def _objects(items: list[bytes], shape: tuple[int, ...]) -> npt.NDArray[Any]:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)
