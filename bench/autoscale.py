"""Autoscaling benchmark (issue 4): how fast and how safely the autoscaler follows load.

Each scenario runs on a fresh embedded stack (local broker + Redis + gateway, no fixed workers) with the
autoscaler in this process (``AutoscalerService`` driving local worker processes) on fast settings:
0.5 s rounds, 10 s scale-down stabilization, 15 s idle-to-zero, consumer-group timings for the local broker
(session 2000 ms, heartbeat 500 ms, fetch wait 10 ms). The model is a deep MLP (16 -> 64 x 512 -> 8, 128
rows per request, batches of up to 4 requests) so that one worker saturates one core at a few dozen
requests/s; the topic has 4 partitions, and the fleet is capped at one worker per core (`MAX_REPLICAS`: a
CPU-bound worker beyond the cores adds contention, not capacity). Load is open-loop HTTP.

Scenarios (targets of issue 4, each printed as PASS/MISS with its figure):

* ``step``  - idle (1 worker) to 1.4x one worker's capacity for 25 s, then nothing: time from the autoscaler
  round that saw the lag over its threshold to the first answer delivered by an added worker (target
  5 s), the broker's group-join pause, then the return to the minimum after the stabilization window
  with every stopped worker drained (exit 0, heartbeat ``stopped``). Plot ``autoscale_step.png``.
* ``sine``  - a sine-wave load (period 40 s) for 80 s. Plot ``autoscale_sine.png``.
* ``zero``  - a model scaled to zero gets one request, twice (the second after it idled back to zero):
  answered within 5 s + model load time (target).
* ``churn`` - steady load while runtime pins flip the model between 1 and `MAX_REPLICAS` workers 22 times:
  0 lost and 0 duplicated results, counted per request at the client (answers, their wire ids and
  outputs) and in the result keys.

    .venv/bin/python -m bench.autoscale [--scenario step|sine|zero|churn|all] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from autoscaler.backends.local import WorkerPhase
from autoscaler.overrides import PinStore
from bench.autoscale_fleet import (
    BATCH_REQUESTS,
    IDLE_TO_ZERO_S,
    INTERVAL_S,
    KAFKA,
    LAYERS,
    MAX_REPLICAS,
    MODEL,
    PARTITIONS,
    ROWS_PER_REQUEST,
    STABILIZATION_S,
    WORKER_ENV,
    Harness,
    ModelKit,
    build_model,
    harness,
    wait_ready,
)
from bench.autoscale_load import OpenLoop, sine_rate, step_rate
from bench.autoscale_report import WorkerMilestones, median, parse_worker_log, plot, samples_json, since, verdict
from bench.common import git_commit, machine, write_report

#: What every target allows (issue 4).
TARGET_S = 5.0
SCENARIOS = ("step", "sine", "zero", "churn")

# scenarios ------------------------------------------------------------------------------------------------------
STEP_LOAD_S = 25.0
STEP_FACTOR = 1.4


async def scenario_step(kit: ModelKit, root: Path, out: Path) -> dict[str, Any]:
    """Idle -> 1.5x capacity for 25 s -> idle; scale-up speed and the return to the minimum."""
    rate = round(STEP_FACTOR * kit.capacity, 1)
    print(f"step: {rate} req/s for {STEP_LOAD_S:.0f} s from 1 idle worker")
    async with harness("step", kit, root, min_replicas=1) as h:
        assert h.load is not None and h.backend is not None
        await wait_ready(h, 1)
        await asyncio.sleep(3.0)
        load_start, wall_start = h.now(), time.time()
        await h.load.run(step_rate(rate, 0.0, STEP_LOAD_S), STEP_LOAD_S)
        load_stop, wall_stop = h.now(), time.time()
        back = await h.until(
            lambda s: s.actual == 1 and s.desired == 1 and s.draining == 0 and s.in_flight == 0 and s.lag == 0,
            timeout_s=70.0,
        )
        await asyncio.sleep(2.0)
        first_answer = h.first_answers()
        report = _step_figures(h, wall_start, first_answer)
        report["stabilization"] = _stabilization_figures(h, load_stop, wall_stop, back)
        report |= {"rate_req_s": rate, "load_start_t": round(load_start, 3), "load_stop_t": round(load_stop, 3)}
        report["client"] = _client_figures(h.load)
        report["events"] = [asdict(e) for e in h.backend.events]
        report["samples"] = samples_json(h.samples)
    marks = [(load_start, "load on"), (load_stop, "load off")]
    plot(
        h.samples,
        f"step load: {rate} req/s for {STEP_LOAD_S:.0f} s (1 worker ~ {kit.capacity:.0f} req/s)",
        out / "autoscale_step.png",
        marks,
        min_replicas=1,
    )
    return report


def _step_figures(h: Harness, wall_start: float, first_answer: dict[str, float]) -> dict[str, Any]:
    assert h.backend is not None
    ups = [e for e in h.backend.events if e.wall >= wall_start and e.after > e.before]
    if not ups:
        print("step: MISS  no scale-up happened")
        return {"scale_up": None, "pass": False}
    up = ups[0]
    added = [w for e in ups for w in e.spawned]
    details = [h.worker_detail(w, first_answer) for w in added]
    firsts = [first_answer[w] for w in added if w in first_answer]
    to_consuming = round(min(firsts) - up.wall, 3) if firsts else None
    join = [d["group_join_pause_s"] for d in details if d["group_join_pause_s"] is not None]
    spawn_assigned = [d["spawn_to_assigned_s"] for d in details if d["spawn_to_assigned_s"] is not None]
    ok = to_consuming is not None and to_consuming <= TARGET_S
    print(
        f"step: load on -> scale-up decision {up.wall - wall_start:.2f} s (lag {up.lag}, {up.before} -> {up.after})\n"
        f"step: {verdict(ok)}  lag over threshold (scale-up round) -> first answer delivered by an added worker: "
        f"{to_consuming} s (target {TARGET_S:g} s)\n"
        f"step: spawn -> partitions assigned (median of {len(spawn_assigned)}): {median(spawn_assigned)} s; "
        f"of which the broker's group-join pause (consumer start -> assigned): {median(join)} s"
    )
    return {
        "scale_up": asdict(up),
        "detect_s": round(up.wall - wall_start, 3),
        "threshold_to_first_answer_s": to_consuming,
        "measured_by": "first correct answer at the client whose worker response parameter names an added worker",
        "spawn_to_assigned_median_s": median(spawn_assigned),
        "group_join_pause_median_s": median(join),
        "added_workers": details,
        "pass": ok,
    }


def _stabilization_figures(h: Harness, load_stop: float, wall_stop: float, back: bool) -> dict[str, Any]:
    assert h.backend is not None
    after = [s for s in h.samples if s.t >= load_stop]
    high = [s.t for s in after if s.recommended > h.min_replicas]
    last_high = high[-1] if high else load_stop
    downs = [e for e in h.backend.events if e.wall >= wall_stop and e.after < e.before]
    at_min = next((e.t for e in downs if e.after == h.min_replicas), None)
    wait = round(at_min - last_high, 3) if at_min is not None else None
    # Nothing else stops workers before the teardown, so every requested exit so far is a scale-down.
    exits = [x for x in h.backend.exits if x.requested]
    still_draining = {w.worker_id for w in h.backend.workers(MODEL) if w.phase is WorkerPhase.DRAINING}
    stopped = {x.worker_id for x in exits} | still_draining
    drained = [
        {
            "worker": x.worker_id,
            "returncode": x.returncode,
            "killed": x.killed,
            "drain_s": round(x.drain_s, 3),
            "heartbeat": h.heartbeat.get(x.worker_id, "?"),
        }
        for x in exits
    ]
    clean = (
        bool(drained)
        and all(d["returncode"] == 0 and not d["killed"] and d["heartbeat"] == "stopped" for d in drained)
        and len(exits) == len(stopped)
    )
    in_window = wait is not None and STABILIZATION_S - INTERVAL_S - 0.1 <= wait <= STABILIZATION_S + 3 * INTERVAL_S
    ok = back and clean and in_window
    print(
        f"stabilization: {verdict(ok)}  back to {h.min_replicas} worker(s) {wait} s after the last recommendation "
        f"above it (window {STABILIZATION_S:g} s, rounds {INTERVAL_S:g} s); "
        f"{sum(1 for d in drained if d['returncode'] == 0 and not d['killed'])}/{len(stopped)} stopped workers "
        f"drained with exit 0, heartbeats {sorted(Counter(str(d['heartbeat']) for d in drained).items())}"
    )
    return {
        "last_recommendation_above_min_t": last_high,
        "at_min_t": at_min,
        "wait_after_last_high_s": wait,
        "scale_downs": [asdict(e) for e in downs],
        "drained": drained,
        "returned_to_min": back,
        "pass": ok,
    }


def _client_figures(load: OpenLoop) -> dict[str, Any]:
    done = [o for o in load.outcomes if o.done]
    ok = [o.done - o.sent for o in done if o.status == 200 and o.correct]
    ms = np.array(ok) * 1000.0 if ok else np.array([float("nan")])
    errors = Counter(o.error[:80] or f"HTTP {o.status}" for o in done if not (o.status == 200 and o.correct))
    return {
        "sent": load.sent,
        "answered_ok": len(ok),
        "failed": load.failed,
        "throttled": load.throttled,
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(np.max(ms)), 1),
        "errors": dict(errors.most_common(5)),
    }


SINE_S = 80.0
SINE_PERIOD_S = 40.0


async def scenario_sine(kit: ModelKit, root: Path, out: Path) -> dict[str, Any]:
    """A sine-wave load between ~0.2x and ~1.4x one worker's capacity; replicas should follow it."""
    mean, amplitude = round(0.8 * kit.capacity, 1), round(0.6 * kit.capacity, 1)
    print(f"sine: {mean} +- {amplitude} req/s, period {SINE_PERIOD_S:.0f} s, for {SINE_S:.0f} s")
    async with harness("sine", kit, root, min_replicas=1) as h:
        assert h.load is not None and h.backend is not None
        await wait_ready(h, 1)
        await asyncio.sleep(2.0)
        load_start = h.now()
        await h.load.run(sine_rate(mean, amplitude, SINE_PERIOD_S), SINE_S)
        load_stop = h.now()
        await h.load.drain(30.0)
        await asyncio.sleep(3.0)
        events = list(h.backend.events)
        report: dict[str, Any] = {
            "mean_req_s": mean,
            "amplitude_req_s": amplitude,
            "period_s": SINE_PERIOD_S,
            "scale_ups": sum(1 for e in events if e.after > e.before),
            "scale_downs": sum(1 for e in events if e.after < e.before),
            "max_replicas_seen": max((s.actual for s in h.samples), default=0),
            "client": _client_figures(h.load),
            "events": [asdict(e) for e in events],
            "samples": samples_json(h.samples),
        }
    print(
        f"sine: {report['scale_ups']} scale-ups, {report['scale_downs']} scale-downs, up to "
        f"{report['max_replicas_seen']} workers; client {report['client']['answered_ok']}/{report['client']['sent']} "
        f"answered, p50 {report['client']['p50_ms']} ms, p99 {report['client']['p99_ms']} ms"
    )
    marks = [(load_start, "load on"), (load_stop, "load off")]
    title = f"sine load: {mean} +- {amplitude} req/s, period {SINE_PERIOD_S:.0f} s"
    title += f" (1 worker ~ {kit.capacity:.0f} req/s)"
    plot(h.samples, title, out / "autoscale_sine.png", marks, min_replicas=1)
    return report


