"""Closed-loop HTTP load generator for the OIP v2 infer endpoint, with latency statistics."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson
from yarl import URL


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
        params = orjson.loads(head).get("parameters") or {}
    except (ValueError, AttributeError):
        return None
    value = params.get("batch_size")
    return int(value) if isinstance(value, int) else None


class HttpFramingError(Exception):
    """A response the lean client cannot frame (no Content-Length and not chunked, or a malformed head)."""


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the lean client: one request at a time, the response framed by its
    Content-Length (or chunked encoding) and handed back as (status, headers, body)."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, dict[str, str], bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc or 'closed by the server'}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None or self._waiter.done():
            return
        try:
            response = self._frame()
        except HttpFramingError as exc:
            self._waiter.set_exception(exc)
            return
        if response is not None:
            self._waiter.set_result(response)

    def _frame(self) -> tuple[int, dict[str, str], bytes] | None:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpFramingError(f"malformed status line {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if "content-length" in headers:
            stop = start + int(headers["content-length"])
            if len(buffer) < stop:
                return None
            body = bytes(buffer[start:stop])
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks, stop = self._chunks(start)
            if chunks is None:
                return None
            body = b"".join(chunks)
        else:
            raise HttpFramingError("a response with neither Content-Length nor chunked encoding")
        del buffer[:stop]
        return int(parts[1]), headers, body

    def _chunks(self, at: int) -> tuple[list[bytes] | None, int]:
        buffer, chunks = self._buffer, list[bytes]()
        while True:
            line_end = buffer.find(b"\r\n", at)
            if line_end < 0:
                return None, at
            size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
            at = line_end + 2
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", at - 2)
                return (chunks, trailer_end + 4) if trailer_end >= 0 else (None, at)
            if len(buffer) < at + size + 2:
                return None, at
            chunks.append(bytes(buffer[at : at + size]))
            at += size + 2

    async def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send one whole request and wait for its response."""
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        if self._buffer:  # the response (or its head) came in before this call waited
            self.data_received(b"")
        return await self._waiter

    def close(self) -> None:
        """Close the connection."""
        self.closed = True
        if self._transport is not None:
            self._transport.close()


def _request_bytes(url: URL, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A whole HTTP/1.1 POST (head and body), built once and sent as many times as needed."""
    fields = {"Host": f"{url.host}:{url.port}", "Content-Length": str(len(body))} | headers
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode("latin-1") + body


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
    http_client: str = "lean",
) -> LoadResult:
    """``concurrency`` clients each sending one request after another for ``duration_s``
    (``headers``: sent with every request, e.g. an API key; ``sample_shape``: the input's shape when it is not
    ``(rows, features)``, e.g. an image batch; ``json_bodies``: JSON bodies both ways instead of binary tensors;
    ``bodies``: the (body, headers) pairs to send in turn instead of random FP32 tensors, e.g. text_json_body's).

    ``http_client``: ``lean`` (default) sends each request's bytes, built once, on a keep-alive connection per client
    and frames the response itself, so the load generator takes little of the CPU it shares with the fleet;
    ``aiohttp`` uses aiohttp's client (about 5x the load generator's CPU per request)."""
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

    def record(ok: bool, elapsed: float, payload: bytes, hl: str | None) -> None:
        if not measuring:
            return
        if ok:
            latencies.append(elapsed)
            size = _batch_size_of(payload, hl)
            if size is not None:
                batch_sizes.append(size)
        else:
            errors.append(payload[:200].decode(errors="replace"))

    async def warm_then_measure(clients: Callable[[], Awaitable[Any]]) -> float:
        """Run the clients through the warm-up, then again through the measured window; its seconds."""
        nonlocal stop_at, measuring
        stop_at = time.perf_counter() + warmup_s
        await clients()
        measuring = True
        began = time.perf_counter()
        stop_at = began + duration_s
        await clients()
        return time.perf_counter() - began

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
            record(ok, time.perf_counter() - start, payload, hl)

    target = URL(url)
    host, port = target.host or "127.0.0.1", target.port or 80
    path = f"/v2/models/{model}/infer"
    wire = [_request_bytes(target, path, body, (headers or {}) | extra) for body, extra in sent]
    loop = asyncio.get_running_loop()

    async def lean_client(index: int) -> None:
        i = index
        connection: _Connection | None = None
        try:
            while time.perf_counter() < stop_at:
                request = wire[i % len(wire)]
                i += 1
                start = time.perf_counter()
                try:
                    if connection is None or connection.closed:
                        _, connection = await loop.create_connection(_Connection, host, port)
                    async with asyncio.timeout(60):
                        status, response_headers, payload = await connection.exchange(request)
                    ok, hl = status == 200, response_headers.get("inference-header-content-length")
                    if response_headers.get("connection", "").lower() == "close":
                        connection.close()
                except (OSError, HttpFramingError, TimeoutError) as exc:
                    ok, payload, hl = False, str(exc).encode(), None
                    if connection is not None:
                        connection.close()
                        connection = None
                record(ok, time.perf_counter() - start, payload, hl)
        finally:
            if connection is not None:
                connection.close()

    if http_client == "lean":
        seconds = await warm_then_measure(lambda: asyncio.gather(*(lean_client(i) for i in range(concurrency))))
    else:
        connector = aiohttp.TCPConnector(limit=concurrency + 4)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
            seconds = await warm_then_measure(
                lambda: asyncio.gather(*(client(session, i) for i in range(concurrency)))
            )
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
