"""The ``fleet`` command line: argument parsing, dispatch and the single place errors become exit codes.

Every command that talks to the fleet finds it the same way (flag, then environment, then the
running local stack's ``stack.json``, then defaults); see :func:`fleet.client.connection.resolve`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

import aiohttp
from aiokafka.errors import KafkaConnectionError, KafkaError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from fleet.client.connection import Target, resolve
from schemas import ErrorCode, FleetError, describe

from . import admin, batch, demo, dlq, keys, models, pipelines, scale, stack, status

#: ``fleet config SERVICE`` -> (module, settings class, env prefix).
SERVICES = {
    "gateway": ("gateway.settings", "GatewaySettings", "FLEET_GATEWAY_"),
    "worker": ("workers.settings", "WorkerSettings", "FLEET_WORKER_"),
    "autoscaler": ("autoscaler.settings", "AutoscalerSettings", "FLEET_AUTOSCALER_"),
}

#: Failures reported as one line and exit status 1 (anything else is a bug and keeps its traceback).
EXPECTED_ERRORS = (
    FleetError,
    ValueError,
    OSError,
    TimeoutError,
    RuntimeError,
    RedisError,
    KafkaError,
    aiohttp.ClientError,
)

#: Failures to reach a server (reported with where the CLI looked for the fleet when it found no address).
UNREACHABLE_ERRORS = (RedisConnectionError, KafkaConnectionError, aiohttp.ClientConnectionError, ConnectionError)


def common_options() -> argparse.ArgumentParser:
    """Connection options accepted before or after any subcommand (SUPPRESS keeps the first one given)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("where the fleet is (default: env, then the running local stack)")
    group.add_argument("--url", default=argparse.SUPPRESS, help="gateway URL (env FLEET_URL)")
    group.add_argument("--kafka", default=argparse.SUPPRESS, help="bootstrap servers (env FLEET_KAFKA_BOOTSTRAP)")
    group.add_argument("--redis", default=argparse.SUPPRESS, help="Redis URL (env FLEET_REDIS_URL)")
    group.add_argument("--namespace", default=argparse.SUPPRESS, help="namespace (env FLEET_NAMESPACE)")
    group.add_argument("--home", default=argparse.SUPPRESS, help="state directory (env FLEET_HOME, default ./.fleet)")
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log at INFO")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="fleet", parents=[common], description="Run, feed and inspect an inference fleet."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stack.add_parsers(commands, common)
    status.add_parser(commands, common)
    scale.add_parser(commands, common)
    models.add_parser(commands, common)
    pipelines.add_parser(commands, common)
    dlq.add_parser(commands, common)
    keys.add_parser(commands, common)
    batch.add_parser(commands, common)
    demo.add_parser(commands, common)
    admin.add_parser(commands, common)
    config = commands.add_parser("config", parents=[common], help="print every setting: variable, default, doc")
    config.add_argument("service", nargs="?", choices=sorted(SERVICES), help="default: all")
    config.add_argument("--markdown", action="store_true", help="the reference as markdown (docs/configuration.md)")
    config.set_defaults(handler=None)
    return parser


def show_config(service: str | None) -> int:
    """``fleet config``: the documented settings of the gateway, the worker and/or the autoscaler."""
    for name in [service] if service else sorted(SERVICES):
        module_name, class_name, prefix = SERVICES[name]
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            print(f"# {name}: settings not available ({exc})")
            continue
        rows = describe(cls, prefix)
        rows = [(var, default or '""', text) for var, default, text in rows]
        width = max(len(var) for var, _, _ in rows)
        shown_width = max(len(default) for _, default, _ in rows)
        print(f"# {name} ({module_name}.{class_name})")
        for var, default, text in rows:
            print(f"{var:<{width}}  {default:<{shown_width}}  {text}".rstrip())
        print()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fleet`` console script; returns the exit status.

    When the reader of stdout goes away (``fleet keys create ci | head -1``) the command has done its
    work; it exits quietly with 141 (128 + SIGPIPE), as a unix tool killed by SIGPIPE does.
    """
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here when all the output fit in the buffer
    except BrokenPipeError:
        # Nothing more can be written; point stdout at /dev/null so the interpreter's exit flush is quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    target: Target | None = None
    try:
        if args.handler is None and args.markdown:
            from .config_docs import render_markdown

            print(render_markdown(), end="")
            return 0
        if args.handler is None:
            return show_config(args.service)
        target = resolve(
            os.environ,
            home=getattr(args, "home", None),
            url=getattr(args, "url", None),
            kafka=getattr(args, "kafka", None),
            redis=getattr(args, "redis", None),
            namespace=getattr(args, "namespace", None),
        )
        return int(asyncio.run(args.handler(target, args)))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise  # stdout closed: main() exits quietly
    except EXPECTED_ERRORS as exc:
        message = str(exc) or type(exc).__name__
        if target is not None and target.guessed and _unreachable(exc):
            message = (
                f"no fleet found: no running local stack ({target.looked}) and no address given "
                f"(--redis/--kafka/--url or FLEET_REDIS_URL/FLEET_KAFKA_BOOTSTRAP/FLEET_URL), and the defaults "
                f"did not answer: {' '.join(message.split())}"
            )
        print(f"fleet: error: {message}", file=sys.stderr)
        return 1


def _unreachable(exc: BaseException) -> bool:
    """True for a failure to reach Redis, Kafka or the gateway (not for a bad request)."""
    if isinstance(exc, FleetError):
        return exc.code is ErrorCode.BACKEND_UNAVAILABLE
    return isinstance(exc, UNREACHABLE_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
