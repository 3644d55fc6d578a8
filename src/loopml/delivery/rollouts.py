"""Rollouts: a candidate version's way from shadow through canary steps to promotion, or back.

A rollout is declared once (`start_rollout`) and stored; every change afterwards is made by `reconcile`, one
tick at a time, from what the store and the logs say now, so a reconciler killed at any point and started
again carries on. Each change of state commits in one transaction with the route or alias change it implies
and the event that explains it (reason and numbers), so nothing is done twice or half done.

    shadow (optional) ──pass──▶ canary 5% ──pass──▶ 25% ──pass──▶ … ──▶ promoted (alias moved)
         │                        │                  │
         └────────── fail ────────┴──── fail ────────┴──▶ rolled_back (candidate route removed)

A step passes when its analysis passes after at least `min_step_minutes` and `min_step_requests` on the
candidate; a failed analysis rolls back at once; an inconclusive one holds (and says so once). An operator can
pause (traffic stays as it is), resume, promote now or abort.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from loopml.delivery.analysis import FAIL, INCONCLUSIVE, PASS, Analysis, AnalysisSettings, Side, analyse
from loopml.delivery.tables import rollouts
from loopml.errors import NotFoundError, ValidationError
from loopml.monitoring.alerts import post_json
from loopml.registry import aliases
from loopml.serving.endpoints import CANARY, PRIMARY, SHADOW, Route, get_endpoint, set_route

if TYPE_CHECKING:
    from loopml.project import Project

RUNNING, PAUSED, PROMOTED, ROLLED_BACK, ABORTED = "running", "paused", "promoted", "rolled_back", "aborted"
ACTIVE = (RUNNING, PAUSED)
SHADOW_PHASE, CANARY_PHASE = "shadow", "canary"
ACTOR = "controller"


@dataclass(frozen=True)
class RolloutSpec:
    """How a candidate goes out: an optional shadow phase, canary steps, and what each step must show."""

    steps: tuple[float, ...] = (5.0, 25.0, 100.0)
    shadow_minutes: float = 0.0
    min_step_minutes: float = 10.0
    min_step_requests: int = 100
    analysis_interval_minutes: float = 1.0
    alias: str = "champion"
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)

    def __post_init__(self) -> None:
        steps = list(self.steps)
        if (
            not steps
            or steps[-1] != 100
            or any(not 0 < s <= 100 for s in steps)
            or steps != sorted(set(steps))
        ):
            raise ValidationError(
                f"Canary steps must rise strictly within (0, 100] and end at 100 (promotion), got {steps}."
            )
        for name in ("shadow_minutes", "min_step_minutes", "analysis_interval_minutes"):
            if getattr(self, name) < 0:
                raise ValidationError(f"{name} must not be negative, got {getattr(self, name)}.")
        if self.analysis_interval_minutes == 0:
            raise ValidationError(
                f"analysis_interval_minutes must be positive, got {self.analysis_interval_minutes}; analyse at "
                "least every few minutes."
            )
        if self.min_step_requests < 1:
            raise ValidationError(f"min_step_requests must be at least 1, got {self.min_step_requests}.")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steps": list(self.steps)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutSpec:
        values = dict(data)
        values["steps"] = tuple(float(s) for s in values.get("steps", cls.steps))
        values["analysis"] = AnalysisSettings.from_dict(values.get("analysis", {}))
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValidationError(
                f"Unknown rollout setting(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}."
            )
        return cls(**values)


@dataclass(frozen=True)
class Rollout:
    id: int
    endpoint: str
    model_name: str
    candidate_version: int
    baseline_version: int
    spec: RolloutSpec
    state: str
    phase: str
    step: int
    step_started_at: datetime
    last_analysis_at: datetime | None
    last_verdict: str | None
    reason: str
    created_at: datetime
    updated_at: datetime

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def candidate_route(self) -> Route | None:
        """The route the candidate has in its current phase (None once the rollout has ended)."""
        if not self.active:
            return None
        if self.phase == SHADOW_PHASE:
            return Route(SHADOW, self.model_name, None, self.candidate_version, SHADOW, 100.0)
        return Route(
            CANARY, self.model_name, None, self.candidate_version, CANARY, self.spec.steps[self.step]
        )

    @property
    def standing(self) -> str:
        """Its state and where its traffic is: "running, canary step 1 of 2 (5%)"."""
        if self.phase == SHADOW_PHASE:
            return f"{self.state}, shadow (100% mirrored)"
        steps = self.spec.steps
        return f"{self.state}, canary step {self.step + 1} of {len(steps) - 1} ({steps[self.step]:g}%)"

    def describe(self) -> str:
        return f"rollout {self.id} of {self.model_name}/{self.candidate_version} on '{self.endpoint}': {self.standing}"


@dataclass(frozen=True)
class Decision:
    """What a reconcile tick did to a rollout, and why."""

    rollout: int
    action: str
    reason: str
    evidence: dict[str, Any]


def start_rollout(
    project: Project,
    endpoint: str,
    candidate_version: int,
    *,
    spec: RolloutSpec | None = None,
    actor: str = "loopml",
    reason: str = "",
) -> Rollout:
    """Declare a rollout of `candidate_version` of the endpoint's model against the version its primary serves."""
    spec = spec or RolloutSpec()
    current = get_endpoint(project.metadata, endpoint)
    primary = current.primary
    if primary.alias != spec.alias:
        raise ValidationError(
            f"Endpoint '{endpoint}' serves {primary.target}; a rollout promotes by moving the alias "
            f"'{spec.alias}', so the primary route must follow it (`loopml deploy {endpoint} "
            f"--model {primary.model_name}@{spec.alias}`)."
        )
    baseline = project.registry.get_alias(primary.model_name, spec.alias)
    project.registry.get_version(primary.model_name, candidate_version)
    if baseline is None or baseline == candidate_version:
        raise ValidationError(
            f"Version {candidate_version} of '{primary.model_name}' is what '{spec.alias}' already serves; roll "
            "out a different version."
        )
    taken = [r.name for r in current.routes if r.name in (CANARY, SHADOW)]
    if taken:
        raise ValidationError(
            f"Endpoint '{endpoint}' already has route(s) {taken}; remove them (`loopml deploy {endpoint} --model "
            f"{primary.model_name}/N --canary 0`) or let their rollout finish."
        )
    now = project.clock.now()
    phase = SHADOW_PHASE if spec.shadow_minutes > 0 else CANARY_PHASE
    with project.metadata.begin() as conn:
        active = _active_for(conn, endpoint)
        if active is not None:
            raise ValidationError(
                f"Endpoint '{endpoint}' already has an active rollout ({active.describe()})."
            )
        values = {
            "endpoint": endpoint,
            "model_name": primary.model_name,
            "candidate_version": candidate_version,
            "baseline_version": baseline,
            "spec": spec.to_dict(),
            "state": RUNNING,
            "phase": phase,
            "step": 0,
            "step_started_at": now,
            "reason": reason or "started",
            "created_at": now,
            "updated_at": now,
        }
        rollout_id = conn.execute(insert(rollouts).values(**values)).inserted_primary_key[0]
        rollout = _rollout({"id": rollout_id, **values, "last_analysis_at": None, "last_verdict": None})
        route = rollout.candidate_route
        assert route is not None
        set_route(
            conn, project.metadata, endpoint, route, actor=actor, reason=f"rollout {rollout_id}: {phase}"
        )
        _event(
            project,
            conn,
            rollout,
            "started",
            reason or f"started: {rollout.describe()}",
            actor,
            spec.to_dict(),
        )
    return rollout


