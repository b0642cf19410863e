"""Closed-loop HTTP load generator for the OIP v2 infer endpoint, with latency statistics."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import numpy as np


@dataclass
class LoadResult:
    """Figures of one closed-loop run."""

    model: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    req_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    mean_batch_size: float | None
    error_samples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        batch = "-" if self.mean_batch_size is None else f"{self.mean_batch_size:5.1f}"
        return (
            f"{self.model:>8} c={self.concurrency:<3} {self.req_per_s:8.0f} req/s  p50 {self.p50_ms:6.2f} ms  "
            f"p90 {self.p90_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms  errors {self.errors}  mean batch {batch}"
        )


def binary_body(name: str, array: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """An OIP v2 binary-extension infer body for one FP32 input, asking for binary outputs."""
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return header + raw, headers


def json_body(name: str, array: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """An OIP v2 JSON infer body for one FP32 input (outputs come back as JSON too)."""
    doc = {"inputs": [{"name": name, "datatype": "FP32", "shape": list(array.shape), "data": array.ravel().tolist()}]}
    return json.dumps(doc).encode(), {"Content-Type": "application/json"}


def text_json_body(name: str, texts: list[str]) -> tuple[bytes, dict[str, str]]:
    """An OIP v2 JSON infer body for one BYTES input holding ``texts`` (shape ``[len(texts)]``)."""
    doc = {"inputs": [{"name": name, "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    return json.dumps(doc).encode(), {"Content-Type": "application/json"}


def _batch_size_of(body: bytes, header_length: str | None) -> int | None:
    head = body[: int(header_length)] if header_length else body
    try:
        params = json.loads(head).get("parameters") or {}
    except ValueError:
        return None
    value = params.get("batch_size")
    return int(value) if isinstance(value, int) else None


async def closed_loop(
    url: str,
    model: str,
    input_name: str,
    features: int,
    concurrency: int,
    duration_s: float,
    *,
    warmup_s: float = 1.0,
    rows: int = 1,
    headers: dict[str, str] | None = None,
    sample_shape: tuple[int, ...] | None = None,
    json_bodies: bool = False,
    bodies: list[tuple[bytes, dict[str, str]]] | None = None,
) -> LoadResult:
    """``concurrency`` clients each sending one request after another for ``duration_s``
    (``headers``: sent with every request, e.g. an API key; ``sample_shape``: the input's shape when it is not
    ``(rows, features)``, e.g. an image batch; ``json_bodies``: JSON bodies both ways instead of binary tensors;
    ``bodies``: the (body, headers) pairs to send in turn instead of random FP32 tensors, e.g. text_json_body's)."""
    if bodies is None:
        rng = np.random.default_rng(0)
        shape = sample_shape or (rows, features)
        count = 64 if np.prod(shape) < 1 << 16 else 8  # large inputs: a few bodies are enough
        encode = json_body if json_bodies else binary_body
        bodies = [encode(input_name, rng.standard_normal(shape).astype(np.float32)) for _ in range(count)]
    sent = bodies
    endpoint = f"{url}/v2/models/{model}/infer"
    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors: list[str] = []
    stop_at = 0.0
    measuring = False

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        i = index
        while time.perf_counter() < stop_at:
            body, headers = sent[i % len(sent)]
            i += 1
            start = time.perf_counter()
            try:
                async with session.post(endpoint, data=body, headers=headers) as response:
                    payload = await response.read()
                    ok = response.status == 200
                    hl = response.headers.get("Inference-Header-Content-Length")
            except aiohttp.ClientError as exc:
                ok, payload, hl = False, str(exc).encode(), None
            elapsed = time.perf_counter() - start
            if not measuring:
                continue
            if ok:
                latencies.append(elapsed)
                size = _batch_size_of(payload, hl)
                if size is not None:
                    batch_sizes.append(size)
            else:
                errors.append(payload[:200].decode(errors="replace"))

    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        stop_at = time.perf_counter() + warmup_s
        await asyncio.gather(*(client(session, i) for i in range(concurrency)))
        measuring = True
        began = time.perf_counter()
        stop_at = began + duration_s
        await asyncio.gather(*(client(session, i) for i in range(concurrency)))
        seconds = time.perf_counter() - began
    ms = np.array(latencies) * 1000.0 if latencies else np.array([float("nan")])
    return LoadResult(
        model=model,
        concurrency=concurrency,
        requests=len(latencies),
        errors=len(errors),
        seconds=round(seconds, 3),
        req_per_s=len(latencies) / seconds,
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=float(ms.mean()),
        mean_batch_size=float(np.mean(batch_sizes)) if batch_sizes else None,
        error_samples=errors[:3],
    )


def ort_ceiling(path: str, input_name: str, features: int, batch: int, seconds: float = 2.0) -> float:
    """Rows per second of the model run in-process by ONNX Runtime at ``batch`` rows per call."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, features)).astype(np.float32)
    session.run(None, {input_name: x})
    calls = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        session.run(None, {input_name: x})
        calls += 1
    return calls * batch / (time.perf_counter() - began)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (from /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class SSEDecoder:
    """Server-sent events from a byte stream read line by line: ``feed`` each line, get an event's data when a
    blank line ends it (``data:`` lines joined by newlines; comments and other fields ignored)."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: bytes) -> str | None:
        """The data of the event ``line`` ends, or None (``line`` may keep its CRLF or LF ending)."""
        text = line.decode("utf-8").rstrip("\r\n")
        if not text:
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        if text.startswith("data:"):
            value = text[5:]
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def close(self) -> str | None:
        """The data of an event the stream ended without a blank line after, if any."""
        return self.feed(b"")


async def sse_events(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """Each event's data (a str) of a server-sent event stream, as an async iterator, until ``[DONE]`` or the end."""
    decoder = SSEDecoder()
    async for line in content:
        data = decoder.feed(line)
        if data == "[DONE]":
            return
        if data is not None:
            yield data
    data = decoder.close()
    if data is not None and data != "[DONE]":
        yield data
