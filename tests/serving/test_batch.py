"""Batch scoring: the server's numbers for the same rows, chunk by chunk, written whole or not at all."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from loopml.errors import NotFoundError, ValidationError
from loopml.project import Project
from loopml.serving.app import create_app
from loopml.serving.batch import batch_score
from tests.helpers import build_world, go_live, train_and_deploy


@pytest.fixture
def toy(project: Project, clock) -> Project:
    train_and_deploy(project, build_world(project))
    go_live(project, clock)
    return project


def rows(n: int = 40, seed: int = 7) -> pd.DataFrame:
    """Model inputs (stored feature risk, request inputs amount and channel) with the entity key."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, 50, n),
            "risk": rng.random(n),
            "amount": rng.lognormal(3, 1, n),
            "channel": rng.choice(["web", "app"], n),
            "event_timestamp": pd.Timestamp("2026-01-05", tz="UTC"),
        }
    )


def write(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


@pytest.fixture
def client(toy: Project) -> Iterator[TestClient]:
    with TestClient(create_app(toy)) as client:
        yield client


def served_outputs(client: TestClient, frame: pd.DataFrame) -> list[float]:
    records = frame[["risk", "amount", "channel"]].to_dict("records")
    response = client.post("/v1/endpoints/toy/predict", json={"records": records})
    assert response.status_code == 200, response.text
    return [p["output"] for p in response.json()["predictions"]]


def test_batch_predictions_equal_the_servers_for_the_same_rows(toy: Project, client, tmp_path) -> None:
    frame = rows()
    out = tmp_path / "out" / "scores.parquet"
    result = batch_score(toy, "toy@champion", write(frame, tmp_path / "in.parquet"), out)

    scored = pd.read_parquet(out)
    assert list(scored.columns) == ["user_id", "prediction", "model_name", "model_version", "scored_at"]
    assert scored.user_id.tolist() == frame.user_id.tolist()
    assert scored.prediction.tolist() == served_outputs(client, frame)  # exactly the same numbers
    assert set(scored.model_name) == {"toy"} and set(scored.model_version) == {1}
    assert set(scored.scored_at) == {toy.clock.now()} == {result.scored_at}
    assert (result.rows, result.chunks, result.model_version, result.output) == (40, 1, 1, out)
    assert result.cache_written == 0 and result.rows_per_second > 0


def test_a_null_stored_feature_scores_as_the_server_scores_a_missing_one(
    toy: Project, client, tmp_path
) -> None:
    frame = pd.DataFrame({"user_id": [999], "risk": [None], "amount": [50.0], "channel": ["web"]})
    out = tmp_path / "scores.parquet"
    batch_score(toy, "toy/1", write(frame.astype({"risk": float}), tmp_path / "in.parquet"), out)
    body = {"entities": {"user_id": 999}, "inputs": {"amount": 50.0, "channel": "web"}}
    answer = client.post("/v1/endpoints/toy/predict", json=body).json()
    assert answer["feature_statuses"] == {"risk": "missing"}
    assert pd.read_parquet(out).prediction.tolist() == [answer["output"]]

    with pytest.raises(ValidationError, match="Input 'risk' is null or NaN in row 0"):
        batch_score(toy, "toy/1", tmp_path / "in.parquet", out, nan_policy="reject")


def test_small_chunks_give_the_result_of_one_chunk(toy: Project, tmp_path) -> None:
    source = write(rows(), tmp_path / "in.parquet")
    whole, chunked = tmp_path / "whole.parquet", tmp_path / "chunked.parquet"
    heard: list[tuple[str, int]] = []

    class Progress:
        def started(self, total_rows: int) -> None:
            heard.append(("started", total_rows))

        def rows_scored(self, rows: int) -> None:
            heard.append(("scored", rows))

        def cache_filling(self) -> None:
            heard.append(("cache", 0))

    batch_score(toy, "toy@champion", source, whole)
    result = batch_score(toy, "toy@champion", source, chunked, chunk_rows=7, progress=Progress())
    assert result.chunks == 6 and result.rows == 40
    assert heard == [("started", 40), *[("scored", 7)] * 5, ("scored", 5)]
    pd.testing.assert_frame_equal(pd.read_parquet(whole), pd.read_parquet(chunked))


def test_a_directory_or_a_glob_of_files_is_one_input(toy: Project, tmp_path) -> None:
    frame = rows()
    single = tmp_path / "single.parquet"
    batch_score(toy, "toy@champion", write(frame, tmp_path / "in.parquet"), single)
    for i, start in enumerate((0, 13, 31)):
        write(frame.iloc[start : (13, 31, 40)[i]], tmp_path / "parts" / f"part-{i}.parquet")
    (tmp_path / "parts" / "notes.txt").write_text("not matched by the glob")

    by_glob = tmp_path / "glob.parquet"
    batch_score(toy, "toy@champion", str(tmp_path / "parts" / "part-*.parquet"), by_glob, chunk_rows=9)
    (tmp_path / "parts" / "notes.txt").unlink()
    by_directory = tmp_path / "directory.parquet"
    batch_score(toy, "toy@champion", tmp_path / "parts", by_directory, chunk_rows=9)
    expected = pd.read_parquet(single)
    pd.testing.assert_frame_equal(pd.read_parquet(by_glob), expected)
    pd.testing.assert_frame_equal(pd.read_parquet(by_directory), expected)

    with pytest.raises(NotFoundError, match="No file matches"):
        batch_score(toy, "toy@champion", str(tmp_path / "parts" / "nope-*.parquet"), by_glob)


def test_missing_model_inputs_are_named_with_what_the_file_has(toy: Project, tmp_path) -> None:
    source = write(rows().drop(columns=["amount", "channel"]), tmp_path / "in.parquet")
    with pytest.raises(ValidationError) as caught:
        batch_score(toy, "toy@champion", source, tmp_path / "out.parquet")
    message = str(caught.value)
    assert "lacks model input(s) ['amount', 'channel'] of toy/1" in message
    assert "it has ['user_id', 'risk', 'event_timestamp']" in message
    assert not (tmp_path / "out.parquet").exists()


def test_a_bad_value_in_a_later_chunk_leaves_no_output(toy: Project, tmp_path) -> None:
    frame = rows()
    frame.loc[25, "amount"] = None  # a request-time input: refused under the 'stored' policy
    source = write(frame, tmp_path / "in.parquet")
    out = tmp_path / "out" / "scores.parquet"
    out.parent.mkdir()
    out.write_bytes(b"the previous run's output")
    with pytest.raises(
        ValidationError, match="'amount' is null or NaN in row 5 of the chunk from input row 20"
    ):
        batch_score(toy, "toy@champion", source, out, chunk_rows=10)
    assert out.read_bytes() == b"the previous run's output"
    assert [p.name for p in out.parent.iterdir()] == ["scores.parquet"]  # no temporary file left

    fresh = tmp_path / "fresh.parquet"
    with pytest.raises(ValidationError):
        batch_score(toy, "toy@champion", source, fresh, chunk_rows=10)
    assert not fresh.exists()


def test_kept_columns_are_passed_through(toy: Project, tmp_path) -> None:
    frame = rows()
    out = tmp_path / "out.parquet"
    batch_score(toy, "toy@champion", write(frame, tmp_path / "in.parquet"), out, keep=["event_timestamp"])
    scored = pd.read_parquet(out)
    assert list(scored.columns)[:3] == ["user_id", "event_timestamp", "prediction"]
    assert scored.event_timestamp.tolist() == frame.event_timestamp.tolist()
    with pytest.raises(ValidationError, match=r"Column\(s\) \['ts'\] to keep are not in"):
        batch_score(toy, "toy@champion", tmp_path / "in.parquet", out, keep=["ts"])


def test_an_empty_input_gives_an_empty_output_with_the_columns(toy: Project, tmp_path) -> None:
    out = tmp_path / "out.parquet"
    result = batch_score(toy, "toy@champion", write(rows().head(0), tmp_path / "in.parquet"), out)
    assert result.rows == 0
    assert pq.read_schema(out).names == ["user_id", "prediction", "model_name", "model_version", "scored_at"]


def test_a_model_with_request_inputs_cannot_fill_the_cache(toy: Project, tmp_path) -> None:
    source = write(rows(), tmp_path / "in.parquet")
    with pytest.raises(ValidationError, match=r"request-time inputs \['amount', 'channel'\]"):
        batch_score(toy, "toy@champion", source, tmp_path / "out.parquet", fill_cache=True)
    assert not (tmp_path / "out.parquet").exists()


def test_bad_arguments_are_refused(toy: Project, tmp_path) -> None:
    source = write(rows(), tmp_path / "in.parquet")
    with pytest.raises(ValidationError, match="chunk_rows must be a positive"):
        batch_score(toy, "toy@champion", source, tmp_path / "o.parquet", chunk_rows=0)
    with pytest.raises(ValidationError, match="nan_policy is 'sometimes'"):
        batch_score(toy, "toy@champion", source, tmp_path / "o.parquet", nan_policy="sometimes")
    with pytest.raises(NotFoundError, match="does not exist"):
        batch_score(toy, "toy@champion", tmp_path / "absent.parquet", tmp_path / "o.parquet")
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(ValidationError, match="not readable as Parquet"):
        batch_score(toy, "toy@champion", tmp_path / "text.parquet", tmp_path / "o.parquet")