def reconcile(project: Project, rollout: Rollout) -> Decision | None:
    """One tick of one rollout: re-apply its route, analyse when due, advance, promote, hold or roll back."""
    if not rollout.active:
        return None
    now = project.clock.now()
    if rollout.state == PAUSED:
        return None
    interval = timedelta(minutes=rollout.spec.analysis_interval_minutes)
    with project.metadata.begin() as conn:  # a crash between a step and its route left nothing half done,
        if _moved(conn, rollout):  # but an operator may have edited the routes: put ours back, unless the
            return None  # rollout itself moved since it was read
        route = rollout.candidate_route
        assert route is not None
        set_route(
            conn, project.metadata, rollout.endpoint, route, actor=ACTOR, reason=f"rollout {rollout.id}"
        )
    if rollout.last_analysis_at is not None and now - rollout.last_analysis_at < interval:
        return None
    analysis = analyse(
        project.offline,
        rollout.endpoint,
        Side(rollout.model_name, rollout.candidate_version, route.name),
        Side(rollout.model_name, rollout.baseline_version, PRIMARY),
        rollout.step_started_at,
        now,
        labels_until=now,
        settings=rollout.spec.analysis,
    )
    evidence = analysis.to_dict()
    if analysis.verdict == FAIL:
        return _end(project, rollout, ROLLED_BACK, f"analysis failed: {analysis.summary()}", evidence)
    if analysis.verdict == INCONCLUSIVE:
        return _note(project, rollout, INCONCLUSIVE, f"holding: {analysis.summary()}", evidence)
    waited = now - rollout.step_started_at >= timedelta(minutes=rollout.spec.min_step_minutes)
    if not waited or analysis.candidate_requests < rollout.spec.min_step_requests:
        needs = (
            f"{rollout.spec.min_step_minutes:g} min and {rollout.spec.min_step_requests} candidate requests; "
            f"has {(now - rollout.step_started_at).total_seconds() / 60:.1f} min and {analysis.candidate_requests}"
        )
        return _note(project, rollout, PASS, f"passing, step not done: {needs}", evidence)
    return _advance(project, rollout, analysis, evidence)


