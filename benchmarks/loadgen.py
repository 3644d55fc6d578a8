"""Open-loop HTTP load on a fixed schedule, from one or more generator processes; latency from the schedule.

The schedule is fixed before the run: Poisson arrival times at the target rate and, for each arrival, which
pre-encoded request it sends (an endpoint and a body). Arrivals are dealt round-robin to the generator
processes. Each process is a single-threaded event loop over a pool of keep-alive connections (raw sockets,
`select` with microsecond timeouts): it sends every arrival that is due on the idle connection used least
recently and reads the answers as they come. A request's latency runs from its *scheduled* arrival to the end of its answer, so
when the server falls behind, or every connection is busy, or the generator itself is late, the wait counts
against the server instead of disappearing (no coordinated omission). `send_lag` (scheduled arrival to the
moment the request was written) shows how late the generator was; a small send-lag p99 with a large latency
p99 says the queue was in the server. A request whose keep-alive connection the server had closed while it
sat idle is sent again on a new one (its latency still runs from its scheduled arrival); any other failure,
a status other than 200, or no answer within the drain time after the last arrival is an error. Arrivals in
the first `warmup` seconds load the server but are left out of the figures.

The processes start, open their connections, report ready, and are then given a common start time on the
monotonic clock (shared by all processes on Linux); each returns its latencies, send lags and status codes,
merged by the caller. They may be pinned to their own CPUs, apart from the server's.

Why not openloop.py's threads: at several thousand requests a second, a thread per connection wakes through
the GIL for every send and every answer, and its `time.sleep` overshoots; a select loop does the same work in
one thread without GIL hand-offs (see `benchmarks/serving.py --check-generator`).

Standard library and numpy only, so it runs under any of the benchmark virtual environments.

    python benchmarks/loadgen.py --worker DIRECTORY INDEX     # one generator process (started by `run`)
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

TRANSPORT_ERROR = 0  # status recorded for a request whose connection failed
NOT_ANSWERED = -1  # status of a request still unanswered at the deadline (or never sent)
READY = b"ready\n"


def encode_post(host: str, path: str, body: bytes) -> bytes:
    """The whole HTTP/1.1 request for a JSON POST, sent as is on a keep-alive connection."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def schedule(rate: float, duration: float, choices: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Poisson arrival offsets (seconds from the start) at `rate` for `duration` s, and for each arrival the
    index of the request it sends, uniform over `choices`."""
    rng = np.random.default_rng(seed)
    n = max(1, round(rate * duration))
    offsets = np.cumsum(rng.exponential(1.0 / rate, n))
    return offsets, rng.integers(0, choices, n)


def run(
    url: str,
    requests: Sequence[bytes],
    offsets: np.ndarray,
    picks: np.ndarray,
    *,
    warmup: float = 0.0,
    processes: int = 1,
    connections: int = 32,
    cpus: set[int] | None = None,
    drain_seconds: float = 10.0,
) -> dict[str, Any]:
    """Send `requests[picks[i]]` at `offsets[i]` s after a common start; the figures of the arrivals at or
    after `warmup` s (the earlier ones load the server without being counted, except as errors).

    `connections` is per process; `cpus` pins the generator processes; requests unanswered `drain_seconds`
    after the last arrival count as errors.
    """
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    shares = [np.arange(len(offsets))[k::processes] for k in range(processes)]
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        directory = Path(tmp)
        (directory / "requests.pickle").write_bytes(pickle.dumps(list(requests)))
        config = {"host": host, "port": int(port), "connections": connections, "drain": drain_seconds}
        (directory / "config.json").write_text(json.dumps(config))
        for k, share in enumerate(shares):
            np.save(directory / f"offsets-{k}.npy", offsets[share])
            np.save(directory / f"picks-{k}.npy", picks[share])
        workers = [_start_worker(directory, k, cpus) for k in range(processes)]
        try:
            for worker in workers:
                line = worker.stdout.readline() if worker.stdout else b""
                if line != READY:
                    raise RuntimeError(f"A load generator failed to start: {_tail(worker)}")
            start = time.perf_counter() + 0.05
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write(f"{start!r}\n".encode())
                worker.stdin.close()
            for worker in workers:
                if worker.wait(offsets[-1] + drain_seconds + 60) != 0:
                    raise RuntimeError(f"A load generator failed: {_tail(worker)}")
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
        parts = [dict(np.load(directory / f"result-{k}.npz")) for k in range(processes)]
        errors = [
            (directory / f"error-{k}.txt").read_text()
            for k in range(processes)
            if (directory / f"error-{k}.txt").exists()
        ]
    merged = {}
    for name in ("latency", "lag", "status"):
        merged[name] = np.empty(len(offsets), dtype=parts[0][name].dtype)
        for share, part in zip(shares, parts, strict=True):
            merged[name][share] = part[name]
    counted = offsets >= warmup
    figures = summarise(
        offsets[counted] - warmup,
        latency=merged["latency"][counted],
        lag=merged["lag"][counted],
        status=merged["status"][counted],
        finished=max(float(p["finished"]) for p in parts) - warmup,
        first_error=errors[0] if errors else None,
    )
    figures["resent_on_new_connection"] = sum(int(p["resent"]) for p in parts)
    figures["warmup_requests"] = int((~counted).sum())
    figures["warmup_errors"] = int((merged["status"][~counted] != 200).sum())
    # CPU the generator processes used while sending, per second of schedule: near 1.0 per process means
    # they were saturated
    figures["generator_cpu"] = sum(float(p["cpu"]) for p in parts) / float(offsets[-1])
    return figures


def summarise(
    offsets: np.ndarray,
    *,
    latency: np.ndarray,
    lag: np.ndarray,
    status: np.ndarray,
    finished: float,
    first_error: str | None,
) -> dict[str, Any]:
    """Percentiles of the answered requests (ms), error counts and rates; `finished` is the last answer's
    time from the start of `offsets`."""
    ok = status == 200
    done = latency[ok] * 1000
    sent = lag[~np.isnan(lag)] * 1000
    span = float(offsets[-1]) if len(offsets) else 0.0

    def pct(values: np.ndarray, q: float) -> float | None:
        return float(np.percentile(values, q)) if len(values) else None

    return {
        "requests": len(offsets),
        "ok": int(ok.sum()),
        "errors": int((~ok).sum()),
        "unanswered": int((status == NOT_ANSWERED).sum()),
        "error_statuses": dict(Counter(str(s) for s in status[~ok].tolist())),
        "first_error": first_error,
        "offered_rate": len(offsets) / span if span > 0 else 0.0,
        "achieved_rate": float(ok.sum()) / max(finished, span) if max(finished, span) > 0 else 0.0,
        "p50_ms": pct(done, 50),
        "p90_ms": pct(done, 90),
        "p99_ms": pct(done, 99),
        "p999_ms": pct(done, 99.9),
        "max_ms": float(done.max()) if len(done) else None,
        "send_lag_p50_ms": pct(sent, 50),
        "send_lag_p99_ms": pct(sent, 99),
    }


def _start_worker(directory: Path, index: int, cpus: set[int] | None) -> subprocess.Popen[bytes]:
    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(directory), str(index)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=pin,
    )


def _tail(worker: subprocess.Popen[bytes]) -> str:
    if worker.poll() is None:
        worker.kill()
    _, err = worker.communicate()
    return err.decode(errors="replace")[-2000:] or f"exit status {worker.returncode}"


# ------------------------------------------------------------------------------------- generator process


class _Connection:
    """One keep-alive connection: the arrival it is answering, the bytes of its answer so far, and how many
    answers it carried before (a server may close a keep-alive connection that sat idle)."""

    __slots__ = ("answers", "arrival", "buffer", "sock")

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.arrival = -1
        self.buffer = b""
        self.answers = 0


def _answer(buffer: bytes) -> tuple[int, int, bool] | None:
    """(status, length of the whole answer, whether the server closes) once `buffer` holds a full answer."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buffer[:end].lower()
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        raise ValueError(f"an answer without Content-Length: {buffer[:end]!r}")
    value = at + len(b"\r\ncontent-length:")
    stop = head.find(b"\r\n", value)
    length = int(head[value : stop if stop >= 0 else None])
    total = end + 4 + length
    if len(buffer) < total:
        return None
    return int(buffer[9:12]), total, b"\r\nconnection: close" in head


