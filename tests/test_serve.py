"""The selector as an MLflow model and over HTTP: pyfunc round trip, registry aliases, every endpoint, bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import REPO

TOKEN = "test-token-123"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from metapeft.serving import SelectorHolder, ensure_champion

    version = ensure_champion()  # an empty registry: the packaged selector becomes version 1 and @champion
    holder = SelectorHolder()
    return version, holder


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    from fastapi.testclient import TestClient

    from metapeft.serving import ServeConfig, create_app

    store = f"sqlite:///{tmp_path_factory.mktemp('serve') / 'store.db'}"
    config = ServeConfig(token=TOKEN, store=store, max_body_bytes=64 * 1024, max_upload_rows=200)
    with TestClient(create_app(config, served[1])) as c:
        yield c


@pytest.fixture(scope="module")
def profile():
    from metapeft.prior import PriorExperience

    return next(r.profile for r in PriorExperience().records() if r.task_name == "sst2@1024" and r.profile)


def test_the_packaged_selector_is_version_1_champion_and_round_trips_through_pyfunc(served, profile):
    import mlflow

    from metapeft.tracking import MLflowTracker

    version, holder = served
    assert version == 1
    client = MLflowTracker().client
    mv = client.get_model_version_by_alias("metapeft-selector", "champion")
    assert (
        int(mv.version) == 1 and int(mv.tags["metapeft.experience_runs"]) >= 1000 and mv.tags["metapeft.git_revision"]
    )
    assert (
        float(mv.tags["metapeft.offline.regret"]) > 0 and 0 < float(mv.tags["metapeft.offline.coverage"]) <= 1
    )  # monitoring's thresholds
    with MLflowTracker().fluent():
        model = mlflow.pyfunc.load_model("models:/metapeft-selector@champion")
    out = model.predict([profile, profile])
    direct = holder.current().meta.recommend(profile)
    assert len(out) == 2 and [r["method"] for r in out[0]["recommendations"]] == [r.method for r in direct]
    assert out[0]["recommendations"][0]["confidence"] == pytest.approx(direct[0].confidence)


def test_health_methods_recommend_similar_and_metrics(client, profile):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["selector_version"] == 1
    names = {m["name"] for m in client.get("/v1/methods").json()}
    assert {"lora", "ia3", "prefix_tuning", "full_finetuning"} <= names
    answer = client.post("/v1/recommend", json={"profile": profile, "max_memory_mb": 2000})
    assert answer.status_code == 200, answer.text
    ranking = answer.json()["recommendations"]
    assert ranking[0]["rank"] == 1 and {"accuracy", "train_time_s", "peak_memory_mb"} <= set(
        ranking[0]["expected_performance"]
    )
    limited = client.post("/v1/recommend", json={"profile": profile, "methods": ["lora", "ia3"]}).json()[
        "recommendations"
    ]
    assert {r["method"] for r in limited} == {"lora", "ia3"}
    peft = client.post("/v1/recommend", json={"profile": profile, "peft_only": True}).json()["recommendations"]
    assert len(peft) == 8 and not {"full_finetuning", "head_only"} & {r["method"] for r in peft}
    similar = client.get("/v1/similar", params={"task": "sst2", "k": 3}).json()["similar"]
    assert len(similar) == 3 and all(not s["task"].startswith("sst2@") for s in similar)
    assert (
        client.post("/v1/similar", json={"profile": profile, "k": 2}).json()["similar"][0]["task"]
        == similar[0]["task"]
    )
    metrics = client.get("/metrics").text
    assert 'metapeft_requests_total{endpoint="/v1/recommend",status="200"} 3.0' in metrics
    assert "metapeft_selector_version 1.0" in metrics and "metapeft_request_seconds_bucket" in metrics
    # a machine the served experience has no runs of: the experience's times, and the answer says so
    elsewhere = client.post("/v1/recommend", json={"profile": profile, "machine": "torch|cuda|Unseen GPU"}).json()
    assert elsewhere["machine"] == {"key": "torch|cuda|Unseen GPU", "time_factor": 1.0, "tasks": 0}


BAD = [
    ("/v1/recommend", b"not json", 400, "not JSON"),
    ("/v1/recommend", b"[1, 2]", 400, "must be a JSON object"),
    ("/v1/recommend", {}, 400, "send {'profile'"),
    ("/v1/recommend", {"profile": {"task_name": "x"}}, 400, "task profile lacks"),
    ("/v1/recommend", {"profile": "sst2"}, 400, "a task profile is a JSON object"),
    ("/v1/recommend", {"rows": "abc"}, 400, "rows must be a list"),
    ("/v1/recommend", {"rows": [{"text": "a", "label": "x"}] * 201}, 400, "over the upload limit of 200"),
    ("/v1/recommend", {"rows": [{"text": "a", "label": "x"}] * 20}, 400, "single class"),
    ("/v1/recommend", {"profile": {}, "peft_only": "yes"}, 400, "peft_only must be true or false"),
    ("/v1/recommend", {"profile": {}, "peft_only": True, "methods": ["full_finetuning"]}, 400, "leaves no method"),
    ("/v1/check", {"profile": {}}, 400, "send {'method'"),
    ("/v1/check", {"method": "nope", "profile": {}}, 400, "nope"),
    ("/v1/check", {"method": "lora", "hyperparameters": "lr=1"}, 400, "hyperparameters must be a JSON object"),
    ("/v1/check", {"method": "lora", "hyperparameters": {"learning_rate": 5}}, 400, "learning_rate"),
    ("/v1/check", {"method": "lora"}, 400, "send {'profile'"),
    ("/v1/check", {"method": "lora", "profile": {"task_name": "x"}}, 400, "task profile lacks"),
    ("/v1/similar", {"profile": None}, 400, "a task profile is a JSON object"),
    ("/v1/similar", {"k": 0}, 400, "k must be a whole number"),
]


@pytest.mark.parametrize("path,body,status,message", BAD)
def test_bad_requests_get_one_clear_4xx_line(client, path, body, status, message):
    response = client.post(path, content=body) if isinstance(body, bytes) else client.post(path, json=body)
    assert response.status_code == status and message in response.json()["detail"], response.text


def test_check_rates_a_setting_over_http(client, profile):
    """``metapeft check`` served: the collapse risk of a user's setting, what to change, the evidence, and a note
    where the setting lies beyond what the experience measured."""
    answer = client.post(
        "/v1/check", json={"profile": profile, "method": "lora", "hyperparameters": {"learning_rate": 0.05}}
    )
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["selector_version"] == 1 and found["method"] == "lora"
    assert found["hyperparameters"]["learning_rate"] == 0.05 and 0 <= found["collapse_risk"] <= 1
    assert found["evidence"] and any("lies above every lora run" in n for n in found["notes"]), found["notes"]


def test_bad_fields_and_sizes(client, profile):
    for change, message in [
        ({"dataset_size": "big"}, "dataset_size must be a whole number"),
        ({"task_type": "triple"}, "task_type must be"),
        ({"num_classes": 1}, "num_classes >= 2"),
        ({"class_entropy": float("nan")}, None),
        ({"dataset_size": 10**400}, "dataset_size must be a whole number"),
        ({"domain_vector": [float("nan")] * len(profile["domain_vector"])}, "domain_vector must be a list of finite"),
        ({"domain_vector": [0.5, 0.5]}, "domain_vector has 2 numbers"),
        ({"model": {**profile["model"], "num_parameters": "big"}}, "model.num_parameters must be a finite number"),
    ]:
        for path, extra in (("/v1/recommend", {}), ("/v1/check", {"method": "lora"})):
            body = json.dumps({"profile": {**profile, **change}, **extra}).encode()
            response = client.post(path, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 400, response.text
            assert message is None or message in response.json()["detail"], response.text
    for options, message in [
        ({"max_memory_mb": -1}, "max_memory_mb must be a positive number"),
        ({"methods": ["nope"]}, "nope"),
        ({"max_steps": 0}, "max_steps must be a whole number"),
        ({"machine": 3}, "machine must be the machine_key"),
    ]:
        response = client.post("/v1/recommend", json={"profile": profile, **options})
        assert response.status_code == 400 and message in response.json()["detail"], response.text
    assert client.get("/v1/similar", params={"task": "no-such-task"}).status_code == 400
    assert client.get("/v1/similar", params={"task": "sst2", "k": 99}).status_code == 422
    huge = client.post("/v1/recommend", content=b"x" * (65 * 1024), headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "request body over" in huge.json()["detail"]
    # a chunked body carries no length to refuse it by: it is refused once it has read past the limit
    chunked = client.post(
        "/v1/recommend", content=(b"x" * 1024 for _ in range(65)), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413 and "request body over" in chunked.json()["detail"]
    assert (
        "metapeft_requests_total" in client.get("/metrics").text and 'status="500"' not in client.get("/metrics").text
    )


def test_an_uploaded_dataset_is_profiled_and_ranked(client):
    rows = [
        {"text": f"{w} movie, truly {w}", "label": lab}
        for w, lab in [("great", "pos"), ("awful", "neg")]
        for _ in range(20)
    ]
    response = client.post("/v1/recommend", json={"rows": rows, "name": "mini"})
    assert response.status_code == 200, response.text
    assert len(response.json()["recommendations"]) >= 5


def test_posting_experiences_needs_the_token_and_stores_each_record_once(client, tmp_path):
    from metapeft.experience import ExperienceStore
    from metapeft.prior import PriorExperience

    records = [r.as_dict() for r in PriorExperience().records()[:3]]
    assert client.post("/v1/experiences", json={"experiences": records}).status_code == 401
    assert (
        client.post(
            "/v1/experiences", json={"experiences": records}, headers={"Authorization": "Bearer wrong"}
        ).status_code
        == 401
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = client.post("/v1/experiences", json={"experiences": records}, headers=auth)
    assert first.status_code == 201 and first.json()["stored"] == 3
    again = client.post("/v1/experiences", json={"experiences": records}, headers=auth)
    assert again.status_code == 201 and again.json()["stored"] == 0
    bad = client.post(
        "/v1/experiences", json={"experiences": [{**records[0], "metrics": {"accuracy": "high"}}]}, headers=auth
    )
    assert bad.status_code == 400 and "experiences[0]" in bad.json()["detail"]
    store = ExperienceStore(client.app.state.config.store)
    assert {r.id for r in store.iter()} == {r["id"] for r in records}


def test_writes_are_refused_when_the_server_has_no_token(served, monkeypatch):
    from fastapi.testclient import TestClient

    from metapeft.serving import ServeConfig, create_app

    monkeypatch.delenv("METAPEFT_API_TOKEN", raising=False)
    with TestClient(create_app(ServeConfig(), served[1])) as c:
        response = c.post("/v1/experiences", json={"experiences": []}, headers={"Authorization": "Bearer anything"})
        assert response.status_code == 403 and "no token" in response.json()["detail"]


def test_a_new_champion_is_served_without_a_restart(served, client):
    from metapeft.serving import CHAMPION, log_selector

    _, holder = served
    version = log_selector(holder.current().meta, tags={"metapeft.origin": "test"}, alias=CHAMPION)
    assert version == 2 and holder.refresh() and client.get("/health").json()["selector_version"] == 2
    assert not holder.refresh()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metapeft_serve_answers_on_loopback(served):
    port = _free_port()
    env = {**os.environ, "METAPEFT_API_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from metapeft.cli import run; run()", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline, health = time.time() + 120, None
        while time.time() < deadline and health is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    health = json.loads(r.read())
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.5)
        assert health is not None and health["status"] == "ok" and health["selector_version"] >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_retrain_registers_a_challenger_and_promotes_it_only_when_not_worse(served, tmp_path):
    from metapeft.experience import ExperienceStore
    from metapeft.prior import PriorExperience
    from metapeft.serving import retrain
    from metapeft.tracking import MLflowTracker

    store = ExperienceStore(f"sqlite:///{tmp_path / 's.db'}")
    nothing_new = retrain(store)
    assert (
        not nothing_new.promoted
        and nothing_new.held_out_tasks == []
        and "nothing shows it is better" in nothing_new.reason
    )
    client = MLflowTracker().client
    champion = int(client.get_model_version_by_alias("metapeft-selector", "champion").version)
    assert champion == nothing_new.champion_version
    assert (
        int(client.get_model_version_by_alias("metapeft-selector", "challenger").version)
        == nothing_new.challenger_version
    )

    copies = []  # a task the champion never saw: the runs of one prior task instance under a new task's name
    for r in PriorExperience().records():
        if r.task_name == "trec6@1024":
            d = r.as_dict()
            d.update(id=r.id[:-4] + "cafe", task_name="trec6copy@1024", source="local", tags={})
            copies.append(type(r).from_dict(d))
    store.add_many(copies)
    result = retrain(store)
    assert (
        result.held_out_tasks == ["trec6copy"]
        and result.champion_regret is not None
        and result.challenger_regret is not None
    )
    assert result.promoted == (result.challenger_regret <= result.champion_regret)
    now = int(client.get_model_version_by_alias("metapeft-selector", "champion").version)
    assert now == (result.challenger_version if result.promoted else champion)
    forced = retrain(store, force=True)
    assert (
        forced.promoted
        and int(client.get_model_version_by_alias("metapeft-selector", "champion").version)
        == forced.challenger_version
    )


def test_mlflow_models_serve_answers_invocations_with_the_champion(served, profile):
    from metapeft.tracking import MLflowTracker

    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": MLflowTracker().uri}
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        "models:/metapeft-selector@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, answer = time.time() + 180, None
        while time.time() < deadline and answer is None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                data=json.dumps({"inputs": [profile]}).encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as r:
                    answer = json.loads(r.read())
            except OSError:
                assert proc.poll() is None, proc.stderr.read()[-2000:]
                time.sleep(1)
        assert answer is not None and answer["predictions"][0]["recommendations"][0]["rank"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