async def scenario_zero(kit: ModelKit, root: Path, out: Path) -> dict[str, Any]:
    """Cold requests to a model at zero workers: answered within 5 s + model load time."""
    print(f"zero: min replicas 0, idle to zero after {IDLE_TO_ZERO_S:g} s; two cold requests")
    trials: list[dict[str, Any]] = []
    async with harness("zero", kit, root, min_replicas=0) as h:
        assert h.load is not None and h.backend is not None
        for trial in range(2):
            if not await h.until(lambda s: s.actual == 0 and s.draining == 0, timeout_s=IDLE_TO_ZERO_S + 20.0):
                print("zero: the model did not go back to zero workers")
                break
            if trial:
                went_zero = next((e.t for e in reversed(h.backend.events) if e.after == 0), None)
                trials[-1]["answered_to_zero_s"] = since(went_zero, trials[-1]["answered_t"])
            await asyncio.sleep(1.0)
            wall = time.time()
            outcome = await h.load.send()
            await h.load.wait(outcome)
            await asyncio.sleep(1.0)  # the reply stream entry is written before the HTTP answer; margin anyway
            trials.append(await _cold_trial(h, outcome.sent, outcome.done, outcome.status, wall))
        report: dict[str, Any] = {
            "trials": trials,
            "events": [asdict(e) for e in h.backend.events],
            "samples": samples_json(h.samples),
        }
    load_s = max((t["model_load_s"] for t in trials if t["model_load_s"] is not None), default=kit.load_s)
    ok = len(trials) == 2 and all(t["ok"] and t["latency_s"] <= TARGET_S + load_s for t in trials)
    report |= {"model_load_s": load_s, "model_load_in_process_s": round(kit.load_s, 3), "pass": ok}
    latencies = ", ".join(f"{t['latency_s']:.2f} s" for t in trials)
    print(
        f"zero: {verdict(ok)}  cold request answered in {latencies} (target {TARGET_S:g} s + model load "
        f"{load_s:.2f} s); model load in process {kit.load_s:.3f} s"
    )
    for t in trials:
        print(
            f"zero:   breakdown: request -> activation {t['request_to_activation_s']} s, spawn -> model loaded "
            f"{t['spawn_to_loaded_s']} s, -> join start {t['loaded_to_join_start_s']} s, group join pause "
            f"{t['group_join_pause_s']} s, assigned -> answered {t['assigned_to_answer_s']} s"
        )
    return report


