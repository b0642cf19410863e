"""Causal language models for generation: a running batch of sequences that sequences join and leave between steps.

:class:`GenerationBackend` is what the worker's generation engine (``workers.generation``) drives, one call at a
time from its own thread: ``add`` a sequence (its prompt is run alone, its KV cache merged into the running
batch), ``step`` the whole batch one token, ``remove`` finished sequences. Another engine (vLLM, say) would
implement the same three calls. :class:`GenerativeRuntime` implements it with Hugging Face transformers on the
CPU or one GPU: the batch's KV cache is a ``DynamicCache`` padded on the left; a joining sequence's cache is
padded to the batch's length (or the batch's to its length) and concatenated along the batch dimension, so
it starts decoding at the next step (continuous batching), and the positions of each row count only its own
tokens, as ``generate()`` does with left padding. Leaving rows are dropped with ``batch_select_indices`` and
the columns only padding is left in are cut off.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy.typing as npt

from schemas.artifact_formats import hf_config
from schemas.errors import SchemaError
from schemas.text_models import text_options

from ..errors import ModelExecutionError, ModelLoadError
from .base import Arrays, Runtime, choose_device


class GenerationBackend(ABC):
    """A running batch of sequences, stepped one token at a time (not thread-safe: one caller thread)."""

    #: Token ids that end a sequence.
    eos_ids: frozenset[int] = frozenset()
    #: The longest prompt plus generated tokens a sequence may hold.
    max_context: int = 2048

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """The prompt's token ids."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """The text of generated token ids (special tokens left out)."""

    @abstractmethod
    def add(self, key: str, prompt: Sequence[int]) -> Any:
        """Run ``prompt`` and make ``key`` a row of the running batch; the logits of its next token (1-d)."""

    @abstractmethod
    def step(self, tokens: Mapping[str, int]) -> dict[str, Any]:
        """Feed each row its last chosen token; the logits of every row's next token, by key."""

    @abstractmethod
    def remove(self, keys: Sequence[str]) -> None:
        """Drop the rows of ``keys`` from the running batch."""

    @property
    @abstractmethod
    def rows(self) -> int:
        """Sequences in the running batch."""

    def chat_template(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        """The prompt of a chat by the tokenizer's template; None when it has none."""
        return None


class GenerativeRuntime(Runtime, GenerationBackend):
    """A transformers causal LM and its tokenizer, as a :class:`GenerationBackend`."""

    takes_text = True

    _torch: Any = None
    _model: Any = None
    _tokenizer: Any = None

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
        transformers.utils.logging.disable_progress_bar()
        device = choose_device(self.requested_device, bool(torch.cuda.is_available()), "torch")
        try:
            torch.set_num_threads(self.threads)
            tokenizer = transformers.AutoTokenizer.from_pretrained(self.record.artifact, local_files_only=True)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                self.record.artifact, local_files_only=True, use_safetensors=True, trust_remote_code=False
            )
            model.eval()
            model.to(device)
        except Exception as exc:  # transformers raises OSError, ValueError and its own types for bad directories
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(
                name, version, f"transformers cannot load the model: {type(exc).__name__}: {first}"
            ) from None
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or ()))
        limit = config.get("max_position_embeddings") or config.get("n_positions")
        self.max_context = int(limit) if isinstance(limit, int) and limit > 0 else options.max_length
        self._torch, self._model, self._tokenizer = torch, model, tokenizer
        self.device = device
        self.providers = ("torch",)
        self._keys: list[str] = []
        self._cache: Any = None
        self._mask: Any = None  # [rows, length]: 1 for a token, 0 for left padding
        self._positions: Any = None  # [rows]: the position of each row's next token

    # the runtime contract: a generation model is served by the generation engine, not by tensor rounds
    def predict(self, inputs: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        raise ModelExecutionError(f"{self.record.name} is a text-generation model: the generation engine runs it")

    def unload(self) -> None:
        self._model = self._tokenizer = self._cache = None
        self._keys = []

    # the backend ---------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=True)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    def chat_template(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        if not getattr(self._tokenizer, "chat_template", None):
            return None
        text = self._tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return str(text)

    @property
    def rows(self) -> int:
        return len(self._keys)

    def add(self, key: str, prompt: Sequence[int]) -> Any:
        torch = self._torch
        ids = torch.tensor([list(prompt)], device=self.device)
        try:
            with torch.inference_mode():
                out = self._model(input_ids=ids, use_cache=True)
        except Exception as exc:  # torch raises many unrelated types
            raise ModelExecutionError(f"transformers failed: {type(exc).__name__}: {exc}") from exc
        length = ids.shape[1]
        mask = torch.ones((1, length), dtype=torch.long, device=self.device)
        position = torch.tensor([length], device=self.device)
        if self._cache is None or not self._keys:
            self._cache, self._mask, self._positions = _cache_of(out), mask, position
        else:
            self._merge(_cache_of(out), mask, position)
        self._keys.append(key)
        return out.logits[0, -1].float()

    def _merge(self, cache: Any, mask: Any, position: Any) -> None:
        """Append a one-row cache to the running batch, left-padding whichever is shorter."""
        torch = self._torch
        width, joining = self._mask.shape[1], mask.shape[1]
        pad_batch, pad_new = max(0, joining - width), max(0, width - joining)
        layers = []
        for ours, theirs in zip(self._cache.layers, cache.layers, strict=True):
            keys = torch.cat([_left_pad(torch, ours.keys, pad_batch), _left_pad(torch, theirs.keys, pad_new)])
            values = torch.cat([_left_pad(torch, ours.values, pad_batch), _left_pad(torch, theirs.values, pad_new)])
            layers.append((keys, values))
        self._cache = importlib.import_module("transformers").DynamicCache(layers)
        self._mask = torch.cat(
            [torch.nn.functional.pad(self._mask, (pad_batch, 0)), torch.nn.functional.pad(mask, (pad_new, 0))]
        )
        self._positions = torch.cat([self._positions, position])

    def step(self, tokens: Mapping[str, int]) -> dict[str, Any]:
        torch = self._torch
        ids = torch.tensor([[tokens[key]] for key in self._keys], device=self.device)
        self._mask = torch.nn.functional.pad(self._mask, (0, 1), value=1)
        try:
            with torch.inference_mode():
                out = self._model(
                    input_ids=ids,
                    attention_mask=self._mask,
                    position_ids=self._positions.unsqueeze(1),
                    cache=self._cache,
                    use_cache=True,
                )
        except Exception as exc:
            raise ModelExecutionError(f"transformers failed: {type(exc).__name__}: {exc}") from exc
        self._cache = _cache_of(out)
        self._positions = self._positions + 1
        logits = out.logits[:, -1].float()
        return {key: logits[row] for row, key in enumerate(self._keys)}

    def remove(self, keys: Sequence[str]) -> None:
        gone = set(keys)
        keep = [row for row, key in enumerate(self._keys) if key not in gone]
        if len(keep) == len(self._keys):
            return
        self._keys = [self._keys[row] for row in keep]
        if not keep:
            self._cache = self._mask = self._positions = None
            return
        torch = self._torch
        index = torch.tensor(keep, device=self.device)
        self._mask = self._mask.index_select(0, index)
        self._positions = self._positions.index_select(0, index)
        # Columns that are padding in every row left are cut off (the longest sequence may have left).
        start = int((self._mask.sum(dim=0) > 0).nonzero()[0].item())
        layers = [
            (layer.keys.index_select(0, index)[:, :, start:], layer.values.index_select(0, index)[:, :, start:])
            for layer in self._cache.layers
        ]
        self._cache = importlib.import_module("transformers").DynamicCache(layers)
        self._mask = self._mask[:, start:]


def _left_pad(torch: Any, tensor: Any, width: int) -> Any:
    """``tensor`` [batch, heads, length, dim] with ``width`` zero columns before its tokens."""
    return tensor if width == 0 else torch.nn.functional.pad(tensor, (0, 0, width, 0))


def _cache_of(output: Any) -> Any:
    """The KV cache a forward returned (``cache`` in newer transformers, ``past_key_values`` before)."""
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else output.past_key_values
