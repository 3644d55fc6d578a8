"""Tiered alerts from monitoring results, de-duplicated, with a cool-down, stored and sent to sinks.

Each condition of a version's newest window (a drifted feature, dataset drift, output drift, a failed
data-quality rule, the model metric fallen below validation) is an alert with a key (endpoint, model, version,
check, feature) and a severity, warning or critical. An alert keeps its row in `monitor_alerts` while it
fires: a new alert, or one that escalates from warning to critical, is sent at once; one that keeps firing is
sent again only after the cool-down; one whose condition is gone is resolved (and that is sent too). Every
change of state is an event (`alert.fired`, `alert.escalated`, `alert.repeated`, `alert.resolved`) with the
numbers behind it. Sinks: the log, a webhook (JSON POST), and Prometheus gauges (`loopml.monitoring.metrics`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
from sqlalchemy import insert, select, update

from loopml.monitoring.drift import CRITICAL, SEVERITY_ORDER, WARNING, FeatureDrift
from loopml.monitoring.monitor import MonitorSettings, WindowResult, newest_windows
from loopml.monitoring.tables import monitor_alerts
from loopml.storage.metadata import MetadataStore

logger = logging.getLogger(__name__)

FIRING, RESOLVED = "firing", "resolved"
FIRED, ESCALATED, REPEATED = "alert.fired", "alert.escalated", "alert.repeated"
RESOLVED_EVENT = "alert.resolved"
DEFAULT_COOLDOWN = timedelta(hours=6)
CRITICAL_RULES = frozenset({"schema", "type", "all_null"})  # data that cannot be scored as trained
WEBHOOK_ATTEMPTS = 3


@dataclass(frozen=True)
class Alert:
    """One condition found in a window."""

    endpoint: str
    model_name: str
    version: int
    check: str
    feature: str
    severity: str
    message: str
    value: float | None
    limit: float | None
    window_start: datetime
    window_end: datetime

    @property
    def key(self) -> str:
        return f"{self.endpoint}/{self.model_name}/{self.version}/{self.check}/{self.feature}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            key=self.key, window_start=self.window_start.isoformat(), window_end=self.window_end.isoformat()
        )
        return data


@dataclass(frozen=True)
class Notification:
    """What a sink receives: the alert and the change of state (fired, escalated, repeated, resolved)."""

    event: str
    alert: Alert
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "at": self.at.isoformat(), **self.alert.to_dict()}


class Sink(Protocol):
    def send(self, notifications: Sequence[Notification]) -> None: ...


class LogSink:
    """Alerts as log records: critical ones at ERROR, the rest at WARNING, resolutions at INFO."""

    def send(self, notifications: Sequence[Notification]) -> None:
        for n in notifications:
            level = (
                logging.INFO
                if n.event == RESOLVED_EVENT
                else logging.ERROR
                if n.alert.severity == CRITICAL
                else logging.WARNING
            )
            logger.log(level, "%s %s %s: %s", n.event, n.alert.severity, n.alert.key, n.alert.message)


class WebhookSink:
    """POSTs `{"alerts": [...]}` as JSON to `url`; retried, and a failure is logged, never raised (monitoring
    goes on and the alert stays recorded)."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout

    def send(self, notifications: Sequence[Notification]) -> None:
        if notifications:
            post_json(self.url, {"alerts": [n.to_dict() for n in notifications]}, timeout=self.timeout)


def post_json(url: str, body: dict[str, Any], *, timeout: float = 5.0) -> bool:
    """POST `body` as JSON, retried a few times; False (and an error logged) when every try failed."""
    with httpx.Client(timeout=timeout) as client:
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            try:
                client.post(url, json=body).raise_for_status()
                return True
            except httpx.HTTPError as exc:
                if attempt == WEBHOOK_ATTEMPTS:
                    logger.error("Webhook %s failed %d times: %s", url, attempt, exc)
                else:
                    time.sleep(0.2 * attempt)
    return False


def alerts_from(result: WindowResult, settings: MonitorSettings) -> list[Alert]:
    """The conditions that fire in one window."""
    found: list[Alert] = []

    def add(
        check: str, feature: str, severity: str, message: str, value: float | None, limit: float | None
    ) -> None:
        found.append(
            Alert(
                result.endpoint,
                result.model_name,
                result.version,
                check,
                feature,
                severity,
                message,
                value,
                limit,
                result.start,
                result.end,
            )
        )

    for drift in result.drift.features:
        if drift.drifted:
            add("drift", drift.feature, drift.severity, _drift_message(drift), *_measured(drift))
    if result.drift.dataset_drift:
        share = result.drift.share
        severity = CRITICAL if result.drift.severity == CRITICAL else WARNING
        message = f"{share:.0%} of features drifted ({', '.join(result.drift.drifted_features)})"
        add("drift_share", "", severity, message, share, result.drift.settings.drift_share)
    output = result.drift.prediction
    if output is not None and output.drifted:
        add("output_drift", output.feature, output.severity, _drift_message(output), *_measured(output))
    for check in result.quality:
        if not check.passed:
            severity = CRITICAL if check.check in CRITICAL_RULES else WARNING
            add(f"quality.{check.check}", check.feature, severity, check.message, check.value, check.limit)
    drop = result.metric_drop
    if drop is not None and drop >= settings.metric_drop_warning:
        severity = CRITICAL if drop >= settings.metric_drop_critical else WARNING
        value = result.performance.metrics.get(result.metric)
        message = f"{result.metric} {value:.3f} is {drop:.3f} below validation ({result.baseline:.3f})"
        add("performance", result.metric, severity, message, value, result.baseline)
    return found


