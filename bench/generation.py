"""Generation benchmark: streamed tokens per second and time to first token through the whole path, next to
``generate()`` in-process on the same model, and an OpenAI batch's throughput.

Builds a seeded tiny causal LM here (no hub): a random-initialized 2-layer Llama (hidden size 32) with a byte-level
BPE tokenizer trained in code, saved with ``save_pretrained``; registers it as a text-generation model on a fresh
local stack (embedded broker + Redis + 1 gateway + 1 fixed worker, ``FLEET_WORKER_MAX_SEQUENCES`` = the largest
concurrency unless ``--max-sequences`` says otherwise), then:

1. for each concurrency, that many closed-loop clients each streaming ``POST /v1/completions`` (``stream``, greedy,
   ``max_tokens`` fixed, ``stream_options.include_usage``) one request after another: tokens per second overall
   (the completion tokens ``usage`` counts, of the requests finished in the window), time to first token (first
   text chunk) p50/p99, each request's tokens per second (its tokens over its whole time) p50, errors;
2. ``generate()`` in-process on the same model (one intra-op thread, as the worker), the same prompts and
   ``max_tokens``, greedy, left-padded batches of 1 and of each concurrency (capped by the worker's sequences):
   tokens per second, the ceiling the worker's running batch is measured against;
3. on a fresh stack, an OpenAI batch of ``--batch-lines`` ``/v1/completions`` lines through the Batch API with the
   official ``openai`` SDK (upload, create, poll, download the output file): lines and tokens per second from
   ``batches.create`` to ``completed``.

``--device cuda`` runs the worker (``FLEET_WORKER_DEVICE``) and the in-process model on the GPU.

    .venv/bin/python -m bench.generation [--duration 15] [--concurrency 1,16,64] [--max-tokens 32]
        [--batch-lines 10000] [--device cpu] [--json bench/results/generation.json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench.common import git_commit, machine, write_report
from bench.loadgen import sse_events
from fleet.local.stack import LocalStack, StackConfig
from fleet.models.artifacts import build_record
from schemas import ModelRegistry, Names
from schemas.topics import ensure_model_topics

MODEL = "tinylm"
CORPUS = [
    "the fleet serves models from a queue",
    "workers batch requests and reply through redis",
    "a tiny language model writes short texts",
    "tokens stream to the caller as they are made",
    "hello world, how are you today?",
]


def prompts(count: int = 32, seed: int = 0) -> list[str]:
    """``count`` prompts of 2 to 10 words drawn from CORPUS's words (seeded: both sides send the same)."""
    rng = np.random.default_rng(seed)
    words = " ".join(CORPUS).split()
    return [" ".join(rng.choice(words, size=int(rng.integers(2, 11)))) for _ in range(count)]


def _tokenizer() -> Any:
    """A byte-level BPE tokenizer trained on CORPUS (``<s>`` begins a text, ``</s>`` ends one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    transformers = importlib.import_module("transformers")  # untyped: Any
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(CORPUS * 4, trainer)
    bos = raw.token_to_id("<s>")
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def build_llama(directory: Path, seed: int = 0) -> Path:
    """A seeded random-initialized tiny Llama (2 layers, hidden size 32) and its tokenizer, saved into ``directory``."""
    import torch

    transformers = importlib.import_module("transformers")  # untyped: Any
    transformers.utils.logging.disable_progress_bar()
    tok = _tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@dataclass
class StreamResult:
    """Figures of one concurrency level of streamed completions."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    tokens: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    request_tokens_per_s_p50: float
    latency_p50_ms: float
    error_samples: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"c={self.concurrency:<3} {self.tokens_per_s:8.0f} tok/s  TTFT p50 {self.ttft_p50_ms:7.1f} ms  "
            f"p99 {self.ttft_p99_ms:7.1f} ms  per request {self.request_tokens_per_s_p50:6.0f} tok/s  "
            f"requests {self.requests}  errors {self.errors}"
        )