def notify(url: str, decisions: list[Decision]) -> None:
    """Send a tick's rollout decisions to a webhook as `{"rollouts": [...]}`: a hold (inconclusive), a step,
    a promotion or a rollback, each with its reason and analysis."""
    if decisions:
        post_json(url, {"rollouts": [asdict(d) for d in decisions]})


def tick_rollouts(project: Project) -> list[Decision]:
    """Reconcile every active rollout once."""
    return [d for r in list_rollouts(project, active_only=True) if (d := reconcile(project, r)) is not None]


def pause(project: Project, endpoint: str, *, actor: str = "loopml", reason: str = "") -> Rollout:
    """Hold the active rollout where it is: its traffic split stays, no analysis moves it."""
    rollout = active_rollout(project, endpoint)
    if rollout.state == PAUSED:
        raise ValidationError(f"{rollout.describe()} is already paused.")
    return _set_state(project, rollout, PAUSED, reason or "paused by an operator", actor)


def resume(project: Project, endpoint: str, *, actor: str = "loopml", reason: str = "") -> Rollout:
    rollout = active_rollout(project, endpoint)
    if rollout.state != PAUSED:
        raise ValidationError(f"{rollout.describe()} is not paused.")
    return _set_state(project, rollout, RUNNING, reason or "resumed by an operator", actor)


def promote_now(project: Project, endpoint: str, *, actor: str = "loopml", reason: str = "") -> Decision:
    """Promote the candidate without waiting for the remaining steps."""
    return _operator_end(project, endpoint, PROMOTED, reason or "promoted by an operator", actor)


def abort(project: Project, endpoint: str, *, actor: str = "loopml", reason: str = "") -> Decision:
    """Take the candidate's route away and end the rollout; the baseline keeps serving."""
    return _operator_end(project, endpoint, ABORTED, reason or "aborted by an operator", actor)


def _operator_end(project: Project, endpoint: str, state: str, reason: str, actor: str) -> Decision:
    rollout = active_rollout(project, endpoint)
    decision = _end(project, rollout, state, reason, {}, actor=actor)
    if decision is None:
        raise ValidationError(
            f"{rollout.describe()} changed meanwhile; see `loopml rollout status {endpoint}`."
        )
    return decision


def active_rollout(project: Project, endpoint: str) -> Rollout:
    with project.metadata.begin() as conn:
        found = _active_for(conn, endpoint)
    if found is None:
        raise NotFoundError(f"Endpoint '{endpoint}' has no active rollout; see `loopml rollout status`.")
    return found


def list_rollouts(
    project: Project, *, endpoint: str | None = None, active_only: bool = False
) -> list[Rollout]:
    query = select(rollouts).order_by(rollouts.c.id)
    if endpoint is not None:
        query = query.where(rollouts.c.endpoint == endpoint)
    if active_only:
        query = query.where(rollouts.c.state.in_(ACTIVE))
    with project.metadata.begin() as conn:
        return [_rollout(row._mapping) for row in conn.execute(query)]


def _advance(
    project: Project, rollout: Rollout, analysis: Analysis, evidence: dict[str, Any]
) -> Decision | None:
    if rollout.phase == SHADOW_PHASE:
        following = replace(rollout, phase=CANARY_PHASE, step=0)
    elif rollout.spec.steps[rollout.step + 1] < 100:
        following = replace(rollout, step=rollout.step + 1)
    else:
        return _end(project, rollout, PROMOTED, f"every step passed: {analysis.summary()}", evidence)
    now = project.clock.now()
    reason = f"step passed, now {following.standing}: {analysis.summary()}"
    with project.metadata.begin() as conn:
        if _moved(conn, rollout):
            return None
        if rollout.phase == SHADOW_PHASE:
            shadow = rollout.candidate_route
            assert shadow is not None
            set_route(conn, project.metadata, rollout.endpoint, replace(shadow, weight=0.0), actor=ACTOR)
        route = following.candidate_route
        assert route is not None
        set_route(
            conn, project.metadata, rollout.endpoint, route, actor=ACTOR, reason=f"rollout {rollout.id}"
        )
        values = {"phase": following.phase, "step": following.step, "step_started_at": now}
        _update(conn, rollout, now, last_analysis_at=now, last_verdict=PASS, reason=reason, **values)
        _event(project, conn, rollout, "advanced", reason, ACTOR, evidence)
    return Decision(rollout.id, "advanced", reason, evidence)


