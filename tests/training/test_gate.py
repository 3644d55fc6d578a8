"""The evaluation gate: thresholds on value and on change, directions, slices, data counts, serialisation."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pandas as pd
import pytest

from loopml.errors import ValidationError
from loopml.project import Project
from loopml.training.gate import GateCheck, GateResult, evaluate_candidate
from loopml.training.gate_policy import GatePolicy, MetricThreshold, metric_values
from tests.helpers import SPEC, build_world


def labelled(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels with a strong and a weak model's scores on the same rows."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.15).astype(float)
    strong = np.clip(0.25 + 0.40 * y + rng.normal(0, 0.2, n), 0.001, 0.999)
    weak = np.clip(0.25 + 0.12 * y + rng.normal(0, 0.2, n), 0.001, 0.999)
    return y, strong, weak


def gate(*thresholds: MetricThreshold, **options) -> GatePolicy:
    return GatePolicy(list(thresholds), **options)


def only(result: GateResult, kind: str, scope: str = "overall", metric: str | None = None) -> GateCheck:
    [check] = [
        c
        for c in result.checks
        if c.kind == kind and c.scope == scope and (metric is None or c.metric == metric)
    ]
    return check


def test_a_worse_candidate_is_blocked_and_the_reason_carries_the_numbers() -> None:
    y, strong, weak = labelled()
    result = evaluate_candidate(gate(MetricThreshold("roc_auc", min_absolute_change=0.0)), y, weak, strong)

    check = only(result, "min_absolute_change")
    assert not result.passed and check.status == "failed" and result.failures == (check,)
    assert result.candidate == pytest.approx(metric_values(y, weak, ["roc_auc"])["roc_auc"])
    assert result.champion == pytest.approx(metric_values(y, strong, ["roc_auc"])["roc_auc"])
    assert check.delta == pytest.approx(result.candidate - result.champion) and check.delta < -0.05
    assert check.relative_delta == pytest.approx(check.delta / result.champion)
    assert (check.n_rows, check.n_positive) == (len(y), int(y.sum())) == (result.n_rows, result.n_positive)
    assert result.reason == (
        f"roc_auc {result.candidate:.4f} is {-check.delta:.4f} worse than champion {result.champion:.4f} "
        "(needs a gain >= +0.0000)"
    )


def test_a_better_candidate_passes_and_says_by_how_much() -> None:
    y, strong, weak = labelled()
    result = evaluate_candidate(gate(MetricThreshold("roc_auc", min_absolute_change=0.05)), y, strong, weak)

    check = only(result, "min_absolute_change")
    assert result.passed and check.passed and check.delta >= 0.05
    assert result.reason.startswith(
        f"roc_auc {result.candidate:.4f} beats champion {result.champion:.4f} by {check.delta:.4f}"
    )
    # the same models the other way round, or a margin larger than the gain, do not pass
    assert not evaluate_candidate(
        gate(MetricThreshold("roc_auc", min_absolute_change=0.0)), y, weak, strong
    ).passed
    too_much = MetricThreshold("roc_auc", min_absolute_change=check.delta + 0.001)
    assert not evaluate_candidate(gate(too_much), y, strong, weak).passed


def test_identical_scores_pass_a_zero_margin_and_fail_a_positive_one() -> None:
    y, strong, _ = labelled()
    tie = evaluate_candidate(gate(MetricThreshold("roc_auc", min_absolute_change=0.0)), y, strong, strong)
    assert tie.passed and only(tie, "min_absolute_change").delta == 0
    assert "equals champion" in tie.reason
    assert not evaluate_candidate(
        gate(MetricThreshold("roc_auc", min_absolute_change=0.001)), y, strong, strong
    ).passed


@pytest.mark.parametrize("metric", ["log_loss", "brier_score"])
def test_lower_is_better_metrics_count_a_drop_as_a_gain(metric: str) -> None:
    y, strong, weak = labelled()
    threshold = MetricThreshold(metric, min_absolute_change=0.0)
    assert threshold.greater_is_better is False

    better = evaluate_candidate(gate(threshold), y, strong, weak)
    check = only(better, "min_absolute_change")
    assert better.passed and better.candidate < better.champion
    assert check.delta == pytest.approx(better.champion - better.candidate) and check.delta > 0
    assert "beats champion" in better.reason

    worse = evaluate_candidate(gate(threshold), y, weak, strong)
    assert not worse.passed and "worse than champion" in worse.reason
    assert only(worse, "min_absolute_change").delta < 0


def test_absolute_and_relative_change_are_different_yardsticks() -> None:
    y, strong, weak = labelled()
    values = metric_values(y, strong, ["roc_auc"])["roc_auc"], metric_values(y, weak, ["roc_auc"])["roc_auc"]
    gain = values[0] - values[1]
    relative = gain / values[1]
    assert relative > gain  # the champion's AUC is below 1, so the same gain is a larger fraction

    def passes(**change) -> bool:
        return evaluate_candidate(gate(MetricThreshold("roc_auc", **change)), y, strong, weak).passed

    assert passes(min_absolute_change=gain - 0.001) and not passes(min_absolute_change=gain + 0.001)
    assert passes(min_relative_change=relative - 0.001) and not passes(min_relative_change=relative + 0.001)
    # a margin between the two: met as a fraction of the champion, not in AUC points
    between = (gain + relative) / 2
    assert passes(min_relative_change=between) and not passes(min_absolute_change=between)

    result = evaluate_candidate(gate(MetricThreshold("roc_auc", min_relative_change=0.5)), y, strong, weak)
    check = only(result, "min_relative_change")
    assert check.relative_delta == pytest.approx(relative) and check.threshold == 0.5
    assert f"by {relative:.2%}" in check.detail and "(needs a gain >= +50.00%)" in check.detail


def test_a_negative_change_allows_a_bounded_regression() -> None:
    y, strong, _ = labelled()
    rng = np.random.default_rng(1)
    slightly_worse = np.clip(strong + rng.normal(0, 0.05, len(y)), 0.001, 0.999)
    loss = (
        metric_values(y, strong, ["roc_auc"])["roc_auc"]
        - metric_values(y, slightly_worse, ["roc_auc"])["roc_auc"]
    )
    assert 0 < loss < 0.02

    allowed = evaluate_candidate(
        gate(MetricThreshold("roc_auc", min_absolute_change=-0.02)), y, slightly_worse, strong
    )
    assert allowed.passed and only(allowed, "min_absolute_change").delta == pytest.approx(-loss)
    assert (
        f"is {loss:.4f} worse than champion" in allowed.reason
        and "(needs a gain >= -0.0200)" in allowed.reason
    )
    assert evaluate_candidate(
        gate(MetricThreshold("roc_auc", min_relative_change=-0.05)), y, slightly_worse, strong
    ).passed
    assert not evaluate_candidate(
        gate(MetricThreshold("roc_auc", min_absolute_change=-loss / 2)), y, slightly_worse, strong
    ).passed


def test_value_thresholds_bound_the_candidate_whatever_the_champion() -> None:
    y, strong, weak = labelled()
    auc = metric_values(y, strong, ["roc_auc", "log_loss"])
    within = gate(
        MetricThreshold("roc_auc", min_value=auc["roc_auc"] - 0.01, max_value=1.0),
        MetricThreshold("log_loss", max_value=auc["log_loss"] + 0.01),
    )
    assert evaluate_candidate(within, y, strong, weak).passed

    high_bar = gate(MetricThreshold("roc_auc", min_value=0.99))
    result = evaluate_candidate(high_bar, y, strong, weak)
    check = only(result, "min_value")
    assert not result.passed and check.candidate == pytest.approx(auc["roc_auc"]) and check.threshold == 0.99
    assert result.reason == f"roc_auc {auc['roc_auc']:.4f} is below the minimum 0.9900"

    low_ceiling = evaluate_candidate(gate(MetricThreshold("log_loss", max_value=0.05)), y, strong, weak)
    assert not low_ceiling.passed
    assert low_ceiling.reason == f"log_loss {auc['log_loss']:.4f} is above the maximum 0.0500"


def test_without_a_champion_change_thresholds_are_skipped_and_value_thresholds_still_apply() -> None:
    y, strong, weak = labelled()
    policy = gate(MetricThreshold("roc_auc", min_value=0.75, min_absolute_change=0.01))

    first = evaluate_candidate(policy, y, strong)
    change = only(first, "min_absolute_change")
    assert first.passed and first.champion is None
    assert change.status == "skipped" and change.delta is None and "no champion" in change.detail
    assert only(first, "min_value").passed
    assert first.reason.startswith("no champion: change thresholds skipped; roc_auc")

    weak_first = evaluate_candidate(policy, y, weak)
    assert not weak_first.passed and "is below the minimum 0.7500" in weak_first.reason


def channel_world(n: int = 6000, seed: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """A candidate better on web (80 % of rows), much worse on app (20 %); a few 'pos' rows, none positive."""
    y, strong, weak = labelled(n, seed)
    rng = np.random.default_rng(seed + 100)  # not the labels' stream, or channel would predict the label
    channel = np.where(rng.random(n) < 0.8, "web", "app")
    channel[:30] = "pos"
    y[:30] = 0.0
    candidate = np.where(channel == "app", weak, strong)
    champion = np.where(channel == "app", strong, weak)
    return y, candidate, champion, pd.DataFrame({"channel": channel, "region": "eu"})


def test_a_slice_that_got_worse_blocks_a_candidate_that_wins_overall() -> None:
    y, candidate, champion, frame = channel_world()
    threshold = MetricThreshold("roc_auc", min_absolute_change=0.0)
    assert evaluate_candidate(gate(threshold), y, candidate, champion).passed

    result = evaluate_candidate(gate(threshold, slices=["channel", "region"]), y, candidate, champion, frame)
    app, web = (
        only(result, "min_absolute_change", "channel=app"),
        only(result, "min_absolute_change", "channel=web"),
    )
    assert not result.passed and only(result, "min_absolute_change").passed
    assert app.status == "failed" and app.delta < -0.05 and web.passed
    assert app.n_rows == int((frame.channel == "app").sum()) and app.n_positive == int(
        y[frame.channel == "app"].sum()
    )
    assert result.reason.startswith(
        f"slice channel=app: roc_auc {app.candidate:.4f} is {-app.delta:.4f} worse"
    )
    assert only(result, "min_absolute_change", "region=eu").passed  # one value: the whole set again
    assert [c.scope for c in result.checks if c.kind == "min_absolute_change"] == [
        "overall",
        "channel=app",
        "channel=web",
        "region=eu",
    ]


def test_slices_may_have_their_own_thresholds() -> None:
    y, candidate, champion, frame = channel_world()
    lenient = GatePolicy(
        [MetricThreshold("roc_auc", min_absolute_change=0.0)],
        slices=["channel"],
        slice_thresholds=[MetricThreshold("roc_auc", min_value=0.5)],
    )
    result = evaluate_candidate(lenient, y, candidate, champion, frame)
    assert result.passed
    assert {c.kind for c in result.checks if c.scope == "channel=app"} == {"min_value"}


def test_small_and_single_class_slices_are_skipped_not_failed() -> None:
    y, candidate, champion, frame = channel_world()
    threshold = MetricThreshold("roc_auc", min_absolute_change=-1.0)
    small = evaluate_candidate(gate(threshold, slices=["channel"]), y, candidate, champion, frame)
    pos = [c for c in small.checks if c.scope == "channel=pos"]
    assert small.passed and len(pos) == 1
    assert pos[0].status == "skipped" and pos[0].detail == "skipped: too few rows (30 < 50)"
    assert pos[0].n_rows == 30 and pos[0].candidate == 30

    # with a lower bar the slice is judged, but its AUC is undefined (no positives): skipped, with why
    tiny_bar = gate(threshold, slices=["channel"], min_slice_rows=10)
    judged = only(
        evaluate_candidate(tiny_bar, y, candidate, champion, frame), "min_absolute_change", "channel=pos"
    )
    assert judged.status == "skipped" and judged.candidate is None and "undefined" in judged.detail
    assert evaluate_candidate(tiny_bar, y, candidate, champion, frame).passed


def test_too_little_data_fails_with_the_counts() -> None:
    y, strong, weak = labelled(150)
    result = evaluate_candidate(gate(MetricThreshold("roc_auc", min_absolute_change=0.0)), y, strong, weak)
    positives = int(y.sum())
    assert not result.passed and only(result, "min_rows").status == "failed"
    assert result.reason == (
        f"not enough labelled data: 150 rows with {positives} positives (needs 200 rows and 10 positives)"
    )
    # the metric checks are still there, with their numbers, for the record
    assert only(result, "min_absolute_change").candidate is not None

    few_positives = np.zeros(500)
    few_positives[:5] = 1
    scores = np.linspace(0.01, 0.99, 500)
    short = evaluate_candidate(gate(MetricThreshold("roc_auc", min_value=0.5)), few_positives, scores, scores)
    assert not short.passed and only(short, "min_positive").status == "failed"
    assert "500 rows with 5 positives" in short.reason


def test_relative_change_against_a_zero_champion_is_judged_by_its_sign() -> None:
    y, strong, _ = labelled()
    silent = np.full(len(y), 0.1)  # never crosses 0.5: recall 0
    assert metric_values(y, silent, ["recall"])["recall"] == 0
    policy = gate(MetricThreshold("recall", min_relative_change=0.2))

    result = evaluate_candidate(policy, y, strong, silent)
    check = only(result, "min_relative_change")
    assert result.passed and check.relative_delta is None and check.delta > 0
    assert "zero champion" in check.detail
    assert not evaluate_candidate(policy, y, silent, silent).passed
    assert evaluate_candidate(
        gate(MetricThreshold("recall", min_relative_change=0.0)), y, silent, silent
    ).passed


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: MetricThreshold("auc", min_value=0.7), "Unknown gate metric 'auc'; known metrics: accuracy"),
        (lambda: MetricThreshold("roc_auc"), "sets no condition; give min_value, max_value"),
        (
            lambda: MetricThreshold("roc_auc", min_value=0.9, max_value=0.8),
            "min_value 0.9 is above max_value 0.8",
        ),
        (lambda: MetricThreshold("roc_auc", min_relative_change=5), "0.05 means 5 % better"),
        (
            lambda: MetricThreshold("log_loss", max_value=1, greater_is_better=True),
            "log_loss is lower-is-better",
        ),
        (lambda: MetricThreshold("roc_auc", min_value=float("nan")), "min_value must be a finite number"),
        (lambda: MetricThreshold("roc_auc", min_value="0.7"), "must be a finite number, got '0.7'"),
        (lambda: GatePolicy([]), "at least one MetricThreshold"),
        (lambda: GatePolicy(["roc_auc"]), "must hold MetricThreshold objects"),
        (
            lambda: gate(MetricThreshold("roc_auc", min_value=0.5), min_rows=0),
            "min_rows must be an integer >= 1",
        ),
        (
            lambda: gate(MetricThreshold("roc_auc", min_value=0.5), slices="channel"),
            "got the string 'channel'",
        ),
        (lambda: gate(MetricThreshold("roc_auc", min_value=0.5), slices=["a", "a"]), "Slice columns repeat"),
        (
            lambda: gate(
                MetricThreshold("roc_auc", min_value=0.5),
                slice_thresholds=[MetricThreshold("f1", min_value=0)],
            ),
            "slice_thresholds is set but slices is empty",
        ),
        (
            lambda: GatePolicy.from_dict({"thresholds": [], "min_row": 5}),
            "Unknown GatePolicy keys ['min_row']",
        ),
        (lambda: MetricThreshold.from_dict({"metric": "f1", "minimum": 0.5}), "Unknown MetricThreshold keys"),
    ],
)
def test_invalid_policies_say_what_is_wrong(build, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        build()
    assert message in str(info.value)


def test_bad_evaluation_inputs_are_refused() -> None:
    y, strong, weak = labelled(400)
    policy = gate(MetricThreshold("roc_auc", min_value=0.5), slices=["channel"])
    frame = pd.DataFrame({"channel": ["web"] * 400})
    with pytest.raises(ValidationError, match="pass slice_frame with those columns"):
        evaluate_candidate(policy, y, strong, weak)
    with pytest.raises(ValidationError, match=r"lacks slice columns \['channel'\]"):
        evaluate_candidate(policy, y, strong, weak, frame.rename(columns={"channel": "c"}))
    with pytest.raises(ValidationError, match="slice_frame has 399 rows for 400 labels"):
        evaluate_candidate(policy, y, strong, weak, frame.iloc[1:])
    with pytest.raises(ValidationError, match="champion_scores has 399 values for 400 labels"):
        evaluate_candidate(policy, y, strong, weak[1:], frame)
    with pytest.raises(ValidationError, match=r"must hold 0/1, found \[2.0\]"):
        evaluate_candidate(policy, np.where(y == 1, 2, 0), strong, weak, frame)
    with pytest.raises(ValidationError, match="1 missing or infinite scores"):
        evaluate_candidate(policy, y, np.r_[np.nan, strong[1:]], weak, frame)


def test_policy_and_result_round_trip_as_plain_json() -> None:
    y, candidate, champion, frame = channel_world()
    policy = GatePolicy(
        [
            MetricThreshold("roc_auc", min_value=0.6, min_absolute_change=-0.01),
            MetricThreshold("log_loss", min_relative_change=0.0),
        ],
        slices=["channel"],
        slice_thresholds=[MetricThreshold("average_precision", min_absolute_change=-0.05)],
        min_rows=100,
        min_positive=5,
        min_slice_rows=10,
    )
    assert GatePolicy.from_dict(orjson.loads(orjson.dumps(policy.to_dict()))) == policy
    assert policy.to_dict()["thresholds"][1]["greater_is_better"] is False  # the direction is stored

    result = evaluate_candidate(policy, y, candidate, champion, frame)
    stored = result.to_dict()
    # strict JSON: the undefined metric of the 'pos' slice (no positives) is None, never NaN
    assert json.loads(json.dumps(stored, allow_nan=False)) == stored
    assert orjson.loads(orjson.dumps(stored)) == stored
    assert stored["policy"] == policy.to_dict()
    assert stored["counts"] == {
        status: sum(c.status == status for c in result.checks) for status in ("passed", "failed", "skipped")
    }
    pos = next(c for c in stored["checks"] if c["scope"] == "channel=pos" and c["kind"] != "min_rows")
    assert pos["candidate"] is None and pos["status"] == "skipped"
    assert GateResult.from_dict(orjson.loads(orjson.dumps(stored))) == result


def test_a_stored_result_of_the_first_gate_still_reads() -> None:
    legacy = {
        "passed": True,
        "metric": "roc_auc",
        "candidate": 0.84,
        "champion": 0.81,
        "min_delta": 0.02,
        "n_rows": 900,
        "n_positive": 60,
        "reason": "candidate roc_auc=0.8400 beats champion 0.8100 by +0.0300",
    }
    result = GateResult.from_dict(legacy)
    assert result.passed and result.checks == () and (result.candidate, result.champion) == (0.84, 0.81)


def test_the_gate_is_stored_on_the_version_and_in_the_events(any_project: Project) -> None:
    events = build_world(any_project)
    version = any_project.registry.register(any_project.train(SPEC, events))
    y, candidate, champion, frame = channel_world()
    policy = gate(MetricThreshold("roc_auc", min_absolute_change=0.0), slices=["channel"])
    result = evaluate_candidate(policy, y, candidate, champion, frame)
    assert not result.passed

    any_project.registry.record_gate(SPEC.model_name, version.version, result.to_dict(), actor="ci")

    stored = any_project.registry.get_version(SPEC.model_name, version.version).gate
    assert stored == result.to_dict()
    assert GateResult.from_dict(stored) == result
    [event] = [
        e
        for e in any_project.metadata.events(subject_prefix=f"model:{SPEC.model_name}/")
        if e.kind.startswith("gate.")
    ]
    assert (event.kind, event.actor, event.subject) == ("gate.failed", "ci", f"model:toy/{version.version}")
    assert event.reason == result.reason and event.reason.startswith("slice channel=app: roc_auc")
    app = next(
        c for c in event.data["checks"] if c["scope"] == "channel=app" and c["kind"] == "min_absolute_change"
    )
    assert app["status"] == "failed" and app["delta"] == pytest.approx(
        only(result, "min_absolute_change", "channel=app").delta
    )
    assert (event.data["candidate"], event.data["champion"]) == (result.candidate, result.champion)
