import gzip
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO, run_cli, shared_path

from metapeft._errors import StoreError
from metapeft.experience import Experience, ExperienceStore, read_peft_results
from metapeft.training import train


def _record(i: int, **kw) -> Experience:
    return Experience(
        task_name=f"t{i % 3}",
        method="lora",
        model="m",
        task_fingerprint=f"f{i % 3}",
        hyperparameters={"r": i},
        metrics={"accuracy": i / 100},
        status="finished",
        **kw,
    )


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
    # a run still going when exported is nobody's run in the store it goes to
    going = store.start(_record(9))
    assert store.export_jsonl(tmp_path / "y.jsonl") == 6
    fresh = ExperienceStore(f"sqlite:///{tmp_path / 'd.db'}")
    assert fresh.import_jsonl(tmp_path / "y.jsonl") == (6, 0) and fresh.get(going).status == "interrupted"


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


@pytest.mark.slow  # several minutes on 2 cores: run by .ci/run's second step
def test_sigkill_mid_training_leaves_the_store_readable(tmp_path):
    home = tmp_path / "home"
    home.mkdir()  # an explicit store URL needs its folder
    env = {**os.environ, "METAPEFT_HOME": str(home)}
    store = ExperienceStore(f"sqlite:///{home / 'experience.db'}")
    earlier = store.add(_record(7))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from metapeft.cli import run; run()",
            "train",
            "example",
            "--max-steps",
            "5000",
            "--no-track",
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
    assert {
        "lora",
        "dora",
        "adalora",
        "ia3",
        "loha",
        "prompt_tuning",
        "prefix_tuning",
        "p_tuning",
        "full_finetuning",
    } <= methods
    image = store.query(task="image-gen")
    assert image and all(r.metrics["score_name"] == "dino_similarity" and "accuracy" not in r.metrics for r in image)


def test_damaged_store_is_named_with_a_recovery_and_never_written(tmp_path):
    path = tmp_path / "d.db"
    store = ExperienceStore(f"sqlite:///{path}")
    store.add_many([_record(i, environment={"blob": "x" * 3000}) for i in range(300)])
    store.dispose()  # checkpoints the WAL into the file
    with open(path, "r+b") as f:  # overwrite pages in the middle, as a disk or a copy gone wrong would
        f.seek(path.stat().st_size // 2 // 4096 * 4096)
        f.write(b"\xff" * 4096 * 8)
    damaged = path.read_bytes()
    url = f"sqlite:///{path}"
    recovered = tmp_path / "d-recovered.db"
    with pytest.raises(StoreError, match=rf"store {path} is damaged .*\.recover.*--store sqlite:///{recovered}"):
        ExperienceStore(url).query()
    with pytest.raises(StoreError, match="is damaged"):  # train's first write
        ExperienceStore(url).start(_record(1))
    with pytest.raises(StoreError, match="is damaged"):
        ExperienceStore(url).add_many([_record(i) for i in range(3)])
    wal = tmp_path / "d.db-wal"
    assert path.read_bytes() == damaged and (not wal.exists() or wal.stat().st_size == 0)  # not a byte written
    proc = run_cli("experience", "list", "--store", url)
    assert proc.returncode == 2 and "is damaged" in proc.stderr and "internal error" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_integrity_check_runs_once_before_the_first_write(tmp_path):
    import sqlalchemy as sa

    store = ExperienceStore(f"sqlite:///{tmp_path / 'q.db'}")
    checks = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda _c, _cur, statement, *_: checks.append(statement))
    store.query()
    assert not [s for s in checks if "quick_check" in s]  # reading costs nothing
    rid = store.start(_record(1))
    store.finish(rid, metrics={"accuracy": 0.5})
    assert [s for s in checks if "quick_check" in s] == ["PRAGMA quick_check"]


