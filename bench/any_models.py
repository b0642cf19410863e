"""Models beyond ONNX through the whole path: a tiny BERT text classifier (text in, class out) and an XGBoost
classifier, each at several concurrencies, next to the same runtime class called in-process.

Builds both models here (no hub): a random-initialized 2-layer BERT (hidden size 32) with a WordPiece tokenizer
trained in code, saved with ``save_pretrained``, and a binary XGBoost classifier trained on generated data,
saved as a JSON booster. Registers them as ``fleet models register`` does (framework, task and signature
inferred, loaded and run once), then for each model and concurrency runs closed-loop load on a fresh local
stack (embedded broker + Redis + 1 gateway + 1 fixed worker, one intra-op thread) and prints req/s, p50/p99,
errors and the mean batch the worker formed. Texts go as JSON BYTES bodies, one text per request; the
booster's rows as binary FP32 bodies, one row per request. Afterwards the same runtime class the worker uses
(``TransformersRuntime``, ``XGBoostRuntime``) is loaded in this process with one thread and timed at batch 1
and at each batch size the worker formed (rounded): the in-process ceiling for those batches.

    .venv/bin/python -m bench.any_models [--duration 10] [--concurrency 1,16,64] [--models text,xgboost]
                                         [--json bench/results/any_models.json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt

from bench.common import git_commit, machine, write_report
from bench.loadgen import binary_body, closed_loop, text_json_body
from fleet.local.stack import LocalStack, StackConfig
from fleet.models.artifacts import build_record
from schemas import BatchingConfig, ModelRecord, ModelRegistry, Names
from schemas.topics import ensure_model_topics
from workers.runtimes import Runtime, runtime_class

CORPUS = [
    "the fleet serves models from a queue",
    "workers batch requests and reply through redis",
    "a tiny bert reads short texts",
    "good great fine happy",
    "bad awful sad broken",
    "tokens are split into word pieces",
]
FEATURES = 16

Bodies = list[tuple[bytes, dict[str, str]]]


def _tokenizer() -> Any:
    """A BERT-style WordPiece tokenizer trained on CORPUS, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    transformers = importlib.import_module("transformers")  # untyped: Any
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.train_from_iterator(CORPUS * 4, trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials))
    cls, sep = raw.token_to_id("[CLS]"), raw.token_to_id("[SEP]")
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    raw.decoder = decoders.WordPiece()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )  # fmt: skip


def build_bert(directory: Path) -> Path:
    """A seeded tiny BERT sequence classifier (3 labels) and its tokenizer, saved into ``directory``."""
    import torch

    transformers = importlib.import_module("transformers")  # untyped: Any
    transformers.utils.logging.disable_progress_bar()
    tokenizer = _tokenizer()
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, id2label=labels, label2id={v: k for k, v in labels.items()},
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_xgboost(path: Path) -> Path:
    """A binary XGBoost classifier (100 trees of depth 6, FEATURES features) trained on generated rows."""
    import xgboost as xgb

    x = _rows(4000, seed=0)
    y = (x[:, 0] + x[:, 1] * x[:, 2] - x[:, 3] > 0).astype(np.int64)
    xgb.XGBClassifier(n_estimators=100, max_depth=6, n_jobs=1).fit(x, y).save_model(path)
    return path