async def _cold_trial(h: Harness, sent: float, done: float, status: int, wall: float) -> dict[str, Any]:
    assert h.backend is not None
    activation = next((e for e in h.backend.events if e.before == 0 and e.after > 0 and e.wall >= wall), None)
    worker = activation.spawned[0] if activation is not None and activation.spawned else ""
    m = h.milestones(worker) if worker else WorkerMilestones()
    first = h.first_answers().get(worker)
    answered_wall = wall + (done - sent)
    load_s = _model_load_s(h, worker)
    return {
        "ok": status == 200,
        "status": status,
        "latency_s": round(done - sent, 3),
        "answered_t": h.at(answered_wall),
        "worker": worker,
        "request_to_activation_s": since(activation.wall if activation else None, wall),
        "spawn_to_loaded_s": since(m.loaded, h.backend.spawned_at.get(worker)),
        "loaded_to_join_start_s": since(m.join_start, m.loaded),
        "group_join_pause_s": since(m.assigned, m.join_start),
        "assigned_to_answer_s": since(first, m.assigned),
        "model_load_s": load_s,
        "ready_latency_s": round(h.backend.ready_latencies[-1], 3) if h.backend.ready_latencies else None,
    }


def _model_load_s(h: Harness, worker: str) -> float | None:
    """The worker's model load: from its log line before ``loaded`` (the last step before the load) to it."""
    assert h.backend is not None
    if not worker:
        return None
    try:
        text = (h.backend.log_dir / f"{worker}.log").read_text(errors="replace")
    except OSError:
        return None
    previous: float | None = None
    for line in text.splitlines():
        m = parse_worker_log(line)
        if m.first_log is None:
            continue
        if m.loaded is not None:
            return since(m.loaded, previous)
        previous = m.first_log
    return None


