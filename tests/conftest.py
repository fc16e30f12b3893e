"""Shared fixtures. Every test runs against the real bundled MiniLM weights and real data (the bundled
sst2-mini example, or slices of the reference suite in ../shared when it is present)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("METAPEFT_SHARED", REPO.parent / "shared"))
EXAMPLE = REPO / "src" / "metapeft" / "examples" / "sst2-mini"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Tests run in parallel (pytest -n N): each worker, and the CLI processes its tests start, gets its share of the
    # cores, so that N workers' torch threads do not fight over them. Set before any test module imports torch.
    _share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))


@pytest.fixture(scope="session", autouse=True)
def isolated_home(tmp_path_factory):
    """Keep the user's data directory and MLflow store out of the tests."""
    home = tmp_path_factory.mktemp("metapeft-home")
    old = {k: os.environ.get(k) for k in ("METAPEFT_HOME", "METAPEFT_STORE", "MLFLOW_TRACKING_URI")}
    os.environ["METAPEFT_HOME"] = str(home)
    os.environ.pop("METAPEFT_STORE", None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from metapeft._environment import quiet_libraries

    quiet_libraries()
    yield home
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def no_leaked_mlflow_uri():
    """A test (or the library under test) that leaves MLFLOW_TRACKING_URI set sends every later subprocess's runs
    to its store: ``mlflow.set_tracking_uri`` exports the variable. Fail the test that leaks it, and clean up."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {k: os.environ.get(k) for k in names}
    yield
    leaked = {k: os.environ.get(k) for k in names if os.environ.get(k) != before[k]}
    if leaked:
        import mlflow

        mlflow.set_tracking_uri(before["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(before["MLFLOW_REGISTRY_URI"])
        for k in names:
            os.environ.pop(k, None) if before[k] is None else os.environ.__setitem__(k, before[k])
        pytest.fail(f"the test left {leaked} in the environment (use MLflowTracker.fluent())")


@pytest.fixture(scope="session")
def example_task():
    from metapeft.tasks import load_task

    return load_task(EXAMPLE)


@pytest.fixture(scope="session")
def small_task(example_task):
    """48 training examples of sst2-mini: enough to see learning in a few steps, fast on CPU."""
    return example_task.subsample(48, seed=0)


@pytest.fixture(scope="session")
def quick_task(small_task):
    """small_task with 64 held-out examples (stratified) instead of 300: for tests that evaluate a run and then its
    reloaded copy on the whole held-out split."""
    import dataclasses

    import numpy as np

    from metapeft.tasks import stratified_indices

    return dataclasses.replace(
        small_task, test=small_task.test.select(np.sort(stratified_indices(small_task.test.labels, 64, 0)))
    )


@pytest.fixture(scope="session")
def example_profile(small_task):
    from metapeft.tasks import profile_task

    return profile_task(small_task)


def missing(component: str) -> None:
    """A real component a test needs is absent: skipped on a developer's machine (``-rs`` lists it), a failure in
    CI (``CI=true``), where .ci/run must have provided it."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI lacks a real component: {component}", pytrace=False)
    pytest.skip(component)


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        missing(f"reference data not found at {path} (set METAPEFT_SHARED)")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_cli(*args: str, env: dict | None = None, timeout: int = 300):
    """Run the real console entry point in a subprocess (what a user types)."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-c", "from metapeft.cli import run; run()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