def _lines(path, *records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(metrics=[0.5]), "metrics: expected an object, got a list"),
        (lambda d: d["metrics"].update(accuracy="high"), "metrics.accuracy: expected a number, got 'high'"),
        (lambda d: d["metrics"].update(accuracy=85), "metrics.accuracy: expected a number from 0 to 1, got 85"),
        (lambda d: d["metrics"].update(outcomes={"test": 3}), "metrics.outcomes: expected an object of strings"),
        (
            lambda d: d.update(status="done"),
            "status: expected one of running, finished, failed, interrupted, got 'done'",
        ),
        (lambda d: d.update(created_at="yesterday"), "created_at: expected an ISO date and time, got 'yesterday'"),
        (lambda d: d.update(seed="1"), "seed: expected a 32-bit integer, got '1'"),
        (lambda d: d.update(curve={"step": 1}), "curve: expected a list, got an object"),
        (lambda d: d.update(tags=None), "tags: expected an object, got null"),
        (lambda d: d.update(task_name="t" * 300), "task_name: expected a non-empty string of at most 256 characters"),
        (lambda d: d.pop("model"), "missing model"),
        (lambda d: d.clear() or d.update(a=1) or None, "missing task_name, method, model"),
    ],
)
def test_import_rejects_a_bad_record_naming_file_and_line_and_imports_nothing(tmp_path, change, message):
    good = _record(1).as_dict()
    good["metrics"].update(memory_measure="tensors", outcomes={"test": "AAE=", "test_rows": "abc"}, tokens_per_s=None)
    bad = _record(2).as_dict()
    change(bad)
    path = _lines(tmp_path / "x.jsonl", good, bad)
    store = ExperienceStore(f"sqlite:///{tmp_path / 'i.db'}")
    with pytest.raises(StoreError) as info:
        store.import_jsonl(path)
    assert str(info.value).startswith(f"{path} line 2: not an experience record ({message}")
    assert "\n" not in str(info.value) and store.count() == 0
    _lines(path, good)
    assert store.import_jsonl(path) == (1, 0)  # the good record, with its non-numeric metrics, alone is fine


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("array.jsonl", b"[1, 2]\n", "line 1: not an experience record (expected a JSON object, got a list)"),
        ("latin1.jsonl", '{"task_name": "caf\xe9"}\n'.encode("latin-1"), "line 1: not UTF-8 text"),
        (
            "packed.jsonl",
            gzip.compress(b"{}\n", mtime=0),
            "line 1: not UTF-8 text, so not an `experience export` file; it is gzip",
        ),
        ("plain.jsonl.gz", b'{"task_name": "t"}\n', "not a gzip-compressed file (Not a gzipped file"),
        ("garbage.jsonl.gz", bytes(range(256)) * 4, "not a gzip-compressed file"),
        (
            "truncated.jsonl.gz",
            gzip.compress(b'{"task_name": "t"}\n' * 100, mtime=0)[:30],
            "not a gzip-compressed file",
        ),
    ],
)
def test_import_rejects_files_that_are_not_exports(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    store = ExperienceStore(f"sqlite:///{tmp_path / 'i.db'}")
    with pytest.raises(StoreError) as info:
        store.import_jsonl(path)
    assert str(info.value).startswith(f"{path}{'' if message.startswith('line') else ':'} {message}"), str(info.value)
    assert "\n" not in str(info.value) and store.count() == 0


def test_shipped_prior_imports_completely(tmp_path):
    from metapeft.prior import EXPERIENCES_PATH

    with gzip.open(EXPERIENCES_PATH, "rt") as f:
        n = sum(1 for line in f if line.strip())
    store = ExperienceStore(f"sqlite:///{tmp_path / 'p.db'}")
    assert store.import_jsonl(EXPERIENCES_PATH) == (n, 0) and n >= 1000


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["train_info"].update(train_time="slow"), "train_info.train_time: expected a number, got str"),
        (
            lambda d: d["train_info"].update(accelerator_memory_max="22 GB"),
            "train_info.accelerator_memory_max: expected a number, got str",
        ),
        (lambda d: d.update(run_info=[]), "run_info: expected an object, got list"),
        (lambda d: d["train_info"].update(metrics={"step": 1}), "train_info.metrics: expected a list, got dict"),
        (
            lambda d: d["train_info"]["metrics"][20].update({"test accuracy": "high"}),
            "train_info.metrics[20].test accuracy: expected a number, got str",
        ),
        (
            lambda d: d["run_info"].update(created_at="last tuesday"),
            "run_info.created_at: expected an ISO date and time, got 'last tuesday'",
        ),
        (
            lambda d: d["run_info"]["peft_config"].update(peft_type=3),
            "peft_config.peft_type: expected a string, got int",
        ),
    ],
)
def test_import_peft_results_rejects_a_bad_file_naming_it(tmp_path, change, message):
    source = shared_path("peft-method-comparison") / "MetaMathQA" / "lora--llama-3.2-3B-rank32.json"
    folder = tmp_path / "results" / "MetaMathQA"
    folder.mkdir(parents=True)
    shutil.copy(source, folder / "good.json")
    data = json.loads(source.read_text())
    change(data)
    (folder / "bad.json").write_text(json.dumps(data))
    with pytest.raises(StoreError) as info:
        read_peft_results(tmp_path / "results")
    assert str(info.value).startswith(f"{folder / 'bad.json'}: not a PEFT method-comparison result ({message})")
    (folder / "bad.json").write_bytes(b"\x00\xff\xfe binary")
    with pytest.raises(StoreError) as info:
        read_peft_results(tmp_path / "results")
    assert str(info.value).startswith(f"{folder / 'bad.json'}: not a JSON text file"), str(info.value)
    (folder / "bad.json").unlink()
    assert len(read_peft_results(tmp_path / "results")) == 1


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://metapeft:s3cret-pw@127.0.0.1:1/db",  # nothing listens on port 1
        "postgresql+psycopg://metapeft:s3cret-pw@host:notaport/db",
        "mysql://metapeft:s3cret-pw@127.0.0.1:1/db",  # no driver
        "nosuchdb://metapeft:s3cret-pw@host/db",
    ],
)
def test_store_errors_never_show_the_password(url):
    with pytest.raises(StoreError) as info:
        ExperienceStore(url)
    assert "s3cret-pw" not in str(info.value) and "***@" in str(info.value)


