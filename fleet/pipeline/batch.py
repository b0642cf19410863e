"""``fleet batch run``: push a whole file through a model with the direct producer, in order, resumably.

The runner streams the input (:mod:`fleet.pipeline.inputs`), sends every record as one request through
a :class:`~fleet.client.producer.FleetProducer`, and writes each outcome in input order
(:mod:`fleet.pipeline.outputs`). Three tasks share the event loop:

* the **submitter** reads chunks of records off the loop and submits them; record *i* is sent only
  while ``i < next_to_write + window``, which bounds both the requests in flight and the reorder
  buffer (memory stays flat on any input size);
* the **collector** takes results as they come and releases the contiguous prefix to the writer;
* the **checkpointer** makes the written prefix durable (fsync off the loop) and records it in the
  checkpoint, every ``checkpoint_interval_s`` or ``checkpoint_every`` records.

Request ids are ``f"{run_id}-{index}"``. A resumed run keeps the run id and the reply stream, so a
record it sends again is recognised: the workers' ``SET NX`` result marker stops a second execution
from producing a second answer, and the runner first looks up stored results for every record that
may have been sent before the interruption (those below the checkpoint's ``resend_until``, which the
submitter never passes before the next checkpoint). A record is written at most once, so the output
never holds duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleet.client.producer import FleetProducer, ProducerResult
from schemas import ErrorCode, FleetSettings, Lane, ModelRecord, SchemaError

from .inputs import InputRecord, RecordSource, input_format, open_source
from .outputs import JsonlWriter, NpyWriter, Outcome, OutputWriter, failures_path, output_format, output_spec
from .state import BatchError, Checkpoint, ReorderBuffer


@dataclass(frozen=True)
class BatchOptions:
    """What to run and how hard to push."""

    model: str
    input: Path
    output: Path
    version: str | None = None
    resume: bool = False
    overwrite: bool = False
    rows_per_request: int = 1  # .npy input: rows per request
    output_name: str | None = None  # .npy output: which output of the model
    pipeline: bool = False  # ``model`` names a pipeline (its version pinned for a resume, as a model's)
    window: int = 4096  # records in flight (and most results held for reordering)
    timeout_s: float = 300.0  # a record unanswered this long fails with DEADLINE_EXCEEDED
    checkpoint_interval_s: float = 2.0
    checkpoint_every: int = 20_000
    read_chunk: int = 512
    lane: Lane = Lane.BULK  # batch pipelines ride the bulk lane: interactive traffic is served first

    def __post_init__(self) -> None:
        if self.window < 1 or self.rows_per_request < 1 or self.read_chunk < 1 or self.checkpoint_every < 1:
            raise BatchError("window, rows per request, read chunk and checkpoint_every must be >= 1")


@dataclass
class BatchProgress:
    """Counters the progress bar reads while the run goes on."""

    total: int = 0
    done: int = 0  # records in the output (this run and the resumed part)
    failed: int = 0
    resumed_from: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self, now: float | None = None) -> float:
        """Records written per second by this run."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        return (self.done - self.resumed_from) / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True)
class BatchSummary:
    """How a run ended."""

    output: Path
    failures: Path | None
    total: int
    done: int
    failed: int
    resumed_from: int
    seconds: float
    already_complete: bool = False

    @property
    def rate(self) -> float:
        """Records per second of this run."""
        return (self.done - self.resumed_from) / self.seconds if self.seconds > 0 else 0.0


