"""``fleet models ...``: register, apply, list, show, set-default, remove and verify registry records.

``traffic`` and ``rollback`` (canary / A-B splits) live in ``fleet.cli.rollout``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np

from fleet.client.connection import Target, open_registry
from fleet.client.http import FleetClient
from fleet.models import apply as model_apply
from fleet.models.artifacts import build_record
from fleet.models.verify import verify
from fleet.models.versions import next_version
from schemas import BatchingConfig, Framework, ModelRecord, SchemaError, Tensor, TensorSpec, parse_spec
from schemas.text_models import TASKS
from schemas.topics import ensure_model_topics

from .rollout import add_actions as add_rollout_actions


def tensor_spec_arg(text: str) -> TensorSpec:
    """argparse type of ``--input``/``--output``: ``name:DATATYPE:d0,d1``."""
    try:
        return parse_spec(text)
    except SchemaError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def label_arg(text: str) -> tuple[str, str]:
    """argparse type of ``--label``: ``key=value``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"label {text!r} must look like key=value")
    return key.strip(), value.strip()


def partitions_arg(text: str) -> int:
    """argparse type of ``--partitions``: a whole number >= 1."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"partitions must be a whole number >= 1, not {text!r}")
    return count


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``models`` and its subcommands to the top-level subparsers."""
    models = commands.add_parser("models", help="manage the model registry", parents=[common])
    sub = models.add_subparsers(dest="action", required=True, metavar="ACTION")

    reg = sub.add_parser("register", parents=[common], help="register a model version (immutable)")
    reg.add_argument("name")
    reg.add_argument(
        "--artifact",
        required=True,
        help="model file (.onnx, .pt2, TorchScript, a torch checkpoint or .safetensors, .skops, an XGBoost .json/.ubj, "
        "a LightGBM model .txt, or any file a --framework python class reads), or a directory (a Hugging Face model, "
        "an ONNX model with its external data) or a .tar/.tar.gz/.tgz/.zip archive of one: a local path, or a URL the "
        "workers fetch with their own credentials (s3://, gs://, az://, file://, http(s)://; a store prefix ending "
        "in / is a directory)",
    )
    reg.add_argument("--version", help="version label (default: the next integer)")
    reg.add_argument("--framework", choices=[f.value for f in Framework], help="default: inferred from the artifact")
    reg.add_argument(
        "--factory",
        help="module:function that builds the nn.Module (framework torch), or module:Class serving the model "
        "(framework python)",
    )
    reg.add_argument(
        "--trust", action="append", default=[], metavar="TYPE",
        help="a type the skops file may hold beyond skops' defaults (framework sklearn; repeat per type)",
    )  # fmt: skip
    reg.add_argument(
        "--task", choices=TASKS,
        help="framework transformers: what the model does (default: from its config's architectures)",
    )  # fmt: skip
    reg.add_argument(
        "--option", action="append", type=label_arg, default=[], metavar="KEY=VALUE",
        help="framework transformers: pooling=mean|cls and normalize=true|false (feature-extraction), "
        "max_length=TOKENS",
    )  # fmt: skip
    reg.add_argument("--input", action="append", type=tensor_spec_arg, default=[], metavar="NAME:TYPE:DIMS")
    reg.add_argument("--output", action="append", type=tensor_spec_arg, default=[], metavar="NAME:TYPE:DIMS")
    batching = BatchingConfig()
    reg.add_argument("--max-batch-size", type=int, default=batching.max_batch_size, help="rows per batch (1: none)")
    reg.add_argument("--max-queue-delay-ms", type=float, default=batching.max_queue_delay_ms)
    reg.add_argument("--label", action="append", type=label_arg, default=[], metavar="KEY=VALUE")
    reg.add_argument("--example", type=Path, help=".npz of example inputs (by input name) kept for verify")
    reg.add_argument("--default", action="store_true", help="make this version the default")
    reg.add_argument(
        "--partitions",
        type=partitions_arg,
        help="partitions of the model's request topic when it is created (default FLEET_KAFKA_PARTITIONS): the most "
        "workers that can serve the model at once; its bulk topic gets as many",
    )
    reg.set_defaults(handler=register)

    bulk = sub.add_parser(
        "apply", parents=[common], help="register the model versions of a YAML file (idempotent; see --help)",
        description="Bring the registry in line with a models file: a YAML list of entries (or 'models:' with one), "
        "or a directory of *.yaml/*.yml files. Each entry is one version (name, version, artifact, framework, "
        "factory, inputs, outputs, batching, labels, example, partitions, default, traffic) and means what the "
        "same `register` flags mean. Prints one line per entry (+ create, = unchanged, ~ default/traffic, ! error) "
        "and applies every entry without an error; models and versions absent from the file are left alone. "
        "Exit status 1 when any entry errored.",
    )  # fmt: skip
    bulk.add_argument("-f", "--file", type=Path, required=True, help="models file or directory")
    bulk.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    bulk.add_argument("--jobs", type=int, help="artifacts checked at once (default: min(4, CPUs))")
    bulk.set_defaults(handler=apply_models)

    sub.add_parser("list", parents=[common], help="list models and versions").set_defaults(handler=list_models)

    show = sub.add_parser("show", parents=[common], help="print a version's record as JSON")
    show.add_argument("name")
    show.add_argument("--version")
    show.set_defaults(handler=show_model)

    default = sub.add_parser("set-default", parents=[common], help="serve VERSION when none is asked for")
    default.add_argument("name")
    default.add_argument("version")
    default.set_defaults(handler=set_default)

    remove = sub.add_parser("remove", parents=[common], help="remove a version, or the whole model")
    remove.add_argument("name")
    remove.add_argument("--version")
    remove.set_defaults(handler=remove_model)

    check = sub.add_parser("verify", parents=[common], help="infer the example input over HTTP and check outputs")
    check.add_argument("name")
    check.add_argument("--version")
    check.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer")
    check.set_defaults(handler=verify_model)

    add_rollout_actions(sub, common)


