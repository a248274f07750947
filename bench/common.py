"""What every benchmark script prints the same way: the machine, and timing summaries."""

from __future__ import annotations

import os
import platform
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def machine() -> str:
    """CPU model, CPU count, kernel, Python and SQLite versions, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def median_p99_ms(seconds: list[float]) -> tuple[float, float]:
    """Median and 99th percentile of timings in seconds, as milliseconds."""
    p99 = statistics.quantiles(seconds, n=100)[98] if len(seconds) > 1 else seconds[0]
    return statistics.median(seconds) * 1e3, p99 * 1e3


def timed(call: Callable[[], object], rounds: int, warmup: int | None = None) -> list[float]:
    """Seconds per call of ``call``, one ``perf_counter`` pair each, after a warm-up."""
    for _ in range(min(rounds // 10, 1000) if warmup is None else warmup):
        call()
    timings = []
    clock = time.perf_counter
    for _ in range(rounds):
        start = clock()
        call()
        timings.append(clock() - start)
    return timings
