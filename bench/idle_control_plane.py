"""The idle control plane's cost by registered model count: autoscaler CPU and Redis commands/s.

Starts the embedded broker and Redis, registers N models (one tiny ONNX artifact reused, request and bulk
topics with 8 partitions each, no worker, no traffic), runs ``python -m autoscaler`` (1 s rounds, local
backend) from ``--code`` (a checkout; default: this one) and measures, after a warm-up, its CPU (from
/proc) and the Redis commands/s the server ran (``INFO commandstats``; only the autoscaler talks to it).

    python -m bench.idle_control_plane --models 10 100 300 [--code /path/to/old/checkout]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from autoscaler.backends import settings_env
from fleet.demo.modelgen import tiny_mlp
from fleet.local.servers import LocalBroker, LocalRedis
from fleet.models.artifacts import build_record
from schemas import FleetSettings, KafkaSettings, Lane, ModelRegistry, Names, RedisSettings

TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[1]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def _commands(redis: object) -> int:
    stats = await redis.info("commandstats")  # type: ignore[attr-defined]
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


async def measure(settings: FleetSettings, count: int, code: Path, warmup_s: float, window_s: float) -> str:
    names = Names(settings.namespace)
    redis = settings.redis.client()
    artifact = tiny_mlp(Path(tempfile.mkdtemp()) / "tiny.onnx")
    registry = ModelRegistry(redis, names)
    models = [f"idle{i:04d}" for i in range(count)]
    for model in models:
        await registry.register(build_record(model, "1", artifact))
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(names.request_topic(m, lane), 8, 1) for m in models for lane in Lane])
    finally:
        await admin.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    # Only what this run needs, so an older checkout (which refuses settings it does not know) runs too.
    wanted = ("FLEET_NAMESPACE", "FLEET_KAFKA_BOOTSTRAP", "FLEET_REDIS_URL")
    env.update(
        {k: v for k, v in settings_env(settings).items() if k in wanted},
        PYTHONPATH=str(code),
        FLEET_AUTOSCALER_INTERVAL_S="1",
        FLEET_AUTOSCALER_GPUS="0",
        FLEET_AUTOSCALER_LOG_DIR=tempfile.mkdtemp(),
    )
    log = open(Path(env["FLEET_AUTOSCALER_LOG_DIR"]) / "autoscaler.log", "wb")  # noqa: ASYNC230
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "autoscaler", env=env, cwd=code, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        await asyncio.sleep(warmup_s)
        cpu0, cmd0, t0 = _cpu_s(proc.pid), await _commands(redis), time.monotonic()
        await asyncio.sleep(window_s)
        cpu1, cmd1, t1 = _cpu_s(proc.pid), await _commands(redis), time.monotonic()
    finally:
        if proc.returncode is not None:
            print(f"the autoscaler exited ({proc.returncode}); its log: {log.name}", file=sys.stderr)
        proc.terminate()
        await proc.wait()
        log.close()
        await redis.aclose()
    cpu, rate = 100 * (cpu1 - cpu0) / (t1 - t0), (cmd1 - cmd0) / (t1 - t0)
    return f"{count:>6} models: autoscaler CPU {cpu:5.1f} %, Redis {rate:7.1f} commands/s"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[10, 100, 300])
    parser.add_argument("--code", type=Path, default=ROOT)
    parser.add_argument("--warmup-s", type=float, default=8.0)
    parser.add_argument("--window-s", type=float, default=15.0)
    args = parser.parse_args()
    for count in args.models:
        broker, redis = LocalBroker(), LocalRedis()
        broker.start()
        redis.start()
        try:
            settings = FleetSettings(
                namespace=f"idle{count}",
                kafka=KafkaSettings(bootstrap=broker.bootstrap),
                redis=RedisSettings(url=redis.url),
            )
            print(await measure(settings, count, args.code, args.warmup_s, args.window_s), flush=True)
        finally:
            broker.stop()
            redis.stop()


if __name__ == "__main__":
    asyncio.run(main())
