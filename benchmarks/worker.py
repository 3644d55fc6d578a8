"""What features.py and its worker processes share: each worker times one system's retrieval on the data
directory and leaves result.parquet and timing.json in its output directory (stdlib and pandas only, so it
loads in loopml's venv and in Feast's)."""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd


def peak_bytes() -> int:
    """Peak resident memory of this process since it started. VmHWM belongs to the process's own address space;
    ru_maxrss (the fallback without /proc) also counts the parent's memory at fork, so it overstates."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))


def time_calls(call: Callable[[], pd.DataFrame], repeats: int, out: Path, **extra: object) -> None:
    """Time `call` `repeats` times; the first result goes to result.parquet, timings (and `extra`) before the
    first call and after every call (so a run stopped for time still reports the calls it finished, and one
    that fails still reports `extra`)."""
    seconds: list[float] = []

    def write() -> None:
        timing = {"seconds": seconds, "peak_bytes": peak_bytes(), **extra}
        (out / "timing.json").write_text(json.dumps(timing))

    write()
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
        if len(seconds) == 1:
            result.to_parquet(out / "result.parquet")
        del result
        write()


def worker_arguments(
    description: str, option: str, choices: list[str]
) -> tuple[argparse.Namespace, dict, pd.DataFrame]:
    """A worker's command line (data dir, output dir, `--{option}` among `choices`, --repeats,
    --no-aggregation), with the data directory's spec.json and entity frame loaded. The spec's aggregation is
    left out of it with --no-aggregation, so a worker only sees the work it is asked to do."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument(f"--{option}", choices=choices, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-aggregation", action="store_true", help="retrieve the plain views only")
    args = parser.parse_args()
    spec = json.loads((args.data / "spec.json").read_text())
    if args.no_aggregation:
        spec.pop("aggregation", None)
    return args, spec, pd.read_parquet(args.data / "entities.parquet")