def _completion_body(prompt: str, max_tokens: int, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


async def _stream_once(
    session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int
) -> tuple[float | None, float, int]:
    """One streamed completion: (seconds to the first text or None, seconds in all, completion tokens);
    raises RuntimeError with the reason for an error answer or event."""
    start = time.perf_counter()
    first: float | None = None
    tokens: int | None = None
    async with session.post(f"{url}/v1/completions", json=_completion_body(prompt, max_tokens, stream=True)) as r:
        if r.status != 200:
            raise RuntimeError(f"{r.status} {(await r.text())[:200]}")
        async for data in sse_events(r.content):
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(f"error event: {str(event['error'])[:200]}")
            if first is None and any(c.get("text") for c in event.get("choices", ())):
                first = time.perf_counter() - start
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
    if tokens is None:
        raise RuntimeError("the stream ended without usage")
    return first, time.perf_counter() - start, tokens


async def streamed(url: str, concurrency: int, duration_s: float, max_tokens: int, warmup_s: float) -> StreamResult:
    """``concurrency`` clients each streaming one completion after another for ``duration_s`` (after a warm-up)."""
    texts = prompts()
    ttft: list[float] = []
    latencies: list[float] = []
    per_request: list[float] = []
    errors: list[str] = []
    counted = [0]
    stop_at = 0.0
    measuring = False

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        i = index
        while time.perf_counter() < stop_at:
            prompt = texts[i % len(texts)]
            i += 1
            try:
                first, took, tokens = await _stream_once(session, url, prompt, max_tokens)
            except (TimeoutError, RuntimeError, aiohttp.ClientError, ValueError) as exc:
                if measuring:
                    errors.append(str(exc) or type(exc).__name__)
                continue
            if not measuring:
                continue
            counted[0] += tokens
            latencies.append(took)
            if first is not None:
                ttft.append(first)
            per_request.append(tokens / took)

    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        stop_at = time.perf_counter() + warmup_s
        await asyncio.gather(*(client(session, i) for i in range(concurrency)))
        measuring = True
        began = time.perf_counter()
        stop_at = began + duration_s
        await asyncio.gather(*(client(session, i) for i in range(concurrency)))
        seconds = time.perf_counter() - began

    def pct(values: list[float], q: float, scale: float = 1.0) -> float:
        return round(float(np.percentile(values, q)) * scale, 2) if values else float("nan")

    return StreamResult(
        concurrency=concurrency,
        requests=len(latencies),
        errors=len(errors),
        seconds=round(seconds, 3),
        tokens=counted[0],
        tokens_per_s=round(counted[0] / seconds, 1),
        ttft_p50_ms=pct(ttft, 50, 1000.0),
        ttft_p99_ms=pct(ttft, 99, 1000.0),
        request_tokens_per_s_p50=pct(per_request, 50),
        latency_p50_ms=pct(latencies, 50, 1000.0),
        error_samples=errors[:3],
    )


def in_process(path: Path, device: str, threads: int, batches: list[int], max_tokens: int, seconds: float) -> dict[
    int, float
]:
    """Tokens per second of greedy ``generate()`` here at each batch size (left-padded prompts, as the worker pads)."""
    import torch

    transformers = importlib.import_module("transformers")  # untyped: Any
    torch.set_num_threads(threads)
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    tok.padding_side = "left"
    model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval().to(device)
    texts = prompts()
    figures: dict[int, float] = {}
    for size in batches:
        batch = tok([texts[i % len(texts)] for i in range(size)], return_tensors="pt", padding=True).to(device)

        def once(batch: Any = batch) -> int:
            with torch.inference_mode():
                out = model.generate(
                    **batch, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id
                )
            new = out[:, batch["input_ids"].shape[1] :].tolist()
            # The fleet counts a sequence's tokens up to (without) its end token, as ``usage`` does.
            return sum(row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row) for row in new)

        once()
        tokens, calls = 0, 0
        began = time.perf_counter()
        while time.perf_counter() - began < seconds or calls < 2:
            tokens += once()
            calls += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        figures[size] = tokens / (time.perf_counter() - began)
    return figures


async def _register(stack: LocalStack, path: Path) -> None:
    record = await asyncio.to_thread(build_record, MODEL, "1", path, load=False)
    names = Names(stack.config.namespace)
    redis = stack.settings.redis.client()
    try:
        await ModelRegistry(redis, names).register(record)
    finally:
        await redis.aclose()
    await ensure_model_topics(stack.settings.kafka, names, MODEL)


