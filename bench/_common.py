"""What every benchmark part shares: progress lines, statistics, machine facts, saving."""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import statistics
import sys
from pathlib import Path

__all__ = [
    "RESULTS",
    "cpu_model",
    "median",
    "percentile",
    "save_results",
    "say",
    "stamp",
]

RESULTS = Path(__file__).resolve().parent / "results"


def say(text: str) -> None:
    """A progress line on stderr (tables go to stdout)."""
    print(f"--> {text}", file=sys.stderr, flush=True)


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def percentile(values, q: float) -> float:
    """The ``q`` quantile of ``values`` by nearest rank (the same rule in every part)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def stamp(**machine) -> dict:
    """When and where a result was made: ``date``, ``time`` (UTC), ``host``, and ``machine``
    (CPUs, CPU model, memory, kernel, Python, plus the part's own ``machine`` entries)."""
    now = datetime.datetime.now(datetime.UTC)
    return {
        "date": now.strftime("%Y-%m-%d"),
        "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": socket.gethostname().split(".")[0],
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30),
            "kernel": platform.release(),
            "python": platform.python_version(),
            **machine,
        },
    }


def save_results(part: str, res: dict, text: str) -> Path:
    """Write ``bench/results/<date>-<host>-<part>.md`` and ``.json`` (replacing the same day's)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / f"{res['date']}-{res['host']}-{part}"
    for suffix, data in ((".md", text), (".json", json.dumps(res, indent=1) + "\n")):
        tmp = base.with_suffix(suffix + ".tmp")
        tmp.write_text(data)
        tmp.rename(base.with_suffix(suffix))
    return base
