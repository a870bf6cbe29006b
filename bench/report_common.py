"""What every section of the benchmark's report uses: the machine it ran on and how figures read."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import math
import os
import platform

from bench.figures import Results

LIBRARIES = ("onnxruntime", "pyarrow", "numpy", "tensorflow", "keras")
KERAS = "Keras predict + argmax + top-3"
RAW = "raw onnxruntime"
JOB = "job (`python -m score`)"


# Machine -------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def library_version(name: str) -> str:
    for distribution in (name, f"{name}-cpu"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "absent"


def machine_lines(results: Results) -> list[str]:
    libraries = ", ".join(f"{name} {library_version(name)}" for name in LIBRARIES)
    return [
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores; RAM {memory_gib():.1f} GiB",
        f"- Python {platform.python_version()}; {libraries}",
        f"- Threads for every path: {results.config.threads}",
    ]


def format_rate(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.0f}"


def format_met(met: bool) -> str:
    return "PASS" if met else "MISS"


def short_count(rows: int) -> str:
    if rows >= 1_000_000 and rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows >= 1000 and rows % 1000 == 0:
        return f"{rows // 1000}k"
    return f"{rows:,}"


def format_percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1%}"


def format_ratio(value: float) -> str:
    return "    -" if math.isnan(value) else f"{value:5.2f}x"