async def _first_answer(url: str, timeout_s: float = 180.0) -> None:
    """Wait for a first completion (the worker imports torch and loads the model), unmeasured."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        while True:
            body = _completion_body("hello", 4, stream=False)
            async with session.post(f"{url}/v1/completions", json=body) as response:
                text = await response.text(errors="replace")
                if response.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no completion within {timeout_s:.0f} s: {response.status} {text[:300]}")
            await asyncio.sleep(0.5)


async def _stack(path: Path, env: dict[str, str]) -> tuple[LocalStack, Path]:
    home = Path(tempfile.mkdtemp(prefix="fleet-bench-gen-"))
    stack_env = env | {"FLEET_GATEWAY_FILES_DIR": str(home / "files")}
    stack = LocalStack(StackConfig(home=home, workers=1, models=(), env=stack_env))
    await stack.start()
    try:
        await _register(stack, path)
        await stack.restart_workers([MODEL])
        await _first_answer(stack.url)
    except BaseException:
        await stack.stop()
        raise
    return stack, home


async def openai_batch(url: str, lines: int, max_tokens: int, timeout_s: float) -> dict[str, Any]:
    """``lines`` completions through the Batch API with the ``openai`` SDK: upload, create, poll, download."""
    import openai

    texts = prompts()
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=2, timeout=120)
    try:
        jsonl = "".join(
            json.dumps(
                {"custom_id": f"line-{i}", "method": "POST", "url": "/v1/completions",
                 "body": _completion_body(texts[i % len(texts)], max_tokens, stream=False)}  # fmt: skip
            )
            + "\n"
            for i in range(lines)
        ).encode()
        uploaded = await client.files.create(file=("lines.jsonl", jsonl), purpose="batch")
        began = time.perf_counter()
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
        )
        shown = -1
        while batch.status not in ("completed", "failed", "cancelled", "expired"):
            if time.perf_counter() - began > timeout_s:  # report what it did so far, then stop it
                print(f"  the batch is still {batch.status} after {timeout_s:.0f} s: cancelling it", flush=True)
                batch = await client.batches.cancel(batch.id)
                break
            await asyncio.sleep(1.0)
            batch = await client.batches.retrieve(batch.id)
            counts = batch.request_counts
            done = (counts.completed + counts.failed) if counts else 0
            if done // 1000 != shown // 1000:
                shown = done
                print(f"  batch {batch.status}: {done}/{lines} lines after {time.perf_counter() - began:.0f} s")
        seconds = time.perf_counter() - began
        answered = []
        if batch.output_file_id:
            content = await client.files.content(batch.output_file_id)
            answered = [json.loads(line) for line in content.text.splitlines() if line.strip()]
        failed = 0
        if batch.error_file_id:
            content = await client.files.content(batch.error_file_id)
            failed = sum(1 for line in content.text.splitlines() if line.strip())
    finally:
        await client.close()
    answered = [a for a in answered if a.get("response") and a["response"].get("status_code") == 200]
    tokens = sum(int(a["response"]["body"]["usage"]["completion_tokens"]) for a in answered)
    ids = {a["custom_id"] for a in answered}
    return {
        "lines": lines,
        "status": batch.status,
        "completed": len(answered),
        "failed": failed,
        "distinct_custom_ids": len(ids),
        "seconds": round(seconds, 2),
        "lines_per_s": round(len(answered) / seconds, 1),
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The streamed points on one stack, ``generate()`` in-process, then the batch on a fresh stack."""
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    max_sequences = args.max_sequences or max(concurrencies)
    env = dict(os.environ)
    env.setdefault("FLEET_WORKER_INTRA_OP_THREADS", "1")
    env["FLEET_WORKER_DEVICE"] = args.device
    env["FLEET_WORKER_MAX_SEQUENCES"] = str(max_sequences)
    env.setdefault("FLEET_GATEWAY_BATCH_POLL_S", "0.2")
    threads = int(env["FLEET_WORKER_INTRA_OP_THREADS"])
    directory = Path(tempfile.mkdtemp(prefix="fleet-bench-gen-model-"))
    path = await asyncio.to_thread(build_llama, directory / "llama", args.seed)
    report: dict[str, Any] = {
        "benchmark": "generation",
        "commit": git_commit(),
        "machine": machine(),
        "device": args.device,
        "model": "tiny random Llama: 2 layers, hidden 32, vocabulary 303, greedy",
        "max_tokens": args.max_tokens,
        "max_sequences": max_sequences,
        "intra_op_threads": threads,
        "duration_s": args.duration,
        "note": "one shared machine: every figure is an upper bound of what a quiet machine would give",
        "streamed": [],
        "in_process_tokens_per_s": {},
        "batch": None,
    }
    stack, _ = await _stack(path, env)
    try:
        for concurrency in concurrencies:
            result = await streamed(stack.url, concurrency, args.duration, args.max_tokens, args.warmup)
            report["streamed"].append(asdict(result))
            print(result.line(), flush=True)
            if result.error_samples:
                print(f"{'':>6}errors: {result.error_samples}", flush=True)
    finally:
        await stack.stop()
    sizes = sorted({1, *(min(c, max_sequences) for c in concurrencies)})
    figures = await asyncio.to_thread(in_process, path, args.device, threads, sizes, args.max_tokens, args.ceiling)
    report["in_process_tokens_per_s"] = {str(size): round(rate, 1) for size, rate in figures.items()}
    for size, rate in figures.items():
        print(f"generate() in-process, batch {size:>2}, {threads} thread(s), {args.device}: {rate:,.0f} tok/s")
    if args.batch_lines > 0:
        stack, _ = await _stack(path, env)
        try:
            report["batch"] = await openai_batch(stack.url, args.batch_lines, args.max_tokens, args.batch_timeout)
        finally:
            await stack.stop()
        print(f"OpenAI batch: {report['batch']}", flush=True)
    _table(report, max_sequences)
    return report


