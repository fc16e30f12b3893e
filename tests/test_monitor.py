"""Monitoring: predictions against the runs that follow; the alert fires on degradation and stays quiet otherwise."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from conftest import run_cli

from metapeft.experience import Experience, ExperienceStore
from metapeft.monitoring import Thresholds, monitor, record_prediction


def _ranking(methods: list[str], means: list[float], half: float = 0.03) -> list[dict]:
    return [
        {
            "method": m,
            "rank": i + 1,
            "expected_performance": {"accuracy": {"mean": a, "low": a - half, "high": a + half}},
        }
        for i, (m, a) in enumerate(zip(methods, means))
    ]


def _run(task: str, fingerprint: str, method: str, accuracy: float) -> Experience:
    return Experience(
        task_name=task,
        task_fingerprint=fingerprint,
        method=method,
        model="m",
        hyperparameters={},
        metrics={"accuracy": accuracy},
        status="finished",
    )


def test_an_injected_degradation_raises_the_alert_with_a_retrain_suggestion_and_the_webhook(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = ExperienceStore(url)
    methods = ["lora", "ia3", "prefix_tuning"]
    for t in range(
        12
    ):  # the selector promised lora ~0.85; every time it came last by 20 points, outside every interval
        fp = f"fp{t}"
        record_prediction(
            store, {"task_name": f"t{t}", "fingerprint": fp}, _ranking(methods, [0.85, 0.80, 0.75]), source="recommend"
        )
        store.add_many(
            [_run(f"t{t}", fp, "lora", 0.55), _run(f"t{t}", fp, "ia3", 0.75), _run(f"t{t}", fp, "prefix_tuning", 0.70)]
        )
    report = monitor(store)
    assert report.predictions == 12 and report.matched_runs == 36
    figures = {f.name: f for f in report.figures}
    assert figures["interval coverage"].value == 0.0 and figures["interval coverage"].alert
    assert abs(figures["regret (points)"].value - 20.0) < 1e-6 and figures["regret (points)"].alert
    assert figures["rank agreement (Spearman)"].value == -0.5 and figures["rank agreement (Spearman)"].alert
    assert "metapeft retrain" in report.suggestion

    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = run_cli("monitor", "--json", "--store", url, "--webhook", f"http://127.0.0.1:{server.server_port}/hook")
    finally:
        server.shutdown()
    assert proc.returncode == 3, proc.stderr
    assert len(json.loads(proc.stdout)["alerts"]) == 3 and "run `metapeft retrain`" in proc.stderr
    assert received and "interval coverage" in received[0]["text"]


def test_too_few_outcomes_do_not_alert_and_a_newer_prediction_takes_over(tmp_path):
    store = ExperienceStore(f"sqlite:///{tmp_path / 's.db'}")
    record_prediction(
        store, {"task_name": "t", "fingerprint": "fp"}, _ranking(["lora", "ia3"], [0.9, 0.5]), source="recommend"
    )
    store.add(_run("t", "fp", "lora", 0.5))
    record_prediction(
        store, {"task_name": "t", "fingerprint": "fp"}, _ranking(["ia3", "lora"], [0.52, 0.5]), source="recommend"
    )
    store.add(_run("t", "fp", "ia3", 0.51))
    report = monitor(store, Thresholds(min_matches=10))
    coverage = report.figures[0]
    assert coverage.count == 2 and coverage.value == 0.5 and not coverage.alert and not report.alerts
    proc = run_cli("monitor", "--store", f"sqlite:///{tmp_path / 's.db'}")
    assert proc.returncode == 0 and "too few" in proc.stdout


def test_the_prior_own_runs_keep_the_monitor_quiet(tmp_path):
    """The shipped selector's rankings for prior task instances, followed by those instances' real runs."""
    from metapeft.meta import MetaPEFT
    from metapeft.prior import PriorExperience

    store = ExperienceStore(f"sqlite:///{tmp_path / 's.db'}")
    meta = MetaPEFT(store, include_own=False).fit()
    by_task: dict[str, list] = {}
    for r in PriorExperience().records():
        if r.status == "finished" and r.profile and r.hyperparameters.get("max_steps") == 80:
            by_task.setdefault(r.task_name, []).append(r)
    for name in sorted(by_task)[::4]:  # every fourth task instance: 20-odd predictions, a few hundred runs
        runs = by_task[name]
        record_prediction(store, runs[0].profile, meta.recommend(runs[0].profile), source="recommend")
        store.add_many([_run(name, r.task_fingerprint, r.method, r.metrics["accuracy"]) for r in runs])
    report = monitor(store, Thresholds(window=500))
    assert report.matched_runs > 100 and not report.alerts, report


def test_thresholds_follow_the_selector_versions_own_offline_figures():
    t = Thresholds.for_selector({"metapeft.offline.regret": "1.5", "metapeft.offline.coverage": "0.9"}, window=20)
    assert t.regret_max == pytest.approx(4.0) and t.coverage_min == pytest.approx(0.77) and t.window == 20
    assert Thresholds.for_selector({}) == Thresholds()  # a version without figures: the shipped selector's
    assert Thresholds.for_selector({"metapeft.offline.regret": "n/a"}).regret_max == Thresholds().regret_max