def _end(
    project: Project,
    rollout: Rollout,
    state: str,
    reason: str,
    evidence: dict[str, Any],
    *,
    actor: str = ACTOR,
) -> Decision | None:
    """Promote (alias moved to the candidate), roll back or abort; the candidate's route goes either way.
    None when the rollout moved since it was read (an operator or another tick got there first)."""
    now = project.clock.now()
    with project.metadata.begin() as conn:
        if _moved(conn, rollout):
            return None
        route = rollout.candidate_route
        assert route is not None
        set_route(conn, project.metadata, rollout.endpoint, replace(route, weight=0.0), actor=actor)
        if state == PROMOTED:
            aliases.move_alias(
                project.metadata,
                conn,
                rollout.model_name,
                rollout.spec.alias,
                rollout.candidate_version,
                actor=actor,
                reason=f"rollout {rollout.id}: {reason}",
                evidence=evidence,
            )
        _update(conn, rollout, now, state=state, last_analysis_at=now, reason=reason)
        _event(project, conn, rollout, state, reason, actor, evidence)
    return Decision(rollout.id, state, reason, evidence)


def _note(
    project: Project, rollout: Rollout, verdict: str, reason: str, evidence: dict[str, Any]
) -> Decision | None:
    """Record an analysis that changes nothing; an event only when the verdict differs from the last one."""
    now = project.clock.now()
    with project.metadata.begin() as conn:
        if _moved(conn, rollout):
            return None
        _update(conn, rollout, now, last_analysis_at=now, last_verdict=verdict, reason=reason)
        if verdict == rollout.last_verdict:
            return None
        action = "held" if verdict == INCONCLUSIVE else "analysed"
        _event(project, conn, rollout, action, reason, ACTOR, evidence)
    return Decision(rollout.id, action, reason, evidence)


def _set_state(project: Project, rollout: Rollout, state: str, reason: str, actor: str) -> Rollout:
    now = project.clock.now()
    with project.metadata.begin() as conn:
        if _moved(conn, rollout):
            raise ValidationError(
                f"{rollout.describe()} changed meanwhile; look again with `loopml rollout status`."
            )
        _update(conn, rollout, now, state=state, reason=reason, last_analysis_at=None)
        _event(project, conn, rollout, state, reason, actor, {})
        return _read(conn, rollout.id)


def _update(conn: Connection, rollout: Rollout, now: datetime, **values: Any) -> None:
    conn.execute(update(rollouts).where(rollouts.c.id == rollout.id).values(updated_at=now, **values))


def _event(
    project: Project,
    conn: Connection,
    rollout: Rollout,
    action: str,
    reason: str,
    actor: str,
    data: dict[str, Any],
) -> None:
    project.metadata.record_event(
        conn,
        kind=f"rollout.{action}",
        subject=f"endpoint:{rollout.endpoint}",
        actor=actor,
        reason=f"rollout {rollout.id} ({rollout.model_name}/{rollout.candidate_version}): {reason}",
        data={"rollout": rollout.id, "candidate_version": rollout.candidate_version, **data},
    )


def _moved(conn: Connection, rollout: Rollout) -> bool:
    """Whether the stored rollout is no longer in the state, phase and step it was read in."""
    current = _read(conn, rollout.id)
    return (current.state, current.phase, current.step) != (rollout.state, rollout.phase, rollout.step)


def _active_for(conn: Connection, endpoint: str) -> Rollout | None:
    row = conn.execute(
        select(rollouts).where(rollouts.c.endpoint == endpoint, rollouts.c.state.in_(ACTIVE))
    ).first()
    return _rollout(row._mapping) if row is not None else None


def _read(conn: Connection, rollout_id: int) -> Rollout:
    row = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).first()
    if row is None:
        raise NotFoundError(
            f"No rollout {rollout_id}; see `loopml rollout status` for the rollouts there are."
        )
    return _rollout(row._mapping)


def _rollout(row: Any) -> Rollout:
    values = dict(row)
    values["spec"] = RolloutSpec.from_dict(values["spec"])
    return Rollout(**values)