def _load_example(path: Path) -> tuple[Tensor, ...]:
    with np.load(path, allow_pickle=False) as arrays:
        return tuple(Tensor.from_numpy(name, arrays[name]) for name in arrays.files)


async def register(target: Target, args: argparse.Namespace) -> int:
    """``fleet models register``."""
    async with open_registry(target.settings) as registry:
        version = args.version or await next_version(registry, args.name)
        record = await asyncio.to_thread(
            build_record,
            args.name,
            version,
            args.artifact,
            framework=Framework(args.framework) if args.framework else None,
            inputs=tuple(args.input),
            outputs=tuple(args.output),
            factory=args.factory,
            batching=BatchingConfig(args.max_batch_size, args.max_queue_delay_ms),
            labels=dict(args.label),
            example=_load_example(args.example) if args.example else (),
            load=True,
            trusted_types=tuple(args.trust),
            task=args.task,
            options=dict(args.option),
        )
        await ensure_model_topics(target.settings.kafka, target.names, args.name, args.partitions)
        created = await registry.register(record, make_default=args.default)
        default = await registry.default_version(args.name)
    what = "registered" if created else "already registered (identical)"
    print(f"{what}: {record.name} version {record.version} ({record.framework.value}, default {default})")
    print(f"  inputs  {', '.join(s.describe() for s in record.inputs)}")
    print(f"  outputs {', '.join(s.describe() for s in record.outputs)}")
    if target.stack is not None and target.stack.autoscale:
        print("  the local stack's autoscaler starts its workers within a few seconds (`fleet status`)")
    elif target.stack is not None and record.name not in target.stack.models:
        print("  the local stack's workers do not serve it yet: run `fleet reload`")
    return 0


async def apply_models(target: Target, args: argparse.Namespace) -> int:
    """``fleet models apply``: exit 0 when every entry applied (or is unchanged), 1 when any errored."""
    if args.jobs is not None and args.jobs < 1:
        raise SchemaError("--jobs must be >= 1")
    result = await model_apply.apply(target.settings, args.file, dry_run=args.dry_run, jobs=args.jobs)
    created = any(step.action is model_apply.Action.CREATE for step in result.applied)
    if created and not args.dry_run and target.stack is not None and not target.stack.autoscale:
        print("  the local stack's workers do not serve new models yet: run `fleet reload`")
    return 0 if result.ok else 1


async def list_models(target: Target, args: argparse.Namespace) -> int:
    """``fleet models list``."""
    rows = [("MODEL", "DEFAULT", "VERSIONS", "FRAMEWORK", "INPUTS", "OUTPUTS")]
    async with open_registry(target.settings) as registry:
        for name in await registry.models():
            record = await registry.get(name)
            versions = ",".join(await registry.versions(name))
            rows.append(
                (
                    name,
                    record.version,
                    versions,
                    record.framework.value,
                    " ".join(s.describe() for s in record.inputs),
                    " ".join(s.describe() for s in record.outputs),
                )
            )
    if len(rows) == 1:
        print(f"no models registered in namespace {target.settings.namespace!r}")
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def record_json(record: ModelRecord, default: str | None) -> dict[str, Any]:
    """JSON view of a record (example tensors summarised, not dumped)."""
    return {
        "name": record.name,
        "version": record.version,
        "default": record.version == default,
        "framework": record.framework.value,
        "artifact": record.artifact,
        "sha256": record.sha256,
        "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in record.inputs],
        "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in record.outputs],
        "batching": {
            "max_batch_size": record.batching.max_batch_size,
            "max_queue_delay_ms": record.batching.max_queue_delay_ms,
        },
        "factory": record.factory,
        "trusted_types": list(record.trusted_types),
        "layout": record.layout,
        "task": record.task,
        "options": record.options,
        "labels": record.labels,
        "size_bytes": record.size_bytes,
        "size_measured": record.size_measured,
        "example": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in record.example],
        "created_ms": record.created_ms,
    }


async def show_model(target: Target, args: argparse.Namespace) -> int:
    """``fleet models show``."""
    async with open_registry(target.settings) as registry:
        record = await registry.get(args.name, args.version)
        default = await registry.default_version(args.name)
    print(json.dumps(record_json(record, default), indent=2))
    return 0


async def set_default(target: Target, args: argparse.Namespace) -> int:
    """``fleet models set-default``."""
    async with open_registry(target.settings) as registry:
        await registry.set_default(args.name, args.version)
    print(f"{args.name}: default version is now {args.version}")
    return 0


async def remove_model(target: Target, args: argparse.Namespace) -> int:
    """``fleet models remove`` (registry entries only; topics stay)."""
    async with open_registry(target.settings) as registry:
        removed = await registry.remove(args.name, args.version)
    print(f"removed {args.name} version(s) {', '.join(removed)}")
    return 0


async def verify_model(target: Target, args: argparse.Namespace) -> int:
    """``fleet models verify``: exit 0 on PASS, 1 on FAIL."""
    async with open_registry(target.settings) as registry:
        record = await registry.get(args.name, args.version)
    async with FleetClient(target.url, timeout_s=args.timeout) as client:
        report = await verify(client, record)
    print(report.line())
    return 0 if report.ok else 1
