"""`loopml controller` killed with SIGKILL at random moments of a rollout and started again reaches the same end
as one left alone, with no action or event done twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from loopml.clock import FileClock
from loopml.config import write_config
from loopml.delivery.analysis import AnalysisSettings
from loopml.delivery.rollouts import PROMOTED, RolloutSpec, list_rollouts, start_rollout
from loopml.project import Project
from loopml.serving.endpoints import get_endpoint
from loopml.serving.prediction_log import PREDICTION_SCHEMA, PREDICTIONS, append_by_day, record_table
from tests.helpers import SPEC, START, build_world, train_and_deploy

SPEC_STEPS = RolloutSpec(
    steps=(5.0, 25.0, 50.0, 100.0),
    min_step_minutes=10,
    min_step_requests=60,
    analysis_interval_minutes=1,
    analysis=AnalysisSettings(min_requests=60),
)
MINUTES = 60
ACTIONS = {
    f"rollout.{a}" for a in ("started", "advanced", "promoted", "rolled_back", "paused", "running", "aborted")
}


def world(directory: Path) -> tuple[Project, FileClock]:
    """Version 1 serving, version 2 in a canary rollout, an hour of healthy traffic on both already logged."""
    write_config(directory, "crash")
    clock = FileClock(directory / "clock", start=(START + timedelta(days=20)).to_pydatetime())
    project = Project(directory, clock=clock)
    events = build_world(project)
    train_and_deploy(project, events)
    project.registry.register(project.train(SPEC, events.sample(frac=0.7, random_state=1)))
    start = clock.now()
    scores = np.linspace(0.05, 0.95, 20)
    rows = [
        {
            "prediction_id": f"{route}-{i}",
            "ts": start + timedelta(seconds=i * 6),
            "endpoint": "toy",
            "model_name": "toy",
            "model_version": version,
            "route": route,
            "served": True,
            "output": float(scores[i % len(scores)]),
            "latency_seconds": 0.002,
        }
        for route, version in (("primary", 1), ("canary", 2))
        for i in range(MINUTES * 2 * 10)  # two hours: room for the restarts' delays
    ]
    append_by_day(project.offline, PREDICTIONS, record_table(rows, PREDICTION_SCHEMA))
    start_rollout(project, "toy", 2, spec=SPEC_STEPS)
    return project, clock


def controller(directory: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "loopml",
        "controller",
        "--interval",
        "0.05s",
        "--clock-file",
        str(directory / "clock"),
        "-p",
        str(directory),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(directory: Path, kills: int, seed: int, together: int = 1) -> dict[str, object]:
    """Drive the rollout's hour with a controller killed `kills` times (and `together` - 1 more beside it)."""
    project, clock = world(directory)
    rng = random.Random(seed)
    kill_at = set(rng.sample(range(2, MINUTES - 10), kills))
    others = [controller(directory) for _ in range(together - 1)]
    process = controller(directory)
    try:
        for minute in range(MINUTES):
            clock.advance(timedelta(minutes=1))
            time.sleep(0.15)
            if minute in kill_at:
                time.sleep(rng.uniform(0, 0.3))
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
                process = controller(directory)
        deadline = time.monotonic() + 60
        while list_rollouts(project)[0].state != PROMOTED:  # time goes on until the last step is done
            assert time.monotonic() < deadline, f"not promoted: {list_rollouts(project)[0].describe()}"
            clock.advance(timedelta(minutes=1))
            time.sleep(0.15)
    finally:
        for child in [process, *others]:
            child.kill()
            child.wait(10)
    events = project.metadata.events()
    # Actions only: "held" and "analysed" record what a tick saw, which depends on when it looked.
    rollout_events = Counter(e.kind for e in events if e.kind in ACTIONS)
    outcome = {
        "state": [r.state for r in list_rollouts(project)],
        "champion": project.registry.get_alias("toy", "champion"),
        "rollout_events": dict(rollout_events),
        "alias_moves_by_rollout": sum(e.kind == "alias.moved" and e.actor == "controller" for e in events),
        "route_changes": sum(e.kind == "endpoint.deployed" for e in events),
        "routes": sorted(r.name for r in get_endpoint(project.metadata, "toy").routes),
    }
    project.close()
    clock.close()
    return outcome


@pytest.mark.slow
def test_a_controller_killed_at_random_ends_as_one_left_alone(tmp_path: Path) -> None:
    steady = run(tmp_path / "steady", kills=0, seed=0)
    assert steady["state"] == [PROMOTED] and steady["champion"] == 2
    assert steady["rollout_events"] == {"rollout.started": 1, "rollout.advanced": 2, "rollout.promoted": 1}
    for seed in (1, 2):
        killed = run(tmp_path / f"killed-{seed}", kills=6, seed=seed)
        assert killed == steady, f"seed {seed}"


@pytest.mark.slow
def test_controllers_started_together_act_once(tmp_path: Path) -> None:
    steady = run(tmp_path / "one", kills=0, seed=0)
    three = run(tmp_path / "three", kills=0, seed=0, together=3)
    assert three == steady
