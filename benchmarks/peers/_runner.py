"""What the drift peers' runners share (stdlib and pandas only, so it loads in each peer's venv).

A runner reads the reference and current Parquet files (timed apart), runs its peer's drift computation over
the listed columns (timed: the peer's own work only) and writes one JSON file. Whatever goes wrong after the
command line is parsed (the peer's import, a read, the computation, a MemoryError) ends up in that file's
"error" field and the runner still exits 0, so the benchmark decides what a failure means. A process killed
from outside (the kernel's OOM killer) writes nothing: the benchmark has to treat a missing file as a failure.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
import traceback
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def arguments(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """The common command line, plus what `extra` adds to the parser."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--reference", type=Path, required=True, help="reference Parquet file")
    parser.add_argument("--current", type=Path, required=True, help="current Parquet file")
    parser.add_argument("--numeric", default="", help="comma-separated numeric columns")
    parser.add_argument("--categorical", default="", help="comma-separated categorical columns")
    parser.add_argument(
        "--mode",
        choices=["default", "tests"],
        default="default",
        help="default: the peer picks its methods; tests: two-sample KS (numeric) and chi-squared (categorical)",
    )
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    args.numeric = [c for c in args.numeric.split(",") if c]
    args.categorical = [c for c in args.categorical.split(",") if c]
    if not args.numeric and not args.categorical:
        parser.error("no columns: give --numeric and/or --categorical")
    return args


def peak_rss_bytes() -> int:
    """ru_maxrss (KiB on Linux). After fork+exec Linux starts it at the parent's peak RSS at fork, so a child
    of a big parent can report the parent's memory: peak_vmhwm_bytes is this process's own high-water mark."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_vmhwm_bytes() -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    return next(
        (int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")), None
    )


def number(value: Any) -> float | None:
    """A JSON-safe float: None for None, NaN and anything that is not a number."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def flag(value: Any) -> bool | None:
    if value is None:
        return None
    try:
        if isinstance(value, float) and math.isnan(value):
            return None
        return bool(value)
    except (TypeError, ValueError):
        return None


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def run(peer: str, package: str, args: argparse.Namespace, drift: Callable[..., dict[str, Any]]) -> None:
    """Read both files, call `drift(reference, current, args, report)` and write the JSON.

    `drift` returns {column: {"method", "statistic", "p_value", "drift_score", "drifted", ...}} and records
    its own timing with report["drift_seconds"] (it alone knows where the peer's work starts and ends).
    """
    report: dict[str, Any] = {
        "peer": peer,
        "version": package_version(package),
        "mode": args.mode,
        "rows_reference": None,
        "rows_current": None,
        "read_seconds": None,
        "drift_seconds": None,
    }
    try:
        import pandas as pd

        columns = [*args.numeric, *args.categorical]
        started = time.perf_counter()
        reference = pd.read_parquet(args.reference, columns=columns)
        current = pd.read_parquet(args.current, columns=columns)
        report["read_seconds"] = time.perf_counter() - started
        report["rows_reference"] = len(reference)
        report["rows_current"] = len(current)
        report["features"] = drift(reference, current, args, report)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a failed peer is a result too (MemoryError, SystemExit from a library...)
        report["error"] = {
            "type": type(exc).__name__,
            "message": str(exc)[:2000],
            "traceback": traceback.format_exc()[-4000:],
        }
    report["peak_rss_bytes"] = peak_rss_bytes()
    report["peak_vmhwm_bytes"] = peak_vmhwm_bytes()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