CHURN_EVENTS = 22
CHURN_EVERY_S = 6.0
CHURN_HIGH = MAX_REPLICAS
CHURN_FACTOR = 0.6


async def scenario_churn(kit: ModelKit, root: Path, out: Path) -> dict[str, Any]:
    """Steady load while pins flip the model between 1 and CHURN_HIGH workers: nothing lost, nothing duplicated."""
    rate = round(CHURN_FACTOR * kit.capacity, 1)
    print(
        f"churn: {rate} req/s while the model is pinned {CHURN_HIGH}, 1, {CHURN_HIGH}, ... every {CHURN_EVERY_S:g} s "
        f"({CHURN_EVENTS} x)"
    )
    async with harness("churn", kit, root, min_replicas=1, timeout_s=90.0) as h:
        assert h.load is not None and h.backend is not None
        await wait_ready(h, 1)
        pins = PinStore(h.redis, h.names)
        duration = CHURN_EVENTS * CHURN_EVERY_S + 6.0
        loader = asyncio.create_task(h.load.run(step_rate(rate, 0.0, duration), duration), name="churn-load")
        try:
            await asyncio.sleep(3.0)
            churn_start = h.now()
            for i in range(CHURN_EVENTS):
                await pins.pin(MODEL, CHURN_HIGH if i % 2 == 0 else 1)
                await asyncio.sleep(CHURN_EVERY_S)
            churn_stop = h.now()
            await pins.unpin(MODEL)
            await loader
        finally:
            loader.cancel()
            await asyncio.gather(loader, return_exceptions=True)
        drained = await h.load.drain(120.0)
        await asyncio.sleep(1.0)
        report = await _churn_figures(h, churn_start, churn_stop, drained)
    return report


