"""Metric names used by PromQL expressions, and the series names a Prometheus text exposition offers.

Only what the dashboard test needs: strings, label matchers, range/subquery brackets and the label lists of
``by``/``without``/``on``/``ignoring``/``group_*`` are removed; what is left that is an identifier not
followed by ``(`` and not a keyword is a metric name.
"""

from __future__ import annotations

import re

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan", "atan2", "start", "end"}  # fmt: skip

#: Sample suffixes of each metric type in the text exposition (prometheus_client).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "untyped": ("",),
}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (``label_values(m, l)`` counts ``m``)."""
    text = _STRING.sub(" ", expr)
    text = re.sub(r"\$\{?\w+(?::\w+)?\}?", "1", text)  # Grafana variables ($__rate_interval, ${x})
    while True:
        stripped = _RANGE.sub(" ", _MATCHERS.sub(" ", _LABEL_LIST.sub(" ", text)))
        if stripped == text:
            break
        text = stripped
    if text.strip().startswith("label_values("):  # label_values(metric, label): drop the label argument
        text = re.sub(r",\s*\w+\s*\)\s*$", ")", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS or re.fullmatch(r"\d+[smhdwy]", name):
            continue
        names.add(name)
    return names


def exposed_series(exposition: str) -> set[str]:
    """Every series name a text exposition can carry, from its ``# TYPE`` lines (families with no samples
    yet included), plus the names of the samples it holds."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            kind = kind.strip()
            if kind == "counter":  # the 0.0.4 format names the family x_total, OpenMetrics names it x
                family = family.removesuffix("_total")
            names.update(family + suffix for suffix in SUFFIXES.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names
