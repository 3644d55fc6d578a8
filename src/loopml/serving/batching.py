"""Adaptive batching: score concurrent requests of one endpoint with one model call.

Off by default and set per endpoint. Requests wait in a queue; a batch is cut when it holds `max_batch_size`
rows or its oldest request has waited `max_wait_seconds`, scored with one call, and the output is split back
per request. A request that could not be scored within `timeout_seconds` gets `BatchTimeoutError`, which the
app answers with HTTP 503, so an overloaded endpoint sheds load instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from loopml.errors import BatcherClosedError, BatchOutputError, BatchTimeoutError, ValidationError
from loopml.serving.scoring import is_number

logger = logging.getLogger(__name__)

Score = Callable[[pd.DataFrame], np.ndarray]


class _Pending:
    """One submitted request: its rows, the future its caller awaits, and when it was submitted."""

    __slots__ = ("frame", "future", "rows", "submitted")

    def __init__(self, frame: pd.DataFrame, future: asyncio.Future[np.ndarray], submitted: float) -> None:
        self.frame = frame
        self.future = future
        self.rows = len(frame)
        self.submitted = submitted


class AdaptiveBatcher:
    """Combines concurrent `submit` calls into batches scored by one call to `score` each.

    `score` takes a DataFrame and returns a 1-D or 2-D array with one row per input row. Every frame of an
    endpoint must have the same columns (the app builds them from the model signature). If `score` raises
    for a batch of several requests, each is scored again alone, so an error reaches only the requests that
    cause it: one bad request costs its batchmates a second model call, never a wrong error.
    `on_batch(n_rows)` is called once per model call (the app observes `loopml_batch_size` with it).
    `monotonic` is the clock for waits and deadlines (seconds); tests inject one that the model advances.

    The batcher belongs to the event loop of its first `submit`; once that loop has stopped (a test client
    that starts a loop per request), it moves to the next one.
    """

    def __init__(
        self,
        score: Score,
        *,
        max_batch_size: int,
        max_wait_seconds: float,
        timeout_seconds: float,
        on_batch: Callable[[int], None] | None = None,
        name: str = "",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_settings(name, max_batch_size, max_wait_seconds, timeout_seconds)
        self.score = score
        self.max_batch_size = max_batch_size
        self.max_wait_seconds = float(max_wait_seconds)
        self.timeout_seconds = float(timeout_seconds)
        self.on_batch = on_batch
        self.name = name
        self._monotonic = monotonic
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, frame: pd.DataFrame) -> np.ndarray:
        """Score the rows of `frame` together with other waiting requests; returns their output rows."""
        if self._closed:
            raise BatcherClosedError(
                f"{self._label()} is closed (the server is shutting down); send the request again."
            )
        loop = asyncio.get_running_loop()
        self._start(loop)
        assert self._wakeup is not None
        pending = _Pending(frame, loop.create_future(), self._monotonic())
        was_empty = not self._queue
        self._queue.append(pending)
        self._queued_rows += pending.rows
        if was_empty or self._queued_rows >= self.max_batch_size:
            self._wakeup.set()
        return await pending.future

    async def close(self) -> None:
        """Stop the worker; requests still waiting get `BatcherClosedError`. Safe to call twice."""
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done() and not worker.get_loop().is_closed():
            worker.cancel()
            if worker.get_loop() is asyncio.get_running_loop():
                await asyncio.wait([worker])
        self._fail_queued()

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not loop:
            if self._loop is not None and self._loop.is_running():
                raise RuntimeError(
                    f"{self._label()} is already used by another running event loop; "
                    "create one batcher per event loop."
                )
            # The old loop has stopped, and with it every caller awaiting a queued request.
            self._queue.clear()
            self._queued_rows = 0
            self._loop, self._wakeup, self._worker = loop, asyncio.Event(), None
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name=f"loopml-batcher-{self.name}")

    async def _run(self) -> None:
        assert self._loop is not None and self._wakeup is not None
        try:
            while True:
                self._expire()
                if not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                if self._queued_rows < self.max_batch_size:
                    delay = self._queue[0].submitted + self.max_wait_seconds - self._monotonic()
                    if delay > 0:
                        # Sleep until the oldest request's wait is over, or until a submit fills the batch.
                        self._wakeup.clear()
                        timer = self._loop.call_later(delay, self._wakeup.set)
                        try:
                            await self._wakeup.wait()
                        finally:
                            timer.cancel()
                        continue
                batch = self._cut()
                if batch:
                    self._score(batch)
                # Let request handlers run (and new requests join the queue) between batches.
                await asyncio.sleep(0)
        finally:
            self._fail_queued()

    def _expire(self) -> None:
        """Drop cancelled requests and fail those past their timeout at the head of the queue.

        Requests are queued in submit order with one timeout, so expired ones are always at the head.
        """
        now = self._monotonic()
        while self._queue:
            head = self._queue[0]
            waited = now - head.submitted
            if not head.future.done() and waited < self.timeout_seconds:
                return
            self._queue.popleft()
            self._queued_rows -= head.rows
            if not head.future.done():
                head.future.set_exception(self._timeout_error(waited))

    def _cut(self) -> list[_Pending]:
        """Take requests in order up to `max_batch_size` rows; a bigger request goes alone."""
        batch: list[_Pending] = []
        rows = 0
        while self._queue:
            head = self._queue[0]
            if batch and rows + head.rows > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_rows -= head.rows
            if head.future.done():  # its caller went away (cancelled): do not score it
                continue
            batch.append(head)
            rows += head.rows
        return batch

    def _score(self, batch: list[_Pending]) -> None:
        """Score a batch and hand each request its rows; if the batch fails, score each request alone."""
        try:
            output = self._call(batch)
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            # One bad request must not fail the others that shared its batch: score each alone, so the error
            # reaches only the requests that cause it (all of them, if the model fails on anything).
            logger.debug(
                "A batch of %d requests for %s failed (%r); scoring them one by one",
                len(batch),
                self._label(),
                exc,
            )
            for pending in batch:
                self._score([pending])
            return
        start = 0
        for pending in batch:
            stop = start + pending.rows
            if not pending.future.done():
                pending.future.set_result(output[start:stop])
            start = stop

    def _call(self, batch: list[_Pending]) -> np.ndarray:
        # Runs inline on the event loop: the models served here are small CPU models, for which a hop to a
        # thread costs more than the call itself, and one call at a time is what batching is for.
        frame = batch[0].frame if len(batch) == 1 else _concat([p.frame for p in batch])
        if self.on_batch is not None:
            self.on_batch(len(frame))
        output = np.asarray(self.score(frame))
        if output.ndim == 0 or len(output) != len(frame):
            raise BatchOutputError(
                f"The model of {self._label()} returned output of shape {output.shape} for {len(frame)} "
                "input rows; it must return one output row per input row."
            )
        return output

    def _fail_queued(self) -> None:
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done() and not pending.future.get_loop().is_closed():
                pending.future.set_exception(
                    BatcherClosedError(
                        f"{self._label()} was closed before this request was scored "
                        "(the server is shutting down); send the request again."
                    )
                )
        self._queued_rows = 0

    def _timeout_error(self, waited: float) -> BatchTimeoutError:
        return BatchTimeoutError(
            f"The request waited {waited * 1000:.0f} ms in the batching queue of {self._label()}, over its wait "
            f"budget of {self.timeout_seconds * 1000:.0f} ms (timeout_seconds); the model cannot keep up. "
            "Raise max_batch_size, lower the load (or add replicas), or turn batching off for this endpoint."
        )

    def _label(self) -> str:
        return f"the batcher of endpoint '{self.name}'" if self.name else "the batcher"


def _check_settings(name: str, max_batch_size: int, max_wait_seconds: float, timeout_seconds: float) -> None:
    where = f"Batching settings of endpoint '{name}'" if name else "Batching settings"
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValidationError(
            f"{where}: max_batch_size must be a whole number of rows >= 1, got {max_batch_size!r}."
        )
    if not is_number(max_wait_seconds) or not (0 <= max_wait_seconds < math.inf):
        raise ValidationError(
            f"{where}: max_wait_seconds must be a finite number of seconds >= 0, got {max_wait_seconds!r}; "
            "use 0 to batch only the requests that arrive together."
        )
    if not is_number(timeout_seconds) or not (timeout_seconds > max_wait_seconds):
        raise ValidationError(
            f"{where}: timeout_seconds ({timeout_seconds!r}) must be greater than max_wait_seconds "
            f"({max_wait_seconds!r}), or every request that waits the full max_wait would time out."
        )


def _concat(frames: list[Any]) -> Any:
    """Requests' inputs as one: frames row-wise, or the matrices a scorer builds for numeric-only models."""
    if isinstance(frames[0], np.ndarray):
        return np.concatenate(frames)
    return pd.concat(frames, ignore_index=True)
