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
        pytest.skip("no PostgreSQL server binaries (install postgresql or set METAPEFT_TEST_POSTGRES_URL)")
    bindir = os.path.dirname(bins[-1])
    root = Path(tempfile.mkdtemp(prefix="metapeft-pg-"))  # not under pytest's tmp root: its mode 700 keeps the postgres user out
    data = root / "data"
    as_user = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser")
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*as_user, f"{bindir}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True)
    subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", str(data), "-l", str(root / "log"), "-w", "-o", f"-p {port} -h 127.0.0.1 -k {root}", "start"], check=True, capture_output=True)
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
    rid = store.add(Experience(task_name="sst2", method="lora", model="m", hyperparameters={"r": 8}, metrics={"accuracy": 0.8}, curve=[{"step": 1}], status="finished"))
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
