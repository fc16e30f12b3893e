import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, shared_path
from metapeft.experience import Experience, ExperienceStore, read_peft_results
from metapeft.training import train


def _record(i: int, **kw) -> Experience:
    return Experience(task_name=f"t{i % 3}", method="lora", model="m", task_fingerprint=f"f{i % 3}",
                      hyperparameters={"r": i}, metrics={"accuracy": i / 100}, status="finished", **kw)


def test_round_trip_and_jsonl_exchange(tmp_path):
    store = ExperienceStore(f"sqlite:///{tmp_path / 'a.db'}")
    ids = [store.add(_record(i, curve=[{"step": 1, "accuracy": 0.5}])) for i in range(5)]
    got = store.get(ids[2])
    assert got.hyperparameters == {"r": 2} and got.metrics["accuracy"] == 0.02 and got.curve[0]["step"] == 1
    assert [r.id for r in store.query(task="t1")] == [ids[1], ids[4]]
    assert store.export_jsonl(tmp_path / "x.jsonl") == 5
    other = ExperienceStore(f"sqlite:///{tmp_path / 'b.db'}")
    assert other.import_jsonl(tmp_path / "x.jsonl") == (5, 0)
    assert other.import_jsonl(tmp_path / "x.jsonl") == (0, 5)  # idempotent
    assert other.get(ids[2]).as_dict() == got.as_dict()
    assert store.export_jsonl(tmp_path / "x.jsonl.gz") == 5
    assert ExperienceStore(f"sqlite:///{tmp_path / 'c.db'}").import_jsonl(tmp_path / "x.jsonl.gz") == (5, 0)


def _writer(url: str, worker: int, n: int) -> None:
    store = ExperienceStore(url)
    for i in range(n):
        rid = store.start(_record(worker * 1000 + i))
        store.finish(rid, metrics={"accuracy": 0.5, "worker": worker})


def test_concurrent_writers_lose_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    procs = [mp.get_context("spawn").Process(target=_writer, args=(url, w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = ExperienceStore(url)
    assert store.count() == 100 and store.count(status="finished") == 100


def test_failed_run_is_recorded_with_its_error(small_task, example_profile, tmp_path, monkeypatch):
    """A crash inside training (injected here: the store path is what is under test) marks the run failed."""
    import metapeft.training._run as run_module
    from metapeft._errors import MetapeftError

    from metapeft.tracking import MLflowTracker

    store = ExperienceStore(f"sqlite:///{tmp_path / 'f.db'}")
    tracker = MLflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(run_module, "fit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(MetapeftError, match="failed: RuntimeError: out of memory"):
        train(small_task, "lora", {"max_steps": 2}, profile=example_profile, store=store, tracker=tracker)
    (record,) = store.query()
    assert record.status == "failed" and "out of memory" in record.error
    (run,) = tracker.client.search_runs([tracker.experiment_id])
    assert run.info.status == "FAILED" and "out of memory" in run.data.tags["metapeft.error"]
    assert run.data.tags["metapeft.experience_id"] == record.id


def test_sigkill_mid_training_leaves_the_store_readable(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "METAPEFT_HOME": str(home)}
    store = ExperienceStore(f"sqlite:///{home / 'experience.db'}")
    earlier = store.add(_record(7))
    proc = subprocess.Popen([sys.executable, "-c", "from metapeft.cli import run; run()", "train", "example", "--max-steps", "5000", "--no-track"],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and store.count(status="running") == 0:
            time.sleep(0.5)
        assert store.count(status="running") == 1, "training never started"
        time.sleep(3)  # well inside the training loop
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    reopened = ExperienceStore(f"sqlite:///{home / 'experience.db'}")  # opening reaps runs of dead processes
    statuses = {r.id: r.status for r in reopened.query()}
    assert statuses[earlier] == "finished"
    assert sorted(statuses.values()) == ["finished", "interrupted"]


def test_import_peft_method_comparison_results(tmp_path):
    folder = shared_path("peft-method-comparison")
    files = [p for p in folder.rglob("*.json") if p.name != "SOURCE.json"]
    records = read_peft_results(folder)
    assert len(records) == len(files)
    store = ExperienceStore(f"sqlite:///{tmp_path / 'p.db'}")
    assert store.add_many(records) == len(files) and store.add_many(read_peft_results(folder)) == 0
    lora = next(r for r in store.query(task="MetaMathQA") if r.tags["file"] == "lora--llama-3.2-3B-rank32.json")
    raw = json.loads((folder / "MetaMathQA" / "lora--llama-3.2-3B-rank32.json").read_text())
    assert lora.method == "lora" and lora.model == "meta-llama/Llama-3.2-3B"
    assert lora.metrics["accuracy"] == raw["train_info"]["metrics"][-1]["test accuracy"]
    assert lora.metrics["train_time_s"] == raw["train_info"]["train_time"]
    assert lora.metrics["peak_memory_mb"] == raw["train_info"]["accelerator_memory_max"] / 2**20
    assert lora.hyperparameters["r"] == 32 and lora.hyperparameters["learning_rate"] == 1e-4
    methods = {r.method for r in store.query()}
    assert {"lora", "dora", "adalora", "ia3", "loha", "prompt_tuning", "prefix_tuning", "p_tuning", "full_finetuning"} <= methods
    image = store.query(task="image-gen")
    assert image and all(r.metrics["score_name"] == "dino_similarity" and "accuracy" not in r.metrics for r in image)
