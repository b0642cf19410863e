"""Hugging Face transformers models: the tasks the fleet serves, their options and their signatures.

Shared by registration (``fleet models register --framework transformers --task ...``, which infers the
signature from the model's ``config.json``) and the worker's runtime (``workers.runtimes.transformers``).
Every task takes one input, ``text`` (BYTES, one UTF-8 string per row, shape ``[-1]``), tokenized in the
worker and padded to the longest text of the batch, truncated at ``max_length`` tokens. Outputs:

- ``text-classification``: ``logits`` (FP32 ``[-1, labels]``), ``label`` (BYTES ``[-1]``: the id2label name of
  the largest logit) and, when declared, ``probabilities`` (FP32 ``[-1, labels]``, the softmax of the logits).
- ``feature-extraction``: ``embedding`` (FP32 ``[-1, hidden]``): the last hidden state pooled over the text's
  tokens (option ``pooling``: ``mean`` over the attention mask, the default, or ``cls``, the first token),
  scaled to unit length when option ``normalize`` is ``true``.
- ``token-classification``: ``tokens`` and ``labels`` (BYTES ``[-1, max_length]``): each text's tokens (special
  tokens left out) and the id2label name of each, padded with empty strings to ``max_length``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ErrorCode, SchemaError
from .signature import TensorSpec

TEXT_CLASSIFICATION = "text-classification"
FEATURE_EXTRACTION = "feature-extraction"
TOKEN_CLASSIFICATION = "token-classification"
TASKS = (TEXT_CLASSIFICATION, FEATURE_EXTRACTION, TOKEN_CLASSIFICATION)
POOLINGS = ("mean", "cls")
#: The options a record may carry, each with what it accepts.
OPTIONS = {
    "pooling": "mean or cls (feature-extraction)",
    "normalize": "true or false (feature-extraction)",
    "max_length": "a whole number of tokens >= 2",
}
#: The longest truncation length used when neither the option nor the config says one.
DEFAULT_MAX_LENGTH = 512


def _refuse(message: str) -> SchemaError:
    return SchemaError(message, code=ErrorCode.INVALID_REQUEST)


def task_from_config(config: dict[str, Any]) -> str | None:
    """The task a model's ``architectures`` names (``*ForSequenceClassification`` ...), or None."""
    for architecture in config.get("architectures") or ():
        name = str(architecture)
        if name.endswith("ForSequenceClassification"):
            return TEXT_CLASSIFICATION
        if name.endswith("ForTokenClassification"):
            return TOKEN_CLASSIFICATION
        if name.endswith("Model"):
            return FEATURE_EXTRACTION
    return None


@dataclass(frozen=True, slots=True)
class TextOptions:
    """A transformers record's options, checked."""

    task: str
    pooling: str = "mean"
    normalize: bool = False
    max_length: int = DEFAULT_MAX_LENGTH


def text_options(task: str | None, options: dict[str, str], config: dict[str, Any]) -> TextOptions:
    """The checked options of a transformers model (``max_length`` defaults to the model's position limit).

    SchemaError(INVALID_REQUEST) naming the task or option that is not accepted.
    """
    if task not in TASKS:
        raise _refuse(f"--task {task!r} is not one of {list(TASKS)}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise _refuse(f"unknown option {unknown[0]!r}: the options are {OPTIONS}")
    pooling = options.get("pooling", "mean")
    if pooling not in POOLINGS:
        raise _refuse(f"option pooling={pooling!r} is not one of {list(POOLINGS)}")
    normalize = options.get("normalize", "false").lower()
    if normalize not in ("true", "false"):
        raise _refuse(f"option normalize={normalize!r} must be true or false")
    if task != FEATURE_EXTRACTION and ("pooling" in options or "normalize" in options):
        raise _refuse(f"options pooling and normalize apply to {FEATURE_EXTRACTION} only")
    limit = config.get("max_position_embeddings")
    default = min(limit, DEFAULT_MAX_LENGTH) if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_LENGTH
    raw = options.get("max_length", str(default))
    if not raw.isdigit() or int(raw) < 2:
        raise _refuse(f"option max_length={raw!r} must be a whole number of tokens >= 2")
    return TextOptions(task, pooling, normalize == "true", int(raw))


def id2label(config: dict[str, Any]) -> dict[int, str]:
    """The model's class names by id (``LABEL_i`` where the config names none)."""
    raw = config.get("id2label") or {}
    if isinstance(raw, dict) and raw:
        return {int(key): str(value) for key, value in raw.items()}
    count = config.get("num_labels")
    return {i: f"LABEL_{i}" for i in range(count if isinstance(count, int) else 2)}


Specs = tuple[TensorSpec, ...]


def text_signature(options: TextOptions, config: dict[str, Any]) -> tuple[Specs, Specs]:
    """The inputs and outputs a transformers model of ``options.task`` serves (see the module's docstring)."""
    inputs = (TensorSpec("text", "BYTES", (-1,)),)
    if options.task == TEXT_CLASSIFICATION:
        labels = len(id2label(config))
        return inputs, (TensorSpec("logits", "FP32", (-1, labels)), TensorSpec("label", "BYTES", (-1,)))
    if options.task == FEATURE_EXTRACTION:
        hidden = config.get("hidden_size") or config.get("d_model") or config.get("dim")
        return inputs, (TensorSpec("embedding", "FP32", (-1, int(hidden) if isinstance(hidden, int) else -1)),)
    width = options.max_length
    return inputs, (TensorSpec("tokens", "BYTES", (-1, width)), TensorSpec("labels", "BYTES", (-1, width)))


#: The outputs each task can produce (a record declares some of them).
TASK_OUTPUTS = {
    TEXT_CLASSIFICATION: ("logits", "label", "probabilities"),
    FEATURE_EXTRACTION: ("embedding",),
    TOKEN_CLASSIFICATION: ("tokens", "labels"),
}