def test_display_url_hides_the_password(tmp_path):
    store = ExperienceStore(f"sqlite:///{tmp_path / 'x.db'}")
    assert store.display_url == store.url
    store.url = "postgresql+psycopg://u:s3cret@db.example/exp"
    assert store.display_url == "postgresql+psycopg://u:***@db.example/exp"


def test_an_explicit_store_needs_its_folder_and_a_new_store_is_announced(tmp_path, monkeypatch, caplog):
    typo = tmp_path / "typo" / "dir"
    with pytest.raises(StoreError, match=f"the folder {typo} of the experience store sqlite:///{typo}/x.db does not"):
        ExperienceStore(f"sqlite:///{typo / 'x.db'}")
    assert not (tmp_path / "typo").exists()
    with caplog.at_level(logging.INFO, logger="metapeft"):
        ExperienceStore(f"sqlite:///{tmp_path / 'new.db'}")
        ExperienceStore(f"sqlite:///{tmp_path / 'new.db'}")  # exists now: nothing to say
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [("WARNING", f"creating a new experience store at {tmp_path / 'new.db'}")]
    home = tmp_path / "fresh" / "home"  # the default store is created with its folder
    monkeypatch.setenv("METAPEFT_HOME", str(home))
    assert ExperienceStore().count() == 0 and (home / "experience.db").exists()


_READ_ONLY_CHECK = """
import json, sys
from metapeft._errors import StoreError
from metapeft.experience import Experience, ExperienceStore
store = ExperienceStore(sys.argv[1])
out = {"read_only": store.read_only, "statuses": sorted(r.status for r in store.query())}
out["exported"] = store.export_jsonl(sys.argv[2])
try:
    store.add(Experience(task_name="t", method="lora", model="m"))
except StoreError as exc:
    out["write"] = str(exc)
print(json.dumps(out))
"""


