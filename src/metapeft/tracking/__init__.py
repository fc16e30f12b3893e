"""Experiment tracking in MLflow: every run's params, learning curve by step, metrics, tags and artifacts.

The default tracking store is a SQLite file beside the experience store (``MLFLOW_TRACKING_URI`` overrides).
``MlflowClient`` is used directly rather than the fluent ``mlflow.start_run`` API so that no global "active
run" state leaks between runs of a warm worker.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._config import data_dir, redact_url, tracking_uri
from .._errors import MetapeftError

EXPERIMENT = "metapeft"


_PREPARED: set[str] = set()


def _owner() -> dict[str, str]:
    import os
    import socket

    return {"metapeft.host": socket.gethostname(), "metapeft.pid": str(os.getpid())}


def prepare_store(uri: str) -> None:
    """Create or upgrade a local (SQLite) tracking store once, under a file lock, before any client uses it.

    MLflow's tracking store runs its database migrations on first use without a lock: two processes starting on a
    new ``METAPEFT_HOME`` both migrate, one fails ("duplicate column"), and the database can be left half-migrated
    (stray ``_alembic_tmp_*`` tables) so that every later client fails too. Here the first process migrates while
    the others wait; a leftover temporary table of a migration cut short is dropped and the migration redone.
    Remote stores (a tracking server, PostgreSQL) are set up by whoever runs them, with ``mlflow db upgrade``.
    """
    if uri in _PREPARED or not uri.startswith("sqlite:///"):
        return
    import fcntl

    import sqlalchemy as sa
    from mlflow.store.db import utils

    path = Path(uri.removeprefix("sqlite:///")).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        engine = sa.create_engine(uri)
        try:
            tables = sa.inspect(engine).get_table_names()
            with engine.begin() as conn:
                for table in (t for t in tables if t.startswith("_alembic_tmp_")):
                    conn.execute(sa.text(f'DROP TABLE "{table}"'))
            if not utils._all_tables_exist(engine):
                utils._initialize_tables(engine)  # what MLflow's store does on first use, here under the lock
            elif utils._get_schema_version(engine) != utils._get_latest_schema_revision():
                utils._upgrade_db(engine)  # what `mlflow db upgrade` does
        finally:
            engine.dispose()
    _PREPARED.add(uri)


class MLflowTracker:
    def __init__(self, uri: str | None = None, experiment: str = EXPERIMENT):
        import logging

        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # "creating initial database tables…" is not for our users
            logging.getLogger(name).setLevel(logging.WARNING)
        self.uri = uri or tracking_uri()
        prepare_store(self.uri)
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            found = self.client.get_experiment_by_name(experiment)
        except Exception as exc:
            if "filesystem tracking backend" not in str(exc):
                raise
            raise MetapeftError(
                f"the MLflow tracking store {redact_url(self.uri)} is a folder, which this MLflow no longer "
                "writes to; point MLFLOW_TRACKING_URI "
                f"at a database (e.g. sqlite:///{data_dir() / 'mlflow.db'}), move the folder's runs with "
                "`mlflow migrate-filestore`, or set MLFLOW_ALLOW_FILE_STORE=true"
            ) from None
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            # A local store keeps artifacts in the data directory (not ./mlruns of wherever the user stands).
            location = (
                (data_dir() / "mlartifacts").as_uri()
                if self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri
                else None
            )
            try:
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            except Exception:  # another process created it first
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id

    @contextmanager
    def fluent(self):
        """Point MLflow's fluent API (``mlflow.start_run``, ``pyfunc.log_model``, ``pyfunc.load_model``) at this
        tracker's store for the block. ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI`` to every
        subprocess started later; afterwards the previous URIs and variables are put back, so that a library call
        leaves no global state behind (a search started next must not log to this store by accident)."""
        import mlflow

        names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
        before = {name: os.environ.get(name) for name in names}
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(before["MLFLOW_TRACKING_URI"])
            mlflow.set_registry_uri(before["MLFLOW_REGISTRY_URI"])
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def log_run(
        self,
        *,
        name: str,
        params: dict[str, Any],
        metrics: dict[str, Any],
        curve: list[dict[str, Any]],
        tags: dict[str, Any],
        status: str = "FINISHED",
        artifacts: dict[str, Any] | None = None,
        artifact_dir: str | Path | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        """Log one finished (or failed) run and return its MLflow run id.

        ``curve`` entries are logged as metrics at their ``step``; ``artifacts`` are JSON documents;
        ``artifact_dir`` (the adapter) is copied under ``adapter/``.
        """
        from mlflow.entities import Metric, Param

        run_tags = {k: str(v) for k, v in tags.items() if v is not None}
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=run_tags)
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        logged = [
            Metric(k, float(v), now, 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        for point in curve:
            for key in ("accuracy", "macro_f1", "train_loss"):
                if point.get(key) is not None:
                    logged.append(Metric(f"curve/{key}", float(point[key]), now, int(point["step"])))
        params_list = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, max(len(logged), len(params_list)), 900):  # log_batch limits: 1000 metrics, 100 params
            self.client.log_batch(
                run_id, metrics=logged[i : i + 900], params=params_list[i // 9 : i // 9 + 100] if i == 0 else []
            )
        if len(params_list) > 100:
            for j in range(100, len(params_list), 100):
                self.client.log_batch(run_id, params=params_list[j : j + 100])
        if artifacts:
            with tempfile.TemporaryDirectory() as tmp:
                for filename, document in artifacts.items():
                    Path(tmp, filename).write_text(json.dumps(document, indent=2, default=str))
                self.client.log_artifacts(run_id, tmp)
        if artifact_dir is not None:
            self.client.log_artifacts(run_id, str(artifact_dir), artifact_path="adapter")
        self.client.set_terminated(run_id, status)
        return run_id

    def start_parent(self, name: str, tags: dict[str, Any]) -> str:
        """Open a run that others nest under (a search); close it with :meth:`end_parent`. It carries this process's
        host and pid, so that :meth:`close_dead_parents` can close it if the process dies first."""
        tags = {**tags, **_owner()}
        return self.client.create_run(
            self.experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items() if v is not None}
        ).info.run_id

    def reopen_parent(self, run_id: str) -> None:
        """Make this process the owner of a parent run (a resumed or joined search), RUNNING again if it was closed
        when its first process died."""
        for key, value in _owner().items():
            self.client.set_tag(run_id, key, value)
        if self.client.get_run(run_id).info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")

    def close_dead_parents(self) -> int:
        """Close as KILLED the RUNNING parent runs whose process on this host is gone (SIGKILL, a crash): a killed
        search must not look as if it were still running. Returns how many were closed."""
        import socket

        from ..experience import process_gone

        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`metapeft.host` = '{socket.gethostname()}'",
        )
        dead = [
            r
            for r in runs
            if r.data.tags.get("metapeft.pid", "").isdigit() and process_gone(int(r.data.tags["metapeft.pid"]))
        ]
        for run in dead:
            self.client.set_terminated(run.info.run_id, "KILLED")
        return len(dead)

    def end_parent(
        self,
        run_id: str,
        *,
        metrics: dict[str, float] | None = None,
        files: list[str | Path] = (),
        status: str = "FINISHED",
    ) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        if metrics:
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        for f in files:
            self.client.log_artifact(run_id, str(f))
        self.client.set_terminated(run_id, status)

    def register(
        self,
        name: str,
        run_id: str,
        *,
        artifact_path: str = "adapter",
        tags: dict[str, Any] | None = None,
        description: str | None = None,
    ):
        """Register ``artifact_path`` of ``run_id`` as a new version of model ``name`` in the model registry."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException:
            pass  # exists already: add a version
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        return self.client.create_model_version(
            name, source, run_id=run_id, tags={k: str(v) for k, v in (tags or {}).items()}, description=description
        )


__all__ = ["MLflowTracker"]
