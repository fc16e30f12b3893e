"""MLflow tracking: the store behind it is set up once, whatever the number of processes that first use it."""

import subprocess
import sys
import time

from conftest import REPO

LOG_ONE_RUN = """
import sys, time
from metapeft.tracking import MLflowTracker
start = float(sys.argv[2])
while time.time() < start:  # every process opens the fresh store at the same moment
    time.sleep(0.001)
tracker = MLflowTracker(sys.argv[1])
print(tracker.log_run(name="race", params={"p": 1}, metrics={"accuracy": 0.5}, \
curve=[{"step": 1, "accuracy": 0.5}], tags={}))
"""


def test_processes_that_first_use_a_fresh_tracking_store_together_all_log(tmp_path):
    """Four real processes open a new MLflow SQLite store at once: none fails, every run is there, and the schema is
    whole (no half-done migration left behind)."""
    import sqlalchemy as sa
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.time() + 8  # past the interpreters' imports
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOG_ONE_RUN, uri, str(start)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-600:] for _, err in results]
    run_ids = {out.strip() for out, _ in results}
    client = MlflowClient(uri)
    assert {client.get_run(r).data.metrics["accuracy"] for r in run_ids} == {0.5} and len(run_ids) == 4
    tables = sa.inspect(sa.create_engine(uri)).get_table_names()
    assert not [t for t in tables if t.startswith("_alembic_tmp")]
