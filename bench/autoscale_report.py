"""Pure helpers of the autoscaling benchmark: time series samples, worker-log milestones, plots.

Nothing here talks to the fleet; `bench.autoscale` collects, these functions summarize and draw.
"""

from __future__ import annotations

import datetime as dt
import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sample:
    """The fleet at one instant (taken every ~0.5 s)."""

    #: Seconds since the scenario began (monotonic).
    t: float
    #: Workers the autoscaler's latest decision wants, and the recommendation before stabilization.
    desired: int
    recommended: int
    #: Workers starting or ready (what the backend counts), ready ones, draining ones.
    actual: int
    ready: int
    draining: int
    #: Lag (records) and smoothed arrival / completion rates from the autoscaler's latest round.
    lag: int
    arrival_rate: float
    completion_rate: float
    #: Client counters: requests sent, answered correctly, failed, in flight.
    sent: int
    answered: int
    failed: int
    in_flight: int


def throughput(samples: Sequence[Sample], window_s: float = 1.0) -> tuple[list[float], list[float]]:
    """Client-side (sent/s, answered/s) at each sample, over the trailing ``window_s`` (pure)."""
    sent: list[float] = []
    answered: list[float] = []
    j = 0
    for i, s in enumerate(samples):
        while j < i and s.t - samples[j].t > window_s:
            j += 1
        span = s.t - samples[j].t
        sent.append((s.sent - samples[j].sent) / span if span > 0 else 0.0)
        answered.append((s.answered - samples[j].answered) / span if span > 0 else 0.0)
    return sent, answered


# worker logs ------------------------------------------------------------------------------------------------
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+ (.*)$")


@dataclass
class WorkerMilestones:
    """Wall-clock seconds (epoch) of the steps a worker's log shows; None when absent."""

    first_log: float | None = None
    loaded: float | None = None
    join_start: float | None = None  # the consumer subscribed and began joining the group
    serving: float | None = None
    assigned: float | None = None
    ready: float | None = None
    stopped: float | None = None
    assignments: list[tuple[float, str]] = field(default_factory=list)


def parse_worker_log(text: str) -> WorkerMilestones:
    """Milestones of one ``python -m workers`` log (``%(asctime)s LEVEL logger message`` lines, local time)."""
    found = WorkerMilestones()
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        at = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        message = match.group(2)
        if found.first_log is None:
            found.first_log = at
        if message.startswith("loaded ") and found.loaded is None:
            found.loaded = at
        elif message.startswith("Subscribed to topic(s)") and found.join_start is None:
            found.join_start = at
        elif " serving " in message and message.startswith("worker "):
            found.serving = at
        elif ": assigned " in message:
            partitions = message.split(": assigned ", 1)[1]
            found.assignments.append((at, partitions))
            if found.assigned is None and partitions != "no partitions":
                found.assigned = at
        elif message.endswith(" ready") and message.startswith("worker "):
            found.ready = at
        elif message.endswith(" stopped") and message.startswith("worker "):
            found.stopped = at
    return found


# figures ----------------------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


def median(values: Sequence[float]) -> float | None:
    """Median rounded to ms, None when empty."""
    return round(statistics.median(values), 3) if values else None


def since(later: float | None, earlier: float | None) -> float | None:
    """``later - earlier`` rounded to ms; None when either is missing."""
    return None if later is None or earlier is None else round(later - earlier, 3)


def samples_json(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """Samples as JSON-ready dicts."""
    return [asdict(s) for s in samples]


def plot(
    samples: Sequence[Sample], title: str, path: Path, marks: Sequence[tuple[float, str]] = (), min_replicas: int = 0
) -> None:
    """Replicas (desired, actual, ready), lag and throughput over time, one panel each, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in samples]
    sent, answered = throughput(samples)
    fig, (ax_r, ax_l, ax_t) = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True, constrained_layout=True)
    ax_r.step(t, [s.desired for s in samples], where="post", label="desired (autoscaler)", color="tab:red", lw=2)
    ax_r.step(t, [s.actual for s in samples], where="post", label="actual (starting + ready)", color="tab:blue")
    ax_r.step(t, [s.ready for s in samples], where="post", label="ready (consuming)", color="tab:green", ls="--")
    ax_r.step(t, [s.draining for s in samples], where="post", label="draining", color="tab:gray", ls=":")
    if min_replicas:
        ax_r.axhline(min_replicas, color="black", lw=0.6, ls=":")
    ax_r.set_ylabel("workers")
    ax_r.set_ylim(-0.2, max([s.desired for s in samples] + [s.actual for s in samples] + [1]) + 0.8)
    ax_r.legend(loc="upper right", fontsize=8)
    ax_r.set_title(title)
    ax_l.plot(t, [s.lag for s in samples], color="tab:purple", label="lag (records)")
    ax_l.plot(t, [s.in_flight for s in samples], color="tab:orange", lw=0.8, label="client in flight")
    ax_l.set_ylabel("records")
    ax_l.legend(loc="upper right", fontsize=8)
    ax_t.plot(t, sent, color="tab:orange", label="sent req/s (client)")
    ax_t.plot(t, answered, color="tab:green", label="answered req/s (client)")
    ax_t.plot(t, [s.arrival_rate for s in samples], color="tab:orange", ls=":", label="arrival rate (collector)")
    ax_t.plot(t, [s.completion_rate for s in samples], color="tab:green", ls=":", label="completion rate (collector)")
    ax_t.set_ylabel("requests/s")
    ax_t.set_xlabel("seconds")
    ax_t.legend(loc="upper right", fontsize=8)
    for ax in (ax_r, ax_l, ax_t):
        ax.grid(alpha=0.3)
        for at, label in marks:
            ax.axvline(at, color="black", lw=0.7, ls="--")
            if ax is ax_r:
                ax.annotate(label, (at, ax.get_ylim()[1]), fontsize=7, rotation=90, va="top", ha="right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
