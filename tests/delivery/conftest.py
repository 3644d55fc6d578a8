"""An endpoint serving version 1 of 'toy' through 'champion', with version 2 registered beside it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from loopml.project import Project
from tests.helpers import SPEC, START, build_world, train_and_deploy


@pytest.fixture
def candidate(project: Project, clock) -> Project:
    """Endpoint 'toy' serving version 1 through 'champion'; version 2 registered, not served."""
    events = build_world(project)
    train_and_deploy(project, events)
    project.registry.register(project.train(SPEC, events.sample(frac=0.7, random_state=1)))
    clock.set(START + timedelta(days=20))
    return project