async def _churn_figures(h: Harness, start: float, stop: float, drained: bool) -> dict[str, Any]:
    assert h.load is not None and h.backend is not None
    events = [e for e in h.backend.events if start <= e.t <= stop + 1.0 and e.after != e.before]
    outcomes = h.load.outcomes
    answers = Counter(o.client_id for o in outcomes if o.status == 200)
    ok = [o for o in outcomes if o.status == 200 and o.correct]
    lost = [o for o in outcomes if o.status != 200]
    wrong = [o for o in outcomes if o.status == 200 and not o.correct]
    wire_ids = [o.wire_id for o in outcomes if o.wire_id]
    # A sync reply stores nothing in Redis: what was answered is counted from the client's responses. Every wire
    # id once among them (a redelivered request re-run by another worker sends a second reply, which the gateway
    # drops by its id, so the client never sees it twice), and every wire id the gateway gave out answered.
    duplicated = [w for w, n in Counter(wire_ids).items() if n > 1]
    answered = {o.wire_id for o in outcomes if o.status == 200 and o.wire_id}
    unanswered = [w for w in dict.fromkeys(wire_ids) if w not in answered]
    exits = list(h.backend.exits)
    report: dict[str, Any] = {
        "rate_req_s": round(CHURN_FACTOR * h.kit.capacity, 1),
        "scale_events": len(events),
        "ups": sum(1 for e in events if e.after > e.before),
        "downs": sum(1 for e in events if e.after < e.before),
        "workers_spawned": len(h.backend.spawned_at),
        "worker_exits": {
            "clean": sum(1 for x in exits if x.returncode == 0 and x.requested),
            "other": [asdict(x) for x in exits if not (x.returncode == 0 and x.requested)],
        },
        "client": _client_figures(h.load) | {"all_answered_before_timeout": drained},
        "client_sent": len(outcomes),
        "client_answered_ok": len(ok),
        "client_lost": len(lost),
        "client_wrong_answer": len(wrong),
        "client_answers_per_id_max": max(answers.values(), default=0),
        "wire_ids_duplicated": len(duplicated),
        "wire_ids_unanswered": len(unanswered),
        "events": [asdict(e) for e in h.backend.events],
        "samples": samples_json(h.samples),
    }
    passed = (
        len(events) >= 20
        and not lost
        and not wrong
        and not duplicated
        and report["client_answers_per_id_max"] <= 1
        and not unanswered
    )
    report["pass"] = passed
    print(
        f"churn: {verdict(passed)}  {len(events)} scale events ({report['ups']} up, {report['downs']} down, "
        f"{report['workers_spawned']} workers spawned); client: {len(outcomes)} sent, {len(ok)} answered correctly, "
        f"{len(lost)} lost, {len(wrong)} wrong, max {report['client_answers_per_id_max']} answer(s) per id; "
        f"{len(duplicated)} wire ids answered twice, {len(unanswered)} unanswered"
    )
    if lost:
        print(f"churn:   lost request errors: {report['client']['errors']}")
    return report


# entry point ----------------------------------------------------------------------------------------------------
RUNNERS = {"step": scenario_step, "sine": scenario_sine, "zero": scenario_zero, "churn": scenario_churn}


async def run(scenarios: list[str], out: Path) -> dict[str, Any]:
    """Run ``scenarios`` in order; each writes ``autoscale_<name>.json`` under ``out``."""
    root = Path(tempfile.mkdtemp(prefix="fleet-autoscale-"))
    print(f"working folder (stack and worker logs): {root}")
    kit = await asyncio.to_thread(build_model, root)
    print(
        f"model {MODEL}: {len(LAYERS) - 2} x 512 hidden, {ROWS_PER_REQUEST} rows/request, batches of "
        f"{BATCH_REQUESTS} requests; 1 worker ~ {kit.capacity:.1f} req/s (ONNX Runtime, 1 thread), "
        f"load {kit.load_s * 1000:.0f} ms"
    )
    summary: dict[str, Any] = {}
    for name in scenarios:
        began = time.perf_counter()
        report = await RUNNERS[name](kit, root, out)
        report |= {
            "scenario": name,
            "commit": git_commit(),
            "machine": machine(),
            "capacity_req_s": round(kit.capacity, 1),
            "wall_s": round(time.perf_counter() - began, 1),
            "settings": {
                "interval_s": INTERVAL_S,
                "scale_down_stabilization_s": STABILIZATION_S,
                "idle_to_zero_s": IDLE_TO_ZERO_S,
                "partitions": PARTITIONS,
                "max_replicas": MAX_REPLICAS,
                "kafka": KAFKA,
                "worker_env": WORKER_ENV,
            },
        }
        await asyncio.to_thread(write_report, out / f"autoscale_{name}.json", report, indent=1, quiet=True)
        summary[name] = {k: v for k, v in report.items() if k not in ("samples", "events")}
        print(f"{name}: done in {report['wall_s']} s, figures in {out / f'autoscale_{name}.json'}", flush=True)
    kit.path.unlink(missing_ok=True)  # 64 MB; the logs stay
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all", help="which scenario to run")
    parser.add_argument("--out", default="bench/results", help="folder of the JSON figures and PNG plots")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    began = time.perf_counter()
    try:
        asyncio.run(run(scenarios, Path(args.out)))
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
