"""The experience store and bench claims on a real PostgreSQL server (a throwaway one started here when the
PostgreSQL server binaries are installed; set METAPEFT_TEST_POSTGRES_URL to use an existing one)."""

import glob
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import missing

from metapeft.experience import Experience, ExperienceStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    if url := os.environ.get("METAPEFT_TEST_POSTGRES_URL"):
        yield url
        return
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        missing("no PostgreSQL server binaries (install postgresql or set METAPEFT_TEST_POSTGRES_URL)")
    bindir = os.path.dirname(bins[-1])
    root = Path(
        tempfile.mkdtemp(prefix="metapeft-pg-")
    )  # not under pytest's tmp root: its mode 700 keeps the postgres user out
    data = root / "data"
    as_user = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser")
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(
        [*as_user, f"{bindir}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_user,
            f"{bindir}/pg_ctl",
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-w",
            "-o",
            f"-p {port} -h 127.0.0.1 -k {root}",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _writer(url: str, worker: int) -> None:
    store = ExperienceStore(url)
    for i in range(20):
        rid = store.start(Experience(task_name="t", method="lora", model="m", tags={"w": worker, "i": i}))
        store.finish(rid, metrics={"accuracy": i / 20})


def test_store_on_postgres_round_trips_and_takes_concurrent_writers(postgres_url):
    store = ExperienceStore(postgres_url)
    rid = store.add(
        Experience(
            task_name="sst2",
            method="lora",
            model="m",
            hyperparameters={"r": 8},
            metrics={"accuracy": 0.8},
            curve=[{"step": 1}],
            status="finished",
        )
    )
    got = store.get(rid)
    assert got.hyperparameters == {"r": 8} and got.curve == [{"step": 1}] and got.created_at.tzinfo is not None
    procs = [mp.get_context("spawn").Process(target=_writer, args=(postgres_url, w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert store.count(status="finished") == 61


def test_bench_claims_are_exclusive_on_postgres(postgres_url):
    from metapeft.bench._runner import _engine, _try_claim

    engine = _engine(ExperienceStore(postgres_url))
    assert _try_claim(engine, "design/t/64/lora/default/0")
    assert not _try_claim(engine, "design/t/64/lora/default/0")


def test_a_user_who_may_only_read_can_list_a_postgres_store(postgres_url):
    import socket
    import subprocess
    import sys

    import sqlalchemy as sa

    from metapeft._errors import StoreError
    from metapeft.experience._store import experiences

    store = ExperienceStore(postgres_url)
    rid = store.add(Experience(task_name="ro", method="lora", model="m", status="finished"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    running = store.add(Experience(task_name="ro", method="lora", model="m"))
    with store.engine.begin() as conn:  # a run of a process gone from this host: opening would mark it interrupted
        conn.execute(
            experiences.update().where(experiences.c.id == running).values(host=socket.gethostname(), pid=dead.pid)
        )
        try:
            conn.exec_driver_sql("DROP ROLE IF EXISTS metapeft_reader")
            conn.exec_driver_sql("CREATE ROLE metapeft_reader LOGIN PASSWORD 'r3ader-pw'")
            conn.exec_driver_sql("GRANT SELECT ON experiences, metapeft_store TO metapeft_reader")
        except sa.exc.DBAPIError as exc:
            pytest.skip(f"cannot create a read-only role here: {exc}")
    reader_url = sa.engine.make_url(postgres_url).set(username="metapeft_reader", password="r3ader-pw")
    reader = ExperienceStore(reader_url.render_as_string(hide_password=False))
    assert {r.id: r.status for r in reader.query(task="ro")} == {rid: "finished", running: "running"}
    message = r"cannot write to the experience store at \S+://metapeft_reader:\*\*\*@.*permission denied"
    with pytest.raises(StoreError, match=message) as info:
        reader.add(Experience(task_name="ro", method="lora", model="m"))
    assert "r3ader-pw" not in str(info.value)
    reader.dispose()
    assert ExperienceStore(postgres_url).get(running).status == "interrupted"  # a user who may write marks it


def test_a_dead_run_of_another_host_is_marked_on_postgres(postgres_url):
    from test_experience import _dead_and_live_runs_of_another_host

    silent, beating = _dead_and_live_runs_of_another_host(postgres_url)
    store = ExperienceStore(postgres_url)
    assert store.get(silent).status == "interrupted" and store.get(beating).status == "running"
