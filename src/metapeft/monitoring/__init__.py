"""Monitoring the selector against what really happened, and the alert that suggests retraining it.

Every ranking the selector gives for a task (``recommend``, ``tune``, ``autotune``, the server, or a client that
posts runs with the prediction they followed) is recorded in the experience store. The finished runs of that task
that follow it are its outcomes, and three rolling figures compare the two:

- **interval coverage**: the share of runs whose accuracy falls inside the 90% interval the ranking gave for their
  method (the offline leave-one-task-out evaluation measured 84–93%);
- **regret**: per prediction whose top method was run beside others, the best run's accuracy minus the top
  method's best run, in points (offline: a mean of 2–3 points);
- **rank agreement**: per prediction with three or more methods run, Spearman's correlation between predicted and
  observed accuracies.

Each figure is taken over its last ``window`` values and compared with a threshold derived from the offline
figures (:class:`Thresholds`); with ``min_matches`` values or more, one past its threshold raises an alert that says
what degraded and suggests ``metapeft retrain``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .._errors import MetapeftError

log = logging.getLogger("metapeft.monitor")

OFFLINE_COVERAGE = (
    0.88  # leave-one-task-out interval coverage of the shipped selector (BENCHMARKS.md, method selection)
)
OFFLINE_REGRET = 2.5  # its leave-one-task-out mean regret, points


@dataclass
class Thresholds:
    """When the rolling figures raise an alert.

    Args:
        coverage_min: Alert below this interval coverage (default: the offline coverage less 0.13, beyond what 50
            runs' sampling error explains, ~0.05).
        regret_max: Alert above this mean regret in points (default: the offline regret plus 2.5).
        rank_agreement_min: Alert below this mean Spearman correlation.
        window: Values each figure is taken over (the most recent).
        min_matches: Values a figure needs before it can alert.
    """

    coverage_min: float = OFFLINE_COVERAGE - 0.13
    regret_max: float = OFFLINE_REGRET + 2.5
    rank_agreement_min: float = 0.0
    window: int = 50
    min_matches: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.coverage_min <= 1:
            raise MetapeftError(f"coverage_min must be within 0..1, got {self.coverage_min}")
        if self.regret_max <= 0 or not -1 <= self.rank_agreement_min <= 1:
            raise MetapeftError(
                f"regret_max > 0 and rank_agreement_min within -1..1 needed, got {self.regret_max} and "
                f"{self.rank_agreement_min}"
            )
        if self.window < 1 or self.min_matches < 1:
            raise MetapeftError(f"window and min_matches must be at least 1, got {self.window} and {self.min_matches}")

    @classmethod
    def for_selector(cls, tags: dict[str, Any], **overrides) -> Thresholds:
        """Thresholds from a registered selector version's own offline figures (its ``metapeft.offline.regret`` and
        ``metapeft.offline.coverage`` tags, which ``retrain`` and the packaged champion carry), the same margins
        as the defaults; a figure the version lacks keeps the default's. ``overrides`` set fields directly."""
        values: dict[str, Any] = {}
        if _number(tags.get("metapeft.offline.regret")) is not None:
            values["regret_max"] = _number(tags["metapeft.offline.regret"]) + 2.5
        if _number(tags.get("metapeft.offline.coverage")) is not None:
            values["coverage_min"] = min(1.0, max(0.0, _number(tags["metapeft.offline.coverage"]) - 0.13))
        return cls(**{**values, **overrides})


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class Figure:
    name: str
    value: float | None
    count: int
    threshold: float
    direction: str  # "min" or "max": which side of the threshold is healthy
    alert: bool = False


@dataclass
class MonitorReport:
    """The rolling figures, their thresholds, and the alerts."""

    predictions: int
    matched_runs: int
    figures: list[Figure]
    alerts: list[str] = field(default_factory=list)
    suggestion: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ranking_record(recommendations) -> list[dict]:
    """What is stored of a ranking: method, rank and the accuracy interval, best first."""
    out = []
    for r in recommendations:
        r = r if isinstance(r, dict) else r.as_dict()
        out.append({"method": r["method"], "rank": r["rank"], "accuracy": r["expected_performance"]["accuracy"]})
    return out