class BatchRun:
    """One ``fleet batch run``: ``summary = await BatchRun(settings, options).run()``."""

    def __init__(self, settings: FleetSettings, options: BatchOptions) -> None:
        self.settings = settings
        self.options = options
        self.progress = BatchProgress()
        self._ckpt_path = Checkpoint.path_for(options.output)
        self._advanced = asyncio.Event()
        self._all_written = asyncio.Event()
        self._ckpt_due = asyncio.Event()
        self._read_all = False
        self._read_count = 0
        self._squeezed: set[int] = set()
        self._end_offsets: dict[int, int] = {}
        self._input_offset = 0
        self._buffer: ReorderBuffer[Outcome] = ReorderBuffer()
        self._state: tuple[OutputWriter, Checkpoint] | None = None

    @property
    def _out(self) -> OutputWriter:
        if self._state is None:
            raise RuntimeError("the run has not started")
        return self._state[0]

    @property
    def _ckpt(self) -> Checkpoint:
        if self._state is None:
            raise RuntimeError("the run has not started")
        return self._state[1]

    @_ckpt.setter
    def _ckpt(self, ckpt: Checkpoint) -> None:
        self._state = (self._out, ckpt)

    async def run(self) -> BatchSummary:
        """Run to the end (or resume and run to the end); BatchError for what cannot run."""
        opts = self.options
        in_fmt, out_fmt = input_format(opts.input), output_format(opts.output)
        if out_fmt == "npy" and in_fmt != "npy":
            raise BatchError("an .npy output needs an .npy input (rows of a fixed shape): write .jsonl instead")
        input_size = opts.input.stat().st_size
        ckpt = self._previous(str(opts.input.resolve()), input_size)
        if ckpt is not None and ckpt.complete:
            return self._summary(ckpt, 0.0, already_complete=True)
        run_id = ckpt.run_id if ckpt else secrets.token_hex(6)
        producer = FleetProducer(
            self.settings,
            client_id=f"batch-{run_id}",
            lane=opts.lane,
            max_in_flight=opts.window,
            timeout_s=opts.timeout_s,
        )
        async with producer:
            if opts.pipeline:
                pinned = ckpt.version if ckpt else opts.version
                _, record = await producer.pipeline(opts.model, int(pinned) if pinned else None)
            else:
                record = await producer.model_record(opts.model, ckpt.version if ckpt else opts.version)
            start = ckpt.records_done if ckpt else 0
            offset = ckpt.input_offset if ckpt else 0
            source = await asyncio.to_thread(
                open_source,
                opts.input,
                in_fmt,
                record,
                start=start,
                offset=offset,
                rows_per_request=opts.rows_per_request,
            )
            try:
                writer = self._writer(out_fmt, record, source, ckpt)
                try:
                    if ckpt is None:
                        ckpt = Checkpoint(
                            run_id,
                            opts.model,
                            record.version,
                            str(opts.input.resolve()),
                            input_size,
                            in_fmt,
                            out_fmt,
                            opts.rows_per_request,
                        )
                    return await self._run(producer, record, source, writer, ckpt)
                finally:
                    writer.close()
            finally:
                source.close()

    def _previous(self, input_path: str, input_size: int) -> Checkpoint | None:
        opts = self.options
        exists = self._ckpt_path.exists()
        if opts.resume and exists:
            ckpt = Checkpoint.load(self._ckpt_path)
            ckpt.check_same_run(
                model=opts.model, input_path=input_path, input_size=input_size, rows_per_request=opts.rows_per_request
            )
            return ckpt
        if not opts.overwrite and (exists or opts.output.exists()):
            raise BatchError(f"{opts.output} exists: pass --resume to continue that run or --overwrite to start over")
        return None

    def _writer(self, fmt: str, record: ModelRecord, source: RecordSource, ckpt: Checkpoint | None) -> OutputWriter:
        opts = self.options
        offset = ckpt.output_offset if ckpt else None
        if fmt == "jsonl":
            return JsonlWriter(opts.output, offset=offset)
        rows = int(getattr(source, "rows", source.total))
        spec = output_spec(record, opts.output_name)
        failures_offset = ckpt.failures_offset if ckpt else None
        return NpyWriter(opts.output, spec, rows, opts.rows_per_request, offset=offset, failures_offset=failures_offset)

    def _summary(self, ckpt: Checkpoint, seconds: float, *, already_complete: bool = False) -> BatchSummary:
        failures = failures_path(self.options.output) if ckpt.output_format == "npy" else None
        return BatchSummary(
            self.options.output,
            failures,
            ckpt.records_done,
            ckpt.records_done,
            ckpt.failed,
            self.progress.resumed_from,
            seconds,
            already_complete,
        )

    # the run ---------------------------------------------------------------------
    async def _run(
        self,
        producer: FleetProducer,
        record: ModelRecord,
        source: RecordSource,
        writer: OutputWriter,
        ckpt: Checkpoint,
    ) -> BatchSummary:
        began = time.monotonic()
        self._state = (writer, ckpt)
        self._buffer = ReorderBuffer(ckpt.records_done)
        self._input_offset = ckpt.input_offset
        resend_until = ckpt.resend_until  # records below it may have been sent by the interrupted run
        self.progress = BatchProgress(source.total, ckpt.records_done, ckpt.failed, ckpt.records_done)
        await self._checkpoint()  # a new run's header and identity are durable before anything is sent
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    collector = group.create_task(self._collect_routine(producer))
                    checkpointer = group.create_task(self._checkpoint_routine())
                    await self._submit_all(producer, record, source, resend_until)
                    await self._all_written.wait()
                    collector.cancel()
                    checkpointer.cancel()
            except BaseExceptionGroup as failed:  # the caller sees the cause (e.g. Kafka down), not a group
                raise _first_cause(failed) from None
            self._ckpt = self._ckpt.advance(complete=True)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._checkpoint())
        return self._summary(self._ckpt, time.monotonic() - began)

    async def _submit_all(
        self, producer: FleetProducer, record: ModelRecord, source: RecordSource, resend_until: int
    ) -> None:
        opts = self.options
        run_id = self._ckpt.run_id
        while True:
            chunk = await asyncio.to_thread(source.read, opts.read_chunk)
            if not chunk:
                break
            stored: dict[str, ProducerResult] = {}
            maybe_sent = [f"{run_id}-{r.index}" for r in chunk if r.index < resend_until and r.inputs is not None]
            if maybe_sent:
                stored = await producer.stored_results(maybe_sent)
            for item in chunk:
                await self._room_for(item.index)
                self._read_count = item.index + 1
                self._end_offsets[item.index] = item.end_offset
                await self._submit(producer, record, item, stored)
        self._read_all = True
        self._read_count = max(self._read_count, self._buffer.next_index)
        self.progress.total = self._read_count
        self._check_finished()

    async def _room_for(self, index: int) -> None:
        while index >= min(self._buffer.next_index + self.options.window, self._ckpt.resend_until):
            if index >= self._ckpt.resend_until:
                self._ckpt_due.set()  # the next checkpoint moves the barrier
            self._advanced.clear()
            await self._advanced.wait()

    async def _submit(
        self, producer: FleetProducer, record: ModelRecord, item: InputRecord, stored: dict[str, ProducerResult]
    ) -> None:
        request_id = f"{self._ckpt.run_id}-{item.index}"
        if item.inputs is None:
            self._deliver(item.index, Outcome.failure(ErrorCode.INVALID_INPUT.value, item.error or "unreadable"))
            return
        if item.squeeze:
            self._squeezed.add(item.index)
        found = stored.get(request_id)
        if found is not None:  # answered before the interruption: first result wins, nothing to send
            self._deliver(item.index, self._outcome(item.index, found))
            return
        try:
            if self.options.pipeline:
                version = int(record.version)
                await producer.submit_pipeline(record.name, item.inputs, version=version, request_id=request_id)
            else:
                await producer.submit(record.name, item.inputs, version=record.version, request_id=request_id)
        except SchemaError as exc:
            self._deliver(item.index, Outcome.failure(exc.code.value, exc.message))

    def _outcome(self, index: int, result: ProducerResult) -> Outcome:
        squeeze = index in self._squeezed
        self._squeezed.discard(index)
        if result.error is not None:
            return Outcome(None, result.error.code.value, result.error.message, squeeze)
        return Outcome(result.outputs, squeeze=squeeze)

    async def _collect_routine(self, producer: FleetProducer) -> None:
        prefix = f"{self._ckpt.run_id}-"
        async for result in producer.results():
            if result.request_id.startswith(prefix):
                index = int(result.request_id[len(prefix) :])
                self._deliver(index, self._outcome(index, result))

    def _deliver(self, index: int, outcome: Outcome) -> None:
        """Hold ``outcome`` and write every record that now continues the output's prefix."""
        if not self._buffer.put(index, outcome):
            return  # written already: never twice
        ready = self._buffer.pop_ready()
        if not ready:
            return
        progress = self.progress
        for i, done in ready:
            self._out.write(i, done)
            self._input_offset = self._end_offsets.pop(i, self._input_offset)
            if not done.ok:
                progress.failed += 1
        progress.done = self._buffer.next_index
        if progress.done - self._ckpt.records_done >= self.options.checkpoint_every:
            self._ckpt_due.set()
        self._advanced.set()
        self._check_finished()

    def _check_finished(self) -> None:
        if self._read_all and self._buffer.next_index >= self._read_count:
            self._all_written.set()

    async def _checkpoint_routine(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.checkpoint_interval_s):
                    await self._ckpt_due.wait()
            self._ckpt_due.clear()
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        """Make the written prefix durable, then record it (never the other way round)."""
        done = self._buffer.next_index
        output_offset, failures_offset = self._out.positions()
        ckpt = self._ckpt.advance(
            records_done=done,
            input_offset=self._input_offset,
            output_offset=output_offset,
            failures_offset=failures_offset,
            failed=self.progress.failed,
            resend_until=done + self.options.window + self.options.checkpoint_every,
        )
        await asyncio.to_thread(self._out.sync)
        await asyncio.to_thread(ckpt.save, self._ckpt_path)
        self._ckpt = ckpt
        self._advanced.set()  # the submitter may wait on the resend barrier


def _first_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf exception of a task group's failure."""
    first = group.exceptions[0]
    return _first_cause(first) if isinstance(first, BaseExceptionGroup) else first