def test_read_only_store_can_be_listed_and_exported_but_not_written(tmp_path):
    """With real permissions: a file and folder without write permission (as root, run without the capability to
    override file permissions, which a root-owned file's mode then binds)."""
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv")
        caps = "-dac_override,-dac_read_search"
        as_reader = ["setpriv", "--bounding-set", caps, "--inh-caps", caps]
    else:
        as_reader = []
    folder = tmp_path / "shared"
    folder.mkdir()
    url = f"sqlite:///{folder / 'ro.db'}"
    store = ExperienceStore(url)
    store.add(_record(1))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.add(Experience(task_name="t", method="lora", model="m"))  # running…
    from metapeft.experience._store import experiences

    with store.engine.begin() as conn:  # …in a process of this host that is gone: opening for writing would mark it
        running = experiences.c.status == "running"
        conn.execute(experiences.update().where(running).values(host=socket.gethostname(), pid=dead.pid))
    store.dispose()
    (folder / "ro.db").chmod(0o444)
    folder.chmod(0o555)
    try:
        command = [*as_reader, sys.executable, "-c", _READ_ONLY_CHECK, url, str(tmp_path / "out.jsonl")]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if proc.returncode and "setpriv" in proc.stderr:
            pytest.skip(f"cannot drop capabilities here: {proc.stderr.strip()}")
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["read_only"] and out["statuses"] == ["finished", "running"] and out["exported"] == 2
        assert out["write"].startswith(f"the experience store {folder / 'ro.db'} is read-only for this user")
        assert sorted(p.name for p in folder.iterdir()) == ["ro.db"]  # no -wal/-shm left behind for the owner
    finally:
        folder.chmod(0o755)
        (folder / "ro.db").chmod(0o644)


def _dead_and_live_runs_of_another_host(url: str, host: str | None = "another-host") -> tuple[str, str]:
    """Two running records of a process on another host (``None``: not recorded, as in records imported from an old
    export): one silent for 20 minutes, one that beat a moment ago."""
    from datetime import datetime, timedelta, timezone

    from metapeft.experience._store import experiences

    store = ExperienceStore(url)
    ids = [store.start(Experience(task_name="t", method="lora", model="m")) for _ in range(2)]
    now = datetime.now(timezone.utc)
    with store.engine.begin() as conn:
        for experience_id, age in zip(ids, (timedelta(minutes=20), timedelta(seconds=5))):
            conn.execute(
                experiences.update()
                .where(experiences.c.id == experience_id)
                .values(host=host, pid=1, updated_at=now - age)
            )
    return ids[0], ids[1]


def test_a_run_on_another_host_is_taken_for_dead_when_its_heartbeat_stops(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    silent, beating = _dead_and_live_runs_of_another_host(url)
    store = ExperienceStore(url)  # opening the store reaps
    assert (
        store.get(silent).status == "interrupted"
        and "no heartbeat from its process on another-host" in store.get(silent).error
    )
    assert store.get(beating).status == "running"
    before = store.get(beating).updated_at
    with store.keep_alive(beating, every=0.05):
        time.sleep(0.4)
    assert store.get(beating).updated_at > before


def test_a_running_record_of_no_known_host_is_taken_for_dead_when_silent(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    silent, beating = _dead_and_live_runs_of_another_host(url, host=None)
    store = ExperienceStore(url)
    assert store.get(silent).status == "interrupted" and "an unknown host" in store.get(silent).error
    assert store.get(beating).status == "running"


def test_a_paused_workers_pause_is_taken_out_of_its_training_time():
    """A worker stopped for 10 minutes between two curve points counted them as training (29 runs of the prior):
    the stretch is counted at the run's median; a run without one, or already corrected, is left as it is."""
    from metapeft.experience import without_suspensions

    curve = [{"step": 40 * k, "train_time_s": t} for k, t in enumerate([60, 120, 180, 840, 900, 960], 1)]
    paused = _record(0, curve=curve)
    paused.metrics = {"accuracy": 0.8, "train_time_s": 960.0, "tokens_per_s": 100.0}
    fixed = without_suspensions(paused)
    assert fixed.metrics["train_time_s"] == pytest.approx(360.0) and fixed.metrics["suspended_s"] == 600.0
    assert fixed.metrics["tokens_per_s"] == pytest.approx(100.0 * 960 / 360, abs=0.1)
    assert [p["train_time_s"] for p in fixed.curve] == [60, 120, 180, 240, 300, 360]
    assert paused.metrics["train_time_s"] == 960.0  # the record itself is not changed
    assert without_suspensions(fixed) is fixed
    steady = _record(1, curve=curve[:3] + [{"step": 160, "train_time_s": 300}])
    assert without_suspensions(steady) is steady  # 2x the median: contention, not a pause