def record_prediction(store, profile: dict, recommendations, source: str, selector: str | None = None) -> str | None:
    """Store a ranking given for ``profile``'s task; a store that cannot be written is warned about, not fatal (a
    recommendation must not fail for want of monitoring)."""
    from .._errors import StoreError

    try:
        return store.add_prediction(
            task_name=profile.get("task_name", "?"),
            task_fingerprint=profile.get("fingerprint", "?"),
            ranking=ranking_record(recommendations),
            source=source,
            selector=selector,
        )
    except StoreError as exc:
        log.warning("the prediction was not recorded for monitoring: %s", exc)
        return None


def monitor(store, thresholds: Thresholds | None = None) -> MonitorReport:
    """Compare the recorded predictions with the finished runs that followed them (module docstring)."""
    thresholds = thresholds or Thresholds()
    predictions = store.predictions()
    runs: dict[str, list] = {}
    for r in store.iter(status="finished"):
        if r.metrics.get("accuracy") is not None:
            runs.setdefault(r.task_fingerprint, []).append(r)
    until_of: dict[str, object] = {}  # a newer prediction for the task takes over its runs: walk newest first
    untils = []
    for p in reversed(predictions):
        untils.append(until_of.get(p["task_fingerprint"]))
        until_of[p["task_fingerprint"]] = p["created_at"]
    hits, regrets, agreements = [], [], []  # (time, value)
    matched = 0
    for p, until in zip(predictions, reversed(untils)):
        outcome = [
            r
            for r in runs.get(p["task_fingerprint"], [])
            if r.created_at >= p["created_at"] and (until is None or r.created_at < until)
        ]
        if not outcome:
            continue
        matched += len(outcome)
        by_method = {e["method"]: e for e in p["ranking"]}
        for r in outcome:
            if (e := by_method.get(r.method)) is not None:
                hits.append(
                    (r.created_at, float(e["accuracy"]["low"] <= r.metrics["accuracy"] <= e["accuracy"]["high"]))
                )
        best = {}
        for r in outcome:
            best[r.method] = max(best.get(r.method, 0.0), r.metrics["accuracy"])
        top = p["ranking"][0]["method"]
        last = max(r.created_at for r in outcome)
        if top in best and len(best) >= 2:
            regrets.append((last, 100 * (max(best.values()) - best[top])))
        shared = [m for m in best if m in by_method]
        if len(shared) >= 3:
            agreements.append(
                (last, _spearman([by_method[m]["accuracy"]["mean"] for m in shared], [best[m] for m in shared]))
            )
    figures = [
        _figure("interval coverage", hits, thresholds.coverage_min, "min", thresholds),
        _figure("regret (points)", regrets, thresholds.regret_max, "max", thresholds),
        _figure("rank agreement (Spearman)", agreements, thresholds.rank_agreement_min, "min", thresholds),
    ]
    alerts = [
        f"{f.name} {f.value:.3g} over the last {f.count} is {'below' if f.direction == 'min' else 'above'} "
        f"its threshold {f.threshold:.3g}"
        for f in figures
        if f.alert
    ]
    suggestion = (
        "selection quality has degraded: run `metapeft retrain` to refit the selector on all experience"
        if alerts
        else None
    )
    return MonitorReport(len(predictions), matched, figures, alerts, suggestion)


def send_alert(report: MonitorReport, webhook: str) -> bool:
    """POST the report as JSON to ``webhook``; True when it answered 2xx (a failure is logged, not raised)."""
    import urllib.request

    if not webhook.startswith(("http://", "https://")):
        raise MetapeftError(f"the webhook must be an http(s) URL, got {webhook!r}")
    body = json.dumps(
        {"text": "metapeft monitor: " + "; ".join(report.alerts), **report.as_dict()}, default=str
    ).encode()
    request = urllib.request.Request(webhook, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return 200 <= response.status < 300
    except OSError as exc:
        log.warning("the alert webhook %s failed: %s", webhook, exc)
        return False


def _figure(name: str, values: list[tuple], threshold: float, direction: str, thresholds: Thresholds) -> Figure:
    recent = [v for _, v in sorted(values, key=lambda x: x[0])][-thresholds.window :]
    if not recent:
        return Figure(name, None, 0, threshold, direction)
    value = float(np.mean(recent))
    bad = value < threshold if direction == "min" else value > threshold
    return Figure(
        name, round(value, 4), len(recent), threshold, direction, bool(bad and len(recent) >= thresholds.min_matches)
    )


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(a)) < 2 or len(set(b)) < 2:
        return 0.0
    return float(spearmanr(a, b).statistic)


__all__ = ["MonitorReport", "Thresholds", "monitor", "ranking_record", "record_prediction", "send_alert"]
