"""Adaptive batching: requests combined per model call, size cap, max wait, timeout, failures and close."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import numpy as np
import pandas as pd
import pytest

from loopml.errors import NotReadyError, ValidationError
from loopml.serving.batching import (
    AdaptiveBatcher,
    BatcherClosedError,
    BatchOutputError,
    BatchTimeoutError,
)

# Only guards against a hang; no test depends on how fast anything runs.
HANG_GUARD_SECONDS = 30.0


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, HANG_GUARD_SECONDS))


class Model:
    """Doubles column x; records the frame of every call."""

    def __init__(self, columns: int = 1) -> None:
        self.calls: list[pd.DataFrame] = []
        self.columns = columns

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        self.calls.append(frame.copy())
        doubled = frame["x"].to_numpy() * 2.0
        return doubled if self.columns == 1 else np.column_stack([doubled, -doubled])

    @property
    def sizes(self) -> list[int]:
        return [len(call) for call in self.calls]


def frames(sizes: list[int]) -> list[pd.DataFrame]:
    """One frame per size; the x values of all frames together count up from 0 (every row is unique)."""
    out, start = [], 0
    for size in sizes:
        out.append(
            pd.DataFrame({"x": np.arange(start, start + size, dtype=float)}, index=range(100, 100 + size))
        )
        start += size
    return out


async def submit_all(batcher: AdaptiveBatcher, requests: list[pd.DataFrame]) -> list[Any]:
    return await asyncio.gather(*(batcher.submit(f) for f in requests), return_exceptions=True)


def test_concurrent_submits_share_one_model_call_and_get_their_own_rows_back() -> None:
    model, observed = Model(), []
    requests = frames([1, 2, 3, 2])
    batcher = AdaptiveBatcher(
        model, max_batch_size=8, max_wait_seconds=60.0, timeout_seconds=120.0, on_batch=observed.append
    )

    async def main() -> list[Any]:
        try:
            return await submit_all(batcher, requests)
        finally:
            await batcher.close()

    results = run(main())
    assert model.sizes == [8]  # the batch was full, so it did not wait the 60 s
    assert observed == [8]
    pd.testing.assert_frame_equal(model.calls[0], pd.concat(requests, ignore_index=True))
    for request, result in zip(requests, results, strict=True):
        assert isinstance(result, np.ndarray)
        np.testing.assert_array_equal(result, request["x"].to_numpy() * 2.0)


def test_two_dimensional_output_is_split_by_rows() -> None:
    model = Model(columns=2)
    requests = frames([2, 1, 3])
    batcher = AdaptiveBatcher(model, max_batch_size=6, max_wait_seconds=60.0, timeout_seconds=120.0)

    results = run(submit_all(batcher, requests))
    assert model.sizes == [6]
    for request, result in zip(requests, results, strict=True):
        x = request["x"].to_numpy()
        np.testing.assert_array_equal(result, np.column_stack([x * 2.0, -x * 2.0]))


def test_batches_hold_at_most_max_batch_size_rows() -> None:
    model, observed = Model(), []
    requests = frames([3, 3, 3, 3, 3])
    batcher = AdaptiveBatcher(
        model, max_batch_size=7, max_wait_seconds=0.01, timeout_seconds=120.0, on_batch=observed.append
    )

    results = run(submit_all(batcher, requests))
    assert model.sizes == [6, 6, 3]
    assert observed == [6, 6, 3]
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result, request["x"].to_numpy() * 2.0)


def test_request_bigger_than_max_batch_size_is_scored_alone() -> None:
    model = Model()
    requests = frames([2, 10, 2])
    batcher = AdaptiveBatcher(model, max_batch_size=7, max_wait_seconds=0.01, timeout_seconds=120.0)

    results = run(submit_all(batcher, requests))
    assert model.sizes == [2, 10, 2]
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result, request["x"].to_numpy() * 2.0)


def test_max_wait_cuts_a_partial_batch() -> None:
    model = Model()
    first, second, later = frames([1, 1, 1])
    batcher = AdaptiveBatcher(model, max_batch_size=100, max_wait_seconds=0.01, timeout_seconds=120.0)

    async def main() -> list[Any]:
        together = await submit_all(batcher, [first, second])
        alone = await batcher.submit(later)
        return [*together, alone]

    results = run(main())
    assert model.sizes == [2, 1]  # far below 100 rows: only max_wait can have cut these batches
    np.testing.assert_array_equal(np.concatenate(results), [0.0, 2.0, 4.0])


def test_request_waiting_past_its_timeout_gets_batch_timeout_error() -> None:
    now = [0.0]

    def slow_model(frame: pd.DataFrame) -> np.ndarray:
        now[0] += 1.0  # the model takes one (simulated) second
        return frame["x"].to_numpy() * 2.0

    batcher = AdaptiveBatcher(
        slow_model,
        max_batch_size=1,
        max_wait_seconds=0.0,
        timeout_seconds=0.5,
        name="fraud",
        monotonic=lambda: now[0],
    )

    async def main() -> tuple[list[Any], Any]:
        results = await submit_all(batcher, frames([1, 1, 1]))
        after = await batcher.submit(frames([1])[0])
        return results, after

    (scored, late, later), after = run(main())
    np.testing.assert_array_equal(scored, [0.0])
    for error in (late, later):
        assert isinstance(error, BatchTimeoutError)
        assert isinstance(error, NotReadyError)  # the app answers 503
        message = str(error)
        assert "waited 1000 ms" in message
        assert "budget of 500 ms" in message
        assert "'fraud'" in message
        assert "max_batch_size" in message
        assert "batching off" in message
    assert now[0] == 2.0  # the late requests never reached the model; the one after them did
    np.testing.assert_array_equal(after, [0.0])


def test_failing_score_reaches_every_request_of_the_batch() -> None:
    broken, calls = [True], []

    def model(frame: pd.DataFrame) -> np.ndarray:
        calls.append(len(frame))
        if broken[0]:
            raise RuntimeError("model is broken")
        return frame["x"].to_numpy() * 2.0

    requests = frames([2, 1, 1])
    batcher = AdaptiveBatcher(model, max_batch_size=4, max_wait_seconds=60.0, timeout_seconds=120.0)

    async def main() -> tuple[list[Any], list[Any]]:
        failed = await submit_all(batcher, requests)
        broken[0] = False
        return failed, await submit_all(batcher, requests)  # the batcher still works after failures

    failed, after = run(main())
    assert len(failed) == 3
    for error in failed:
        assert isinstance(error, RuntimeError)
        assert str(error) == "model is broken"
    assert calls == [4, 2, 1, 1, 4]  # the failed batch, then each request alone, then the next batch
    np.testing.assert_array_equal(np.concatenate(after), [0.0, 2.0, 4.0, 6.0])


def test_one_bad_request_fails_alone_and_its_batchmates_are_answered() -> None:
    calls = []

    def model(frame: pd.DataFrame) -> np.ndarray:
        calls.append(len(frame))
        if (frame["x"] < 0).any():
            raise ValueError("negative x")
        return frame["x"].to_numpy() * 2.0

    good, bad, other = frames([2, 1, 1])
    bad = bad.assign(x=-1.0)
    batcher = AdaptiveBatcher(model, max_batch_size=4, max_wait_seconds=60.0, timeout_seconds=120.0)

    first, error, last = run(submit_all(batcher, [good, bad, other]))
    assert calls == [4, 2, 1, 1]
    np.testing.assert_array_equal(first, [0.0, 2.0])
    assert isinstance(error, ValueError)
    assert str(error) == "negative x"
    np.testing.assert_array_equal(last, [6.0])


def test_wrong_number_of_output_rows_fails_the_requests() -> None:
    batcher = AdaptiveBatcher(
        lambda frame: np.zeros(len(frame) + 1), max_batch_size=3, max_wait_seconds=60.0, timeout_seconds=120.0
    )

    one_row, two_rows = run(submit_all(batcher, frames([1, 2])))
    assert isinstance(one_row, BatchOutputError)
    assert "shape (2,) for 1 input rows" in str(one_row)
    assert isinstance(two_rows, BatchOutputError)
    assert "shape (3,) for 2 input rows; it must return one output row per input row" in str(two_rows)


def test_close_fails_pending_requests() -> None:
    model = Model()
    batcher = AdaptiveBatcher(model, max_batch_size=100, max_wait_seconds=60.0, timeout_seconds=120.0)

    async def main() -> tuple[list[Any], BaseException | None]:
        tasks = [asyncio.create_task(batcher.submit(f)) for f in frames([1, 2])]
        await asyncio.sleep(0)  # both requests are queued, waiting for a batch to fill
        await batcher.close()
        await batcher.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await batcher.submit(frames([1])[0])
        except BatcherClosedError as exc:
            return results, exc
        return results, None

    results, after_close = run(main())
    assert model.calls == []
    assert len(results) == 2
    for error in results:
        assert isinstance(error, BatcherClosedError)
        assert "closed before this request was scored" in str(error)
    assert isinstance(after_close, BatcherClosedError)


def test_cancelled_requests_are_not_scored() -> None:
    model = Model()
    dropped_first, kept, dropped_between, kept_last = frames([1, 2, 4, 1])
    batcher = AdaptiveBatcher(model, max_batch_size=100, max_wait_seconds=0.01, timeout_seconds=120.0)

    async def main() -> list[Any]:
        tasks = [
            asyncio.create_task(batcher.submit(f)) for f in (dropped_first, kept, dropped_between, kept_last)
        ]
        await asyncio.sleep(0)  # all four are queued
        tasks[0].cancel()  # its caller went away (the client disconnected)
        tasks[2].cancel()
        return await asyncio.gather(tasks[1], tasks[3])

    results = run(main())
    assert model.sizes == [3]
    np.testing.assert_array_equal(np.concatenate(results), [2.0, 4.0, 14.0])


def test_batcher_moves_to_a_new_event_loop() -> None:
    model = Model()
    batcher = AdaptiveBatcher(model, max_batch_size=2, max_wait_seconds=60.0, timeout_seconds=120.0)

    first = run(submit_all(batcher, frames([1, 1])))
    second = run(submit_all(batcher, frames([1, 1])))
    assert model.sizes == [2, 2]
    np.testing.assert_array_equal(np.concatenate(first + second), [0.0, 2.0, 0.0, 2.0])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be a whole number of rows >= 1, got 0"),
        ({"max_batch_size": 2.5}, "max_batch_size must be a whole number of rows >= 1, got 2.5"),
        ({"max_wait_seconds": -0.001}, "max_wait_seconds must be a finite number of seconds >= 0"),
        ({"max_wait_seconds": float("nan")}, "max_wait_seconds must be a finite number of seconds >= 0"),
        (
            {"timeout_seconds": 0.01},
            r"timeout_seconds \(0.01\) must be greater than max_wait_seconds \(0.01\)",
        ),
        ({"timeout_seconds": 0.0}, r"timeout_seconds \(0.0\) must be greater than max_wait_seconds"),
    ],
)
def test_invalid_settings_raise_validation_error(settings: dict[str, Any], message: str) -> None:
    arguments = {"max_batch_size": 8, "max_wait_seconds": 0.01, "timeout_seconds": 1.0, **settings}
    with pytest.raises(ValidationError, match=f"endpoint 'fraud': {message}"):
        AdaptiveBatcher(Model(), name="fraud", **arguments)
