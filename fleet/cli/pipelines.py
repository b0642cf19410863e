"""``fleet pipelines apply -f pipeline.yaml``, ``list``, ``show P [--version N]`` and ``remove P``.

``apply`` reads one pipeline per file (YAML or JSON, the form in `schemas.pipelines`), checks it against
its steps' registered models (a mismatch is refused naming the step and tensor) and stores it as the
pipeline's next version when it changed (requests run the newest); ``list`` shows each pipeline's current
version and steps; ``show`` prints one version with its derived inputs and outputs; ``remove`` deletes
every version (requests in flight finish).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from fleet.client.connection import Target
from schemas import ModelRegistry, SchemaError
from schemas.pipeline_plan import PipelinePlan
from schemas.pipelines import (
    PipelineError,
    PipelineStore,
    check_pipeline,
    describe,
    parse_pipeline,
    step_records,
)


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``pipelines apply``, ``list``, ``show`` and ``remove``."""
    group = commands.add_parser("pipelines", parents=[common], help="apply, list, show and remove model pipelines")
    actions = group.add_subparsers(dest="pipelines_command", required=True, metavar="ACTION")
    apply = actions.add_parser("apply", parents=[common], help="check a pipeline file and store it (a new version)")
    apply.add_argument("-f", "--file", required=True, type=Path, help="the pipeline (YAML or JSON)")
    apply.set_defaults(handler=run_apply)
    listing = actions.add_parser("list", parents=[common], help="every pipeline: current version and steps")
    listing.set_defaults(handler=run_list)
    show = actions.add_parser("show", parents=[common], help="one pipeline's steps, inputs and outputs (JSON)")
    show.add_argument("pipeline")
    show.add_argument("--version", type=int, default=None, help="a stored version (default: the current one)")
    show.set_defaults(handler=run_show)
    remove = actions.add_parser("remove", parents=[common], help="delete every version of a pipeline")
    remove.add_argument("pipeline")
    remove.set_defaults(handler=run_remove)


def read_pipeline(path: Path) -> PipelinePlan:
    """The pipeline in ``path`` (form checked); SchemaError naming the file when it does not parse."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SchemaError(f"{path}: {exc.strerror or exc}") from None
    try:
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # never the unsafe loader
    except yaml.YAMLError as exc:
        raise SchemaError(f"{path}: not YAML or JSON: {exc}") from None
    try:
        return parse_pipeline(doc)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc.message}", code=exc.code) from None


async def run_apply(target: Target, args: argparse.Namespace) -> int:
    """Check and store a pipeline."""
    plan = read_pipeline(args.file)
    redis = target.settings.redis.client()
    try:
        records = await step_records(plan, ModelRegistry(redis, target.names).get)
        signature = check_pipeline(plan, records)
        stored, changed = await PipelineStore(redis, target.names).apply(plan)
    finally:
        await redis.aclose()
    what = "applied as version" if changed else "unchanged at version"
    ins = ", ".join(s.describe() for s in signature.inputs)
    outs = ", ".join(s.describe() for s in signature.outputs)
    print(f"pipeline {stored.name} {what} {stored.version}: {len(stored.steps)} step(s); inputs {ins}; outputs {outs}")
    return 0


async def run_list(target: Target, args: argparse.Namespace) -> int:
    """Print every pipeline."""
    redis = target.settings.redis.client()
    try:
        store = PipelineStore(redis, target.names)
        plans = [await store.get(name) for name in await store.names()]
    finally:
        await redis.aclose()
    if not plans:
        print(f"no pipelines in namespace {target.names.namespace!r}")
        return 0
    print(f"{'PIPELINE':<24} {'VERSION':>7}  STEPS")
    for plan in plans:
        steps = " ".join(f"{s.name}={s.model}:{s.version or 'default'}" for s in plan.steps)
        print(f"{plan.name:<24} {plan.version:>7}  {steps}")
    return 0


async def run_show(target: Target, args: argparse.Namespace) -> int:
    """Print one pipeline as JSON, with the inputs and outputs its steps' models give it now."""
    redis = target.settings.redis.client()
    try:
        plan = await PipelineStore(redis, target.names).get(args.pipeline, args.version)
        doc = describe(plan)
        try:
            signature = check_pipeline(plan, await step_records(plan, ModelRegistry(redis, target.names).get))
        except SchemaError as exc:
            doc["problem"] = exc.message  # a step's model changed or went away since it was applied
        else:
            doc["inputs"] = [s.describe() for s in signature.inputs]
            doc["output_specs"] = [s.describe() for s in signature.outputs]
    except PipelineError as exc:
        raise ValueError(exc.message) from None
    finally:
        await redis.aclose()
    print(json.dumps(doc, indent=2))
    return 0


async def run_remove(target: Target, args: argparse.Namespace) -> int:
    """Delete a pipeline."""
    redis = target.settings.redis.client()
    try:
        removed = await PipelineStore(redis, target.names).remove(args.pipeline)
    finally:
        await redis.aclose()
    if not removed:
        raise ValueError(f"no pipeline {args.pipeline!r} in namespace {target.names.namespace!r}")
    print(f"removed pipeline {args.pipeline}")
    return 0
