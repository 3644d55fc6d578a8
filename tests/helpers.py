"""A small labelled world for training, registry, serving and loop tests: users with one feature view."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from loopml.clock import Clock, FileClock
from loopml.config import write_config
from loopml.features import Entity, FeatureView, Field, ParquetSource
from loopml.project import Project
from loopml.registry.models import ModelVersion
from loopml.serving.endpoints import deploy
from loopml.training.pipeline import TrainingSpec

USER = Entity("user", join_keys=["user_id"])
START = pd.Timestamp("2026-01-01", tz="UTC")


def user_view(path: str = "data/users/*.parquet") -> FeatureView:
    return FeatureView(
        "users", [USER], ParquetSource(path, "event_timestamp"), [Field("risk")], ttl=timedelta(days=2)
    )


SPEC = TrainingSpec(
    model_name="toy",
    features=("users:risk",),
    request_features=("amount", "channel"),
    label="is_bad",
    estimator="loopml.demo.model:make_estimator",
    params={"max_iter": 20, "categorical": ["channel"]},
)


def build_world(
    project: Project, n_users: int = 50, days: int = 10, per_day: int = 60, seed: int = 0
) -> pd.DataFrame:
    """Write daily user risk features and return labelled events whose label depends on risk and amount."""
    rng = np.random.default_rng(seed)
    risk = rng.random(n_users)
    features = pd.DataFrame(
        {
            "user_id": np.tile(np.arange(n_users), days + 1),
            "event_timestamp": np.repeat([START + pd.Timedelta(days=d) for d in range(days + 1)], n_users),
            "risk": np.tile(risk, days + 1),
        }
    )
    directory = Path(project.path) / "data" / "users"
    directory.mkdir(parents=True, exist_ok=True)
    features.to_parquet(directory / "part-0.parquet", index=False)
    project.apply([USER, user_view()])
    n = days * per_day
    users = rng.integers(0, n_users, n)
    amount = rng.lognormal(3, 1, n)
    events = pd.DataFrame(
        {
            "user_id": users,
            "event_timestamp": START
            + pd.to_timedelta(np.sort(rng.integers(3600, days * 86_400, n)), unit="s"),
            "amount": amount.round(2),
            "channel": rng.choice(["web", "app"], n),
            "is_bad": (rng.random(n) < 0.05 + 0.5 * risk[users] * (amount > 30)).astype(int),
        }
    )
    return events


def train_and_deploy(project: Project, events: pd.DataFrame, endpoint: str = "toy") -> ModelVersion:
    version = project.registry.register(project.train(SPEC, events))
    project.registry.set_alias(SPEC.model_name, "champion", version.version, reason="test")
    deploy(project.metadata, project.registry, endpoint, SPEC.model_name)
    return version


SERVING_TIME = (START + pd.Timedelta(days=10, hours=1)).to_pydatetime()


def go_live(project: Project, clock: Clock) -> None:
    """Materialise the world's features and move the clock to an hour after them, when serving reads them."""
    project.materialize(end=START + pd.Timedelta(days=10))
    clock.set(SERVING_TIME)


def live_toy_project(path: Path, name: str = "test") -> tuple[Project, FileClock]:
    """A project at `path` serving the toy model on endpoint 'toy', with a file clock `loopml serve` reads."""
    write_config(path, name)
    clock = FileClock(path / "clock", start=START.to_pydatetime())
    project = Project(path, clock=clock)
    train_and_deploy(project, build_world(project))
    go_live(project, clock)
    return project, clock


def serve_events(
    project: Project, clock: Clock, events: pd.DataFrame, amount_factor: float = 1.0
) -> list[str]:
    """Send each event to endpoint 'toy' at its own time (amounts scaled by `amount_factor`), flush the log;
    returns the prediction ids in event order."""
    from fastapi.testclient import TestClient

    from loopml.serving.app import create_app

    ids = []
    with TestClient(create_app(project)) as client:
        for row in events.itertuples(index=False):
            clock.set(row.event_timestamp.to_pydatetime())
            body = {
                "entities": {"user_id": int(row.user_id)},
                "inputs": {"amount": float(row.amount) * amount_factor, "channel": row.channel},
            }
            response = client.post("/v1/endpoints/toy/predict", json=body)
            response.raise_for_status()
            ids.append(response.json()["prediction_id"])
        client.post("/v1/predictions/flush").raise_for_status()
    return ids


def events_between(events: pd.DataFrame, first_day: int, last_day: int) -> pd.DataFrame:
    """The events from day `first_day` (inclusive) to day `last_day` (exclusive) after START."""
    times = events.event_timestamp
    return events[
        (times >= START + pd.Timedelta(days=first_day)) & (times < START + pd.Timedelta(days=last_day))
    ]