def _rows(count: int, seed: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((count, FEATURES)).astype(np.float32)


def _texts(count: int, seed: int) -> list[str]:
    """``count`` texts of 2 to 24 words drawn from CORPUS's words (so lengths, and padding, vary)."""
    rng = np.random.default_rng(seed)
    words = " ".join(CORPUS).split()
    return [" ".join(rng.choice(words, size=int(rng.integers(2, 25)))) for _ in range(count)]


@dataclass(frozen=True)
class BenchModel:
    """One benchmarked model: how it is built, batched, sent and fed in-process."""

    build: Callable[[Path], Path]
    artifact: str  # the file or directory name under the stack's home
    batching: BatchingConfig
    bodies: Callable[[str], Bodies]  # the input's name -> request bodies (one row each)
    batch: Callable[[int], npt.NDArray[Any]]  # rows -> an in-process input batch


MODELS = {
    "text": BenchModel(
        build_bert,
        "bert",
        BatchingConfig(32, 2.0),
        lambda name: [text_json_body(name, [text]) for text in _texts(64, seed=1)],
        lambda rows: np.array([text.encode() for text in _texts(rows, seed=2)], dtype=object),
    ),
    "xgboost": BenchModel(
        build_xgboost,
        "booster.json",
        BatchingConfig(64, 2.0),
        lambda name: [binary_body(name, row[None, :]) for row in _rows(64, seed=1)],
        lambda rows: _rows(rows, seed=2),
    ),
}


async def _register(stack: LocalStack, name: str, model: BenchModel) -> ModelRecord:
    """``name`` built under the stack's home and registered as ``fleet models register`` would, with its topic."""
    home = stack.config.home
    path = await asyncio.to_thread(model.build, home / model.artifact)
    record = await asyncio.to_thread(build_record, name, "1", path, batching=model.batching, load=True)
    redis = stack.settings.redis.client()
    try:
        await ModelRegistry(redis, Names(stack.config.namespace)).register(record)
    finally:
        await redis.aclose()
    await ensure_model_topics(stack.settings.kafka, Names(stack.config.namespace), name)
    return record


async def _first_answer(url: str, name: str, request: tuple[bytes, dict[str, str]], timeout_s: float = 120.0) -> None:
    """Wait for a first 200 answer: it loads the model (the worker imports torch and transformers), unmeasured."""
    body, headers = request
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        while True:
            async with session.post(f"{url}/v2/models/{name}/infer", data=body, headers=headers) as response:
                text = await response.text(errors="replace")
                if response.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: no answer within {timeout_s:.0f} s: {response.status} {text[:300]}")
            await asyncio.sleep(0.5)


async def _measure(name: str, model: BenchModel, concurrency: int, duration_s: float, env: dict[str, str]) -> Any:
    """One point on a fresh stack (the embedded broker slows as its in-memory log grows); returns (result, record)."""
    home = Path(tempfile.mkdtemp(prefix="fleet-bench-any-"))
    async with LocalStack(StackConfig(home=home, workers=1, models=(), env=env)) as stack:
        record = await _register(stack, name, model)
        await stack.restart_workers([name])
        bodies = model.bodies(record.inputs[0].name)
        await _first_answer(stack.url, name, bodies[0])
        result = await closed_loop(stack.url, name, "", 0, concurrency, duration_s, bodies=bodies)
    print(result.line(), flush=True)
    if result.error_samples:
        print(f"{'':>13}errors: {result.error_samples}", flush=True)
    return result, record


def in_process(record: ModelRecord, batch: Callable[[int], npt.NDArray[Any]], sizes: list[int], seconds: float) -> dict[
    int, float
]:
    """Rows per second of the worker's runtime class run here, one thread, at each batch size."""
    runtime: Runtime = runtime_class(record.framework)(record, "cpu", 1)
    runtime.load()
    figures: dict[int, float] = {}
    try:
        for size in sizes:
            inputs = {record.inputs[0].name: batch(size)}
            runtime.predict(inputs)
            calls = 0
            began = time.perf_counter()
            while time.perf_counter() - began < seconds:
                runtime.predict(inputs)
                calls += 1
            figures[size] = calls * size / (time.perf_counter() - began)
    finally:
        runtime.unload()
    return figures


async def run(duration_s: float, concurrencies: list[int], models: list[str], ceiling_s: float) -> dict[str, Any]:
    """Every (model, concurrency) point, then each model in-process at the batch sizes the worker formed."""
    env = dict(os.environ)
    env.setdefault("FLEET_WORKER_INTRA_OP_THREADS", "1")
    env.setdefault("FLEET_WORKER_DEVICE", "cpu")
    report: dict[str, Any] = {
        "benchmark": "any_models",
        "commit": git_commit(),
        "machine": machine(),
        "duration_s": duration_s,
        "note": "one shared machine: every figure is an upper bound of what a quiet machine would give",
        "runs": [],
        "in_process_rows_per_s": {},
    }
    for name in models:
        model = MODELS[name]
        record: ModelRecord | None = None
        sizes = {1}
        for concurrency in concurrencies:
            result, record = await _measure(name, model, concurrency, duration_s, env)
            report["runs"].append(result.as_dict() | {"framework": record.framework.value})
            if result.mean_batch_size:
                sizes.add(max(1, round(result.mean_batch_size)))
        assert record is not None  # its artifact stays in the last stack's home
        figures = await asyncio.to_thread(in_process, record, model.batch, sorted(sizes), ceiling_s)
        report["in_process_rows_per_s"][name] = {str(size): round(rate) for size, rate in figures.items()}
        for size, rate in figures.items():
            print(f"{name:>8} in-process {record.framework.value}, batch {size:>2}, 1 thread: {rate:,.0f} rows/s")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per concurrency level")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated client counts")
    parser.add_argument("--models", default="text,xgboost", help=f"comma-separated subset of {sorted(MODELS)}")
    parser.add_argument("--ceiling", type=float, default=2.0, help="seconds per in-process batch size")
    parser.add_argument("--json", default="bench/results/any_models.json", help="where to write the figures")
    args = parser.parse_args()
    began = time.perf_counter()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    report = asyncio.run(run(args.duration, concurrencies, args.models.split(","), args.ceiling))
    report["wall_s"] = round(time.perf_counter() - began, 1)
    write_report(args.json, report)


if __name__ == "__main__":
    main()
