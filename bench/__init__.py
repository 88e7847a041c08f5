"""Benchmarks. `make bench` (= `python -m bench`) runs every `bench_*.py` module."""

from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (what a measurement ran on), "unknown" when unreadable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