class AlertManager:
    """Keeps alert state in the metadata store and tells the sinks what changed."""

    def __init__(
        self, metadata: MetadataStore, sinks: Iterable[Sink] = (), *, cooldown: timedelta = DEFAULT_COOLDOWN
    ) -> None:
        self.metadata = metadata
        self.sinks = list(sinks)
        self.cooldown = cooldown

    def evaluate(self, results: Sequence[WindowResult], settings: MonitorSettings) -> list[Notification]:
        """Alerts of each version's newest window: fire, escalate, repeat after the cool-down, or resolve."""
        now = self.metadata.clock.now()
        notifications: list[Notification] = []
        for result in newest_windows(results):
            if not result.predictions:
                continue  # an empty window says nothing about what is firing
            current = {alert.key: alert for alert in alerts_from(result, settings)}
            notifications += self._apply(result.endpoint, result.model_name, result.version, current, now)
        for sink in self.sinks:
            sink.send(notifications)
        return notifications

    def firing(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """Alerts firing now, worst first."""
        query = select(monitor_alerts).where(monitor_alerts.c.status == FIRING)
        if endpoint is not None:
            query = query.where(monitor_alerts.c.endpoint == endpoint)
        with self.metadata.begin() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
        return sorted(rows, key=lambda r: (-SEVERITY_ORDER[r["severity"]], r["key"]))

    def _apply(
        self, endpoint: str, model_name: str, version: int, current: dict[str, Alert], now: datetime
    ) -> list[Notification]:
        table = monitor_alerts.c
        sent: list[Notification] = []
        with self.metadata.begin() as conn:
            rows = {
                row.key: row
                for row in conn.execute(
                    select(monitor_alerts).where(
                        table.endpoint == endpoint, table.model_name == model_name, table.version == version
                    )
                )
            }
            for key, alert in current.items():
                row = rows.get(key)
                event = self._event_for(row, alert, now)
                values = {
                    "severity": alert.severity,
                    "status": FIRING,
                    "message": alert.message,
                    "data": alert.to_dict(),
                    "last_seen_at": now,
                    "resolved_at": None,
                }
                if event is not None:
                    values |= {"notified_at": now, "notified_severity": alert.severity}
                if row is None:
                    conn.execute(
                        insert(monitor_alerts).values(
                            key=key,
                            endpoint=endpoint,
                            model_name=model_name,
                            version=version,
                            check_name=alert.check,
                            feature=alert.feature,
                            first_fired_at=now,
                            **values,
                        )
                    )
                else:
                    if row.status == RESOLVED:
                        values["first_fired_at"] = now
                    conn.execute(update(monitor_alerts).where(table.key == key).values(**values))
                if event is not None:
                    self.metadata.record_event(
                        conn, kind=event, subject=f"alert:{key}", reason=alert.message, data=alert.to_dict()
                    )
                    sent.append(Notification(event, alert, now))
            for key, row in rows.items():
                if key in current or row.status != FIRING:
                    continue
                conn.execute(
                    update(monitor_alerts).where(table.key == key).values(status=RESOLVED, resolved_at=now)
                )
                resolved = _alert_from_row(row)
                self.metadata.record_event(
                    conn,
                    kind=RESOLVED_EVENT,
                    subject=f"alert:{key}",
                    reason=f"no longer seen: {row.message}",
                    data=row.data,
                )
                sent.append(Notification(RESOLVED_EVENT, resolved, now))
        return sent

    def _event_for(self, row: Any, alert: Alert, now: datetime) -> str | None:
        """The state change to announce, or None to stay quiet (de-duplicated, in its cool-down)."""
        if row is None or row.notified_at is None:
            return FIRED
        if SEVERITY_ORDER[alert.severity] > SEVERITY_ORDER.get(row.notified_severity or "", -1):
            return ESCALATED
        if now - row.notified_at >= self.cooldown:
            return FIRED if row.status == RESOLVED else REPEATED
        return None


def _alert_from_row(row: Any) -> Alert:
    data = row.data
    return Alert(
        row.endpoint,
        row.model_name,
        row.version,
        row.check_name,
        row.feature,
        row.severity,
        row.message,
        data.get("value"),
        data.get("limit"),
        datetime.fromisoformat(data["window_start"]),
        datetime.fromisoformat(data["window_end"]),
    )


def _drift_message(drift: FeatureDrift) -> str:
    if drift.p_value is not None:
        p = drift.p_adjusted if drift.p_adjusted is not None else drift.p_value
        return f"{drift.method} p={p:.2g} below {drift.warning:g} (critical {drift.critical:g})"
    return f"{drift.method} {drift.statistic:.3g} at or above {drift.warning:g} (critical {drift.critical:g})"


def _measured(drift: FeatureDrift) -> tuple[float | None, float | None]:
    if drift.p_value is not None:
        return (drift.p_adjusted if drift.p_adjusted is not None else drift.p_value), drift.warning
    return drift.statistic, drift.warning
