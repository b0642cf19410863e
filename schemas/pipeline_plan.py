"""A pipeline's graph as it travels with its requests: steps (a model each), tensor maps, outputs.

A *reference* names a tensor: ``inputs.NAME`` is an input of the pipeline, ``STEP.NAME`` an output of an
earlier step. A step's ``inputs`` map each input of its model to a reference (the tensor map: names may
differ); a step whose inputs reference several steps is a *join*: it runs once all of them are done. The
pipeline's ``outputs`` map each output name to a reference; the virtual node :data:`OUTPUTS` joins the
steps they reference, and the caller gets its answer when it fires.

This module is pure (no I/O): the resource and its store are `schemas.pipelines`, the execution is
``workers.steps`` and the gateway's pipeline routes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import ErrorCode, SchemaError

#: The reference prefix of the pipeline's own inputs.
INPUTS = "inputs"
#: The virtual last node: the pipeline's outputs (it joins the steps they reference).
OUTPUTS = "outputs"
_STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_TENSOR_NAME = re.compile(r"^[^\s]{1,256}$")


def invalid(message: str) -> SchemaError:
    """The error of a pipeline that cannot be applied or sent (INVALID_REQUEST)."""
    return SchemaError(message, code=ErrorCode.INVALID_REQUEST)


def check_step_name(name: str) -> str:
    """``name`` if it is a legal step name (1-63 of [A-Za-z0-9_-], not ``inputs``/``outputs``)."""
    if not isinstance(name, str) or not _STEP_NAME.match(name) or name in (INPUTS, OUTPUTS):
        raise invalid(f"step name {name!r}: use 1-63 of [A-Za-z0-9_-], not {INPUTS!r} or {OUTPUTS!r}")
    return name


def split_ref(ref: str) -> tuple[str, str]:
    """``(node, tensor)`` of a reference ``node.tensor`` (``inputs.x``, ``pre.y``)."""
    node, dot, tensor = ref.partition(".") if isinstance(ref, str) else ("", "", "")
    if not dot or not node or not _TENSOR_NAME.match(tensor):
        raise invalid(f"reference {ref!r} must be {INPUTS}.TENSOR or STEP.TENSOR")
    return node, tensor


def _pairs(raw: Any, what: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in raw
    ):
        raise SchemaError(f"{what} must be a list of [name, reference]")
    return tuple((p[0], p[1]) for p in raw)


@dataclass(frozen=True, slots=True)
class PlanStep:
    """One step: a model (``version`` "" = the model's default when the request is sent) and its tensor map."""

    name: str
    model: str
    version: str
    #: (the model's input name, the reference it is fed from), in order.
    inputs: tuple[tuple[str, str], ...]

    def upstream(self) -> tuple[str, ...]:
        """The steps this one waits for (sorted; the pipeline's inputs are no step)."""
        return tuple(sorted({split_ref(ref)[0] for _, ref in self.inputs} - {INPUTS}))

    def to_wire(self) -> list[Any]:
        return [self.name, self.model, self.version, [list(p) for p in self.inputs]]

    @classmethod
    def from_wire(cls, raw: Any) -> PlanStep:
        if not (isinstance(raw, list) and len(raw) == 4 and all(isinstance(x, str) for x in raw[:3])):
            raise SchemaError("pipeline step must be [name, model, version, inputs]")
        return cls(raw[0], raw[1], raw[2], _pairs(raw[3], "step inputs"))


@dataclass(frozen=True, slots=True)
class PipelinePlan:
    """The steps and outputs of one pipeline version (versions resolved when it travels with a request)."""

    name: str
    version: int
    steps: tuple[PlanStep, ...]
    #: (the pipeline's output name, the reference it is), in order.
    outputs: tuple[tuple[str, str], ...]

    def step(self, name: str) -> PlanStep:
        """The step called ``name``; SchemaError when there is none."""
        for step in self.steps:
            if step.name == name:
                return step
        raise SchemaError(f"pipeline {self.name!r} has no step {name!r}")

    def upstream(self, node: str) -> tuple[str, ...]:
        """The steps ``node`` (a step or :data:`OUTPUTS`) waits for."""
        if node == OUTPUTS:
            return tuple(sorted({split_ref(ref)[0] for _, ref in self.outputs} - {INPUTS}))
        return self.step(node).upstream()

    def nodes(self) -> tuple[str, ...]:
        """Every step name, then :data:`OUTPUTS`."""
        return (*(s.name for s in self.steps), OUTPUTS)

    def entry_steps(self) -> tuple[str, ...]:
        """The steps fed from the pipeline's inputs alone (the request starts there)."""
        return tuple(s.name for s in self.steps if not s.upstream())

    def successors(self, node: str) -> tuple[str, ...]:
        """The nodes (steps, or :data:`OUTPUTS`) that wait for ``node``."""
        return tuple(n for n in self.nodes() if node in self.upstream(n))

    def descendants(self, node: str) -> set[str]:
        """Every node downstream of ``node`` (not itself)."""
        seen: set[str] = set()
        todo = list(self.successors(node))
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(self.successors(current))
        return seen

    def refs_of(self, node: str) -> tuple[str, ...]:
        """The references ``node`` reads."""
        pairs = self.outputs if node == OUTPUTS else self.step(node).inputs
        return tuple(ref for _, ref in pairs)

    def needed_by(self, node: str) -> set[str]:
        """The references ``node`` and everything downstream of it read: what a record for it must carry."""
        refs: set[str] = set()
        for n in (node, *self.descendants(node)):
            refs.update(self.refs_of(n))
        return refs

    def order(self) -> tuple[str, ...]:
        """The steps in an order where each comes after the steps it waits for; SchemaError on a cycle."""
        done: list[str] = []
        pending = {s.name: set(s.upstream()) for s in self.steps}
        while pending:
            ready = sorted(n for n, ups in pending.items() if ups <= set(done))
            if not ready:
                raise invalid(f"pipeline {self.name!r}: the steps {sorted(pending)} wait for each other (a cycle)")
            done.extend(ready)
            for n in ready:
                del pending[n]
        return tuple(done)

    def resolved(self, versions: dict[str, str]) -> PipelinePlan:
        """This plan with each step's version set from ``versions`` (step name -> version)."""
        steps = tuple(
            PlanStep(s.name, s.model, versions.get(s.name, s.version), s.inputs) for s in self.steps
        )
        return PipelinePlan(self.name, self.version, steps, self.outputs)

    def to_wire(self) -> list[Any]:
        return [self.name, self.version, [s.to_wire() for s in self.steps], [list(p) for p in self.outputs]]

    @classmethod
    def from_wire(cls, raw: Any) -> PipelinePlan:
        if not (
            isinstance(raw, list)
            and len(raw) == 4
            and isinstance(raw[0], str)
            and isinstance(raw[1], int)
            and isinstance(raw[2], list)
        ):
            raise SchemaError("pipeline plan must be [name, version, steps, outputs]")
        return cls(raw[0], raw[1], tuple(PlanStep.from_wire(s) for s in raw[2]), _pairs(raw[3], "pipeline outputs"))


def step_request_id(request_id: str, step: str) -> str:
    """The id of one step's request of the pipeline request ``request_id`` (its per-step markers key on it)."""
    return f"{request_id}~{step}"


def gather(tensors: Iterable[Any], node: str) -> dict[str, Any]:
    """``{node.name: tensor}`` of ``tensors`` (a step's outputs, or the pipeline's inputs with ``inputs``)."""
    return {f"{node}.{t.name}": t for t in tensors}