def generate(directory: Path, index: int) -> None:
    """Run one generator process's share of the schedule (see the module docstring)."""
    config = json.loads((directory / "config.json").read_text())
    requests: list[bytes] = pickle.loads((directory / "requests.pickle").read_bytes())
    offsets = np.load(directory / f"offsets-{index}.npy").tolist()
    picks = np.load(directory / f"picks-{index}.npy").tolist()
    address = (config["host"], config["port"])
    n = len(offsets)
    latency = np.full(n, np.nan)
    lag = np.full(n, np.nan)
    status = np.full(n, NOT_ANSWERED, dtype=np.int16)
    errors: list[str] = []
    idle = deque(_Connection(address) for _ in range(config["connections"]))  # used in turn, oldest first
    busy: dict[socket.socket, _Connection] = {}
    gc.collect()
    gc.disable()  # a collection pause here would be counted as the server's latency
    sys.stdout.buffer.write(READY)
    sys.stdout.buffer.flush()
    start = float(sys.stdin.readline())
    cpu_at_start = time.process_time()
    deadline = start + (offsets[-1] if n else 0.0) + config["drain"]
    dues = [start + offset for offset in offsets]
    after_last = time.perf_counter()
    sent = answered = resent = 0

    def resend(conn: _Connection) -> bool:
        """Send a request again on a new connection when the server had closed the old one while it sat idle
        (nothing of the answer came back); its latency still runs from its scheduled arrival."""
        nonlocal resent
        if conn.answers <= 0 or conn.buffer:  # a fresh connection failed, or the answer was cut short
            return False
        conn.sock.close()
        try:
            fresh = _Connection(address)
            fresh.sock.sendall(requests[picks[conn.arrival]])
        except OSError:
            return False
        fresh.arrival = conn.arrival
        busy[fresh.sock] = fresh
        resent += 1
        return True

    def fail(conn: _Connection, why: str) -> None:
        nonlocal answered
        if conn.arrival >= 0:
            status[conn.arrival] = TRANSPORT_ERROR
            answered += 1
        if len(errors) < 5:
            errors.append(why)
        conn.sock.close()
        try:
            idle.append(_Connection(address))
        except OSError as exc:
            errors.append(f"reconnecting failed: {exc}")

    while answered < n:
        now = time.perf_counter()
        if now > deadline:
            break
        while sent < n and idle and dues[sent] <= now:
            conn = idle.popleft()
            conn.arrival = sent
            try:
                conn.sock.sendall(requests[picks[sent]])
            except OSError as exc:
                if not resend(conn):
                    fail(conn, f"send: {exc}")
            else:
                busy[conn.sock] = conn
            lag[sent] = now - dues[sent]
            sent += 1
            now = time.perf_counter()
        if sent < n and idle:
            timeout = max(0.0, dues[sent] - time.perf_counter())
        else:
            timeout = max(0.0, deadline - time.perf_counter())
        if not busy:
            if timeout > 0:
                time.sleep(timeout)
            continue
        readable, _, _ = select.select(list(busy), [], [], timeout)
        received = time.perf_counter()
        for sock in readable:
            conn = busy[sock]
            try:
                chunk = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError as exc:
                del busy[sock]
                if not resend(conn):
                    fail(conn, f"receive: {exc}")
                continue
            if not chunk:
                del busy[sock]
                if not resend(conn):
                    fail(conn, "the server closed the connection")
                continue
            conn.buffer += chunk
            try:
                parsed = _answer(conn.buffer)
            except ValueError as exc:
                del busy[sock]
                fail(conn, str(exc))
                continue
            if parsed is None:
                continue
            code, total, closes = parsed
            i = conn.arrival
            status[i] = code
            if code == 200:
                latency[i] = received - dues[i]
            elif len(errors) < 5:
                errors.append(f"HTTP {code}: {conn.buffer[:total][-300:]!r}")
            answered += 1
            after_last = received
            conn.buffer = conn.buffer[total:]
            conn.arrival = -1
            conn.answers += 1
            del busy[sock]
            if closes:
                conn.sock.close()
                idle.append(_Connection(address))
            else:
                idle.append(conn)
    cpu = time.process_time() - cpu_at_start
    for conn in [*idle, *busy.values()]:
        conn.sock.close()
    if answered < n:
        errors.append(
            f"{n - answered} of {n} requests unanswered {config['drain']:g} s after the last arrival"
        )
    if errors:
        (directory / f"error-{index}.txt").write_text("\n".join(errors))
    np.savez(
        directory / f"result-{index}.npz",
        latency=latency,
        lag=lag,
        status=status,
        finished=after_last - start,
        cpu=cpu,
        resent=resent,
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        generate(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(__doc__)