def _table(report: dict[str, Any], max_sequences: int) -> None:
    ceiling = report["in_process_tokens_per_s"]
    print()
    print(f"{'concurrency':>11} | {'fleet tok/s':>11} | {'TTFT p50 ms':>11} | {'TTFT p99 ms':>11} | "
          f"{'req tok/s p50':>13} | {'errors':>6} | {'generate() tok/s':>16} | {'fleet/ceiling':>13}")  # fmt: skip
    for point in report["streamed"]:
        c = point["concurrency"]
        best = ceiling.get(str(min(c, max_sequences)))
        ratio = f"{point['tokens_per_s'] / best:.2f}" if best else "-"
        print(f"{c:>11} | {point['tokens_per_s']:>11.0f} | {point['ttft_p50_ms']:>11.1f} | "
              f"{point['ttft_p99_ms']:>11.1f} | {point['request_tokens_per_s_p50']:>13.0f} | {point['errors']:>6} | "
              f"{best or float('nan'):>16.0f} | {ratio:>13}")  # fmt: skip
    print(f"generate() in-process at batch 1: {ceiling.get('1', float('nan')):,.0f} tok/s")
    batch = report["batch"]
    if batch:
        print(f"OpenAI batch of {batch['lines']:,} lines: {batch['status']}, {batch['completed']:,} answered, "
              f"{batch['failed']} failed, {batch['seconds']:.0f} s: {batch['lines_per_s']:.0f} lines/s, "
              f"{batch['tokens_per_s']:.0f} tok/s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured per concurrency level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated client counts")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every completion")
    parser.add_argument("--max-sequences", type=int, default=0, help="the worker's cap (0: the largest concurrency)")
    parser.add_argument("--ceiling", type=float, default=3.0, help="seconds per in-process batch size")
    parser.add_argument("--batch-lines", type=int, default=10_000, help="lines of the OpenAI batch (0: none)")
    parser.add_argument("--batch-timeout", type=float, default=1800.0, help="give up on the batch after this")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N], for the worker and in-process")
    parser.add_argument("--seed", type=int, default=0, help="the tiny model's weights")
    parser.add_argument("--json", default="bench/results/generation.json", help="where to write the figures")
    args = parser.parse_args()
    began = time.perf_counter()
    report = asyncio.run(run(args))
    report["wall_s"] = round(time.perf_counter() - began, 1)
    write_report(args.json, report)


if __name__ == "__main__":
    main()
