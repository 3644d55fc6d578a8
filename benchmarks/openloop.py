"""Open-loop load: requests arrive on a Poisson schedule that ignores responses; latency counts from the arrival.

Shared by the loopml and the Feast side of the online benchmark, so it imports only the standard library and
numpy (both virtual environments have them). A pool of workers takes the next arrival as soon as it is free and
sleeps until that arrival is due; when every worker is busy, arrivals wait, and the wait is part of their
latency (no coordinated omission). One worker is a single-threaded caller; several are a client with that many
requests in flight.
"""

from __future__ import annotations

import itertools
import json
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

Call = Callable[[int], object]


def run(
    make_call: Callable[[], Call],
    *,
    rate: float,
    duration: float,
    users: int,
    workers: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Send `rate * duration` requests for random users at Poisson arrival times; returns latency figures.

    `make_call` is called once per worker (a connection each); the call it returns gets a user id.
    """
    rng = random.Random(seed)
    n = max(1, round(rate * duration))
    offsets = list(itertools.accumulate(rng.expovariate(rate) for _ in range(n)))
    user_ids = [rng.randrange(users) for _ in range(n)]
    latency = np.full(n, np.nan)
    lag = np.full(n, np.nan)
    failures: list[str] = []
    arrivals = itertools.count()  # next() on a count is atomic under the GIL
    start = time.perf_counter() + 0.1

    def work(call: Call) -> None:
        while (i := next(arrivals)) < n:
            due = start + offsets[i]
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            sent = time.perf_counter()
            try:
                call(user_ids[i])
            except Exception as exc:  # a failed request is reported, never timed as a success
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            latency[i] = time.perf_counter() - due
            lag[i] = sent - due

    calls = [make_call() for _ in range(workers)]
    threads = [threading.Thread(target=work, args=(call,), daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    done = latency[~np.isnan(latency)] * 1000
    return {
        "requests": n,
        "errors": len(failures),
        "first_error": failures[0] if failures else None,
        "target_rate": rate,
        "offered_rate": n / offsets[-1],  # this draw's arrival rate (Poisson: near the target on long runs)
        "achieved_rate": len(done) / elapsed,
        "p50_ms": float(np.percentile(done, 50)),
        "p99_ms": float(np.percentile(done, 99)),
        "p999_ms": float(np.percentile(done, 99.9)),
        "max_ms": float(done.max()),
        "send_lag_p99_ms": float(np.nanpercentile(lag, 99) * 1000),
    }


class JSONPoster:
    """One keep-alive HTTP/1.1 connection that POSTs JSON bodies and returns each raw response body.

    Requests are encoded by hand and responses parsed from their Content-Length, over a plain socket:
    http.client parses headers with the email package, which costs the client more than a fast server
    spends answering, and that cost would be counted as the server's latency.
    """

    def __init__(self, url: str, path: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        self.path = path
        self.sock: socket.socket | None = None
        self.buffer = b""

    def post(self, body: dict[str, Any]) -> bytes:
        return self.send(self.encode(body))

    def encode(self, body: dict[str, Any]) -> bytes:
        """The whole request for `body`, to be sent as is (callers may encode ahead of time)."""
        payload = json.dumps(body).encode()
        return f"{self.head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload

    def send(self, request: bytes) -> bytes:
        try:
            if self.sock is None:
                self.sock = socket.create_connection(self.address, timeout=30)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.buffer = b""
            self.sock.sendall(request)
            status, content = self._response()
        except OSError:
            self.close()  # the next request reconnects
            raise
        if status != 200:
            raise RuntimeError(f"HTTP {status} from {self.path}: {content[:300]!r}")
        return content

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _response(self) -> tuple[int, bytes]:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4 :]
        lines = head.split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        if "content-length" not in headers:
            raise RuntimeError(f"{self.path} answered without a Content-Length: {headers}")
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._fill()
        content, self.buffer = self.buffer[:length], self.buffer[length:]
        if headers.get("connection") == "close":
            self.close()
        return status, content

    def _fill(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError(f"{self.path}: the server closed the connection")
        self.buffer += chunk


def poster_call(url: str, path: str, body_for: Callable[[int], dict[str, Any]]) -> Call:
    """A call POSTing `body_for(user)` on its own connection; each user's request is encoded once."""
    poster = JSONPoster(url, path)
    encoded: dict[int, bytes] = {}

    def call(user: int) -> bytes:
        request = encoded.get(user)
        if request is None:
            request = encoded[user] = poster.encode(body_for(user))
        return poster.send(request)

    return call


def measure(
    system: str, backend: str, mode: str, make_call: Callable[[], Call], args: Any, workers: int
) -> dict[str, Any]:
    """Warm up for `args.warmup` s, then one open-loop run of `args.duration` s at `args.rate`; the row."""
    common = {"rate": args.rate, "users": args.users, "workers": workers}
    run(make_call, duration=args.warmup, seed=1, **common)
    result = run(make_call, duration=args.duration, seed=2, **common)
    assert result["errors"] == 0, (
        f"{system} {backend} {mode}: {result['errors']} errors, {result['first_error']}"
    )
    print(
        f"  {system} {backend} {mode}: p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms",
        flush=True,
    )
    return {"system": system, "backend": backend, "mode": mode, **result}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
