"""What one sync request costs the fleet: Redis commands, Kafka requests and records, CPU, per process.

Starts the embedded broker behind a counting Kafka proxy (the broker advertises the proxy, so every client
connection goes through it), a Redis, and a stack of 1 gateway + 1 worker on them; registers the tiny MLP,
warms up, then runs closed-loop sync HTTP load and prints, divided by the answered requests:

- Redis commands by process (``CLIENT LIST`` ``tot-cmds`` deltas, each client mapped to its process by its
  TCP port) and by command (``INFO commandstats`` deltas);
- Kafka requests by process and API (Produce, Fetch, ...) and the records the gateway produced;
- CPU milliseconds by process (each with its children) and for the fleet together.

    .venv/bin/python -m bench.request_cost [--concurrency 64] [--duration 8] [--body json] [--worker-mode pool]
                                           [--json bench/results/request_cost.json]

It also runs under ``bench.compare`` against an older commit (it imports the stack the way ``bench.sync_http``
does). The proxy's own CPU is not counted (it runs in this process, like the load generator), but it adds a
hop: req/s here is lower than ``bench.sync_http``'s; use that one for throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import re
import struct
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.common import git_commit, machine, write_report
from bench.loadgen import closed_loop, cpu_seconds
from bench.sync_http import MODELS, _free_port, _register, _role_cpu
from gateway.settings import GatewaySettings

try:
    from fleet.local.servers import LocalBroker, LocalRedis
    from fleet.local.stack import LocalStack, StackConfig
except ImportError:  # a tree from before fleet's subpackages (a baseline of bench.compare)
    from fleet.servers import LocalBroker, LocalRedis  # type: ignore[no-redef]
    from fleet.stack import LocalStack, StackConfig  # type: ignore[no-redef]

#: Kafka API keys worth naming (the rest print as their number).
API_NAMES = {0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 8: "OffsetCommit", 9: "OffsetFetch",
             10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat", 14: "SyncGroup", 18: "ApiVersions"}


class KafkaCounter:
    """A TCP proxy in front of a Kafka broker that counts requests by API and produced records, per connection."""

    def __init__(self, broker_port: int, port: int) -> None:
        self.broker_port = broker_port
        self.port = port
        self.requests: Counter[tuple[int, str]] = Counter()  # (client port, api name)
        self.records: Counter[int] = Counter()  # client port -> records in Produce requests
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client_port = writer.get_extra_info("peername")[1]
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        down = asyncio.create_task(self._pipe(up_reader, writer))
        self._tasks.add(down)
        down.add_done_callback(self._tasks.discard)
        try:
            while True:
                size_raw = await reader.readexactly(4)
                frame = await reader.readexactly(struct.unpack(">i", size_raw)[0])
                api_key, api_version = struct.unpack_from(">hh", frame)
                self.requests[(client_port, API_NAMES.get(api_key, str(api_key)))] += 1
                if api_key == 0:
                    self.records[client_port] += _produce_records(frame, api_version)
                up_writer.write(size_raw + frame)
                await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            up_writer.close()
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()


def _produce_records(frame: bytes, version: int) -> int:
    """Records in a Produce request (v3 to v8, the ones with record batches and no tagged fields)."""
    if not 3 <= version <= 8:
        return 0
    at = 8  # api key, version, correlation id
    (client_id_len,) = struct.unpack_from(">h", frame, at)
    at += 2 + max(client_id_len, 0)
    (txn_len,) = struct.unpack_from(">h", frame, at)
    at += 2 + max(txn_len, 0) + 2 + 4  # transactional id, acks, timeout
    count = 0
    (topics,) = struct.unpack_from(">i", frame, at)
    at += 4
    for _ in range(topics):
        (name_len,) = struct.unpack_from(">h", frame, at)
        at += 2 + name_len
        (partitions,) = struct.unpack_from(">i", frame, at)
        at += 4
        for _ in range(partitions):
            (records_len,) = struct.unpack_from(">i", frame, at + 4)
            at += 8
            end = at + max(records_len, 0)
            while at + 61 <= end:  # each record batch: its length at +8, its record count at +57
                (batch_len,) = struct.unpack_from(">i", frame, at + 8)
                count += struct.unpack_from(">i", frame, at + 57)[0]
                at += 12 + batch_len
            at = end
    return count


def _port_owners() -> dict[int, int]:
    """Local TCP port -> pid of the process owning the socket (``ss``)."""
    owners: dict[int, int] = {}
    out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 6 or (pid := re.search(r"pid=(\d+)", line)) is None:
            continue
        owners[int(parts[3].rsplit(":", 1)[1])] = int(pid.group(1))
    return owners


def _role_of(pid: int | None, roles: dict[int, str]) -> str:
    while pid and pid > 1:
        if pid in roles:
            return roles[pid]
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return "other"
    return "other"


async def _redis_snapshot(client: aioredis.Redis) -> tuple[dict[str, int], dict[int, int]]:
    stats: dict[str, Any] = await client.info("commandstats")
    per_command = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    clients: Any = await client.client_list()
    per_client = {int(c["addr"].rsplit(":", 1)[1]): int(c.get("tot-cmds", 0)) for c in clients}
    return per_command, per_client


async def run(
    concurrency: int, duration_s: float, warmup_s: float, json_bodies: bool, worker_mode: str | None = None
) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="fleet-cost-"))
    env = dict(os.environ)
    env.setdefault("FLEET_WORKER_INTRA_OP_THREADS", "1")
    if worker_mode:
        env["FLEET_WORKER_MODE"] = worker_mode
    if "grpc_port" in {f.name for f in dataclasses.fields(GatewaySettings)}:  # a tree with the gRPC server
        env.setdefault("FLEET_GATEWAY_GRPC_PORT", str(_free_port()))
    proxy_port = _free_port()
    broker = LocalBroker(log_dir=home)
    url = f"tcp://127.0.0.1:{proxy_port}"
    broker.command = lambda: [broker.binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{broker.port}",  # type: ignore[method-assign]
                              "--advertised-listener-url", url]
    redis_server = LocalRedis(log_dir=home)
    counter = KafkaCounter(broker.port, proxy_port)
    await asyncio.to_thread(broker.start)
    await asyncio.to_thread(redis_server.start)
    await counter.start()
    model, features = "tiny", MODELS["tiny"][1]
    config = StackConfig(home=home, workers=1, models=(), env=env, kafka=f"127.0.0.1:{proxy_port}",
                         redis=redis_server.url)
    probe = aioredis.Redis.from_url(redis_server.url)
    try:
        async with LocalStack(config) as stack:
            await _register(stack, home)
            await stack.restart_workers([model])
            await closed_loop(stack.url, model, "x", features, concurrency, warmup_s, json_bodies=json_bodies)
            roles = {p.pid: p.role for p in stack.info().processes}
            roles |= {pid: name for pid, name in ((broker.pid, "broker"), (redis_server.pid, "redis")) if pid}
            cpu_before, loadgen_before = _role_cpu(roles), cpu_seconds(os.getpid())
            commands_before, clients_before = await _redis_snapshot(probe)
            kafka_before, records_before = Counter(counter.requests), Counter(counter.records)
            result = await closed_loop(stack.url, model, "x", features, concurrency, duration_s, warmup_s=0.0,
                                       json_bodies=json_bodies)
            commands_after, clients_after = await _redis_snapshot(probe)
            kafka_after, records_after = Counter(counter.requests), Counter(counter.records)
            cpu_after = _role_cpu(roles)
            owners = _port_owners()
    finally:
        await probe.aclose()
        await counter.stop()
        redis_server.stop()
        broker.stop()
    n = max(result.requests, 1)
    own_port = {port for port, pid in owners.items() if pid == os.getpid()}
    redis_by_role: Counter[str] = Counter()
    for port, calls in clients_after.items():
        if port not in own_port:
            redis_by_role[_role_of(owners.get(port), roles)] += calls - clients_before.get(port, 0)
    commands = {
        name: calls - commands_before.get(name, 0)
        for name, calls in commands_after.items()
        if calls - commands_before.get(name, 0) > 0 and name not in ("info", "client|list")
    }
    kafka_by_role: Counter[str] = Counter()
    for (port, api), calls in (kafka_after - kafka_before).items():
        kafka_by_role[f"{_role_of(owners.get(port), roles)} {api}"] += calls
    records = sum((records_after - records_before).values())
    cpu = {role: 1000 * (cpu_after[role] - cpu_before[role]) / n for role in cpu_after}

    def per(value: float) -> float:
        return round(value / n, 3)

    report: dict[str, Any] = {
        "benchmark": "request_cost",
        "commit": git_commit(),
        "machine": machine(),
        "body": "json" if json_bodies else "binary",
        "worker_mode": env.get("FLEET_WORKER_MODE", "models"),
        "load": result.as_dict(),
        "redis_commands_per_request": {role: per(c) for role, c in sorted(redis_by_role.items())},
        "redis_commands_per_request_total": per(sum(commands.values())),
        "redis_by_command_per_request": {k: per(v) for k, v in sorted(commands.items(), key=lambda kv: -kv[1])},
        "kafka_requests_per_request": {k: per(v) for k, v in sorted(kafka_by_role.items())},
        "kafka_records_per_request": per(records),
        "cpu_ms_per_request": {role: round(ms, 3) for role, ms in sorted(cpu.items())}
        | {"fleet": round(sum(cpu.values()), 3)},
        "loadgen_cpu_ms_per_request": round(1000 * (cpu_seconds(os.getpid()) - loadgen_before) / n, 3),
    }
    # One flat entry, for bench.compare (which reads lists of objects named by model and concurrency).
    report["runs"] = [
        {
            "model": model,
            "concurrency": concurrency,
            "req_per_s": result.req_per_s,
            "cpu_ms_per_request": report["cpu_ms_per_request"]["fleet"],
            "gateway_cpu_ms_per_request": report["cpu_ms_per_request"].get("gateway"),
            "worker_cpu_ms_per_request": report["cpu_ms_per_request"].get("worker"),
            "broker_cpu_ms_per_request": report["cpu_ms_per_request"].get("broker"),
            "redis_commands_per_request": report["redis_commands_per_request_total"],
            "kafka_records_per_request": report["kafka_records_per_request"],
        }
    ]
    print(result.line(), flush=True)
    for key in ("redis_commands_per_request", "redis_by_command_per_request", "kafka_requests_per_request",
                "cpu_ms_per_request"):
        print(f"{key}: " + ", ".join(f"{k} {v}" for k, v in report[key].items()), flush=True)
    print(f"kafka_records_per_request: {report['kafka_records_per_request']}", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=64, help="clients in the closed loop")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--body", choices=("binary", "json"), default="json", help="tensors in the body")
    parser.add_argument("--json", default="bench/results/request_cost.json", help="where to write the figures")
    parser.add_argument(
        "--worker-mode",
        choices=("models", "pool"),
        default=None,
        help="the worker's FLEET_WORKER_MODE (default: the environment's, else the worker's own default)",
    )
    args = parser.parse_args()
    began = time.perf_counter()
    report = asyncio.run(run(args.concurrency, args.duration, args.warmup, args.body == "json", args.worker_mode))
    report["wall_s"] = round(time.perf_counter() - began, 1)
    write_report(args.json, report)


if __name__ == "__main__":
    main()
