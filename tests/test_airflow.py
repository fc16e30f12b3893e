"""The Airflow DAGs (metapeft.orchestration.airflow) run for real with Airflow's ``dag.test()`` on tiny work: a
64-example task searched with 2 trials of 3 steps; a design of 6 runs of 3 steps over two 150-example tasks.

Airflow is only imported in subprocesses: importing it initialises its settings, logging and database for the whole
process, which must not leak into the rest of the test session. ``dag.test()`` only runs a DAG found in a DAG bundle,
so each subprocess runs a DAG file written into the dags folder of a temporary AIRFLOW_HOME (migrated once).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLE, REPO, write_jsonl

if importlib.util.find_spec("airflow") is None:  # not pytest.importorskip: importing airflow here would configure it
    pytest.skip("apache-airflow is not installed (uv sync --inexact --extra airflow)", allow_module_level=True)

DESIGN = {
    "name": "tiny",
    "methods": ["lora", "ia3", "head_only"],
    "fixed": {"max_steps": 3, "batch_size": 8},
    "passes": [{"sizes": [24], "config": "defaults", "repeats": 1}],
    "eval_size": 20,
    "eval_points": 1,
}

DAG_FILE = """
import json
import os
import sys

from metapeft._errors import MetapeftError
from metapeft.orchestration.airflow import MetaDagOptions, TaskDagOptions, meta_dag, task_dag

TASK = TaskDagOptions(task={task!r}, tracking_uri={tracking!r}, trials=2, max_steps=3, final_steps=3,
                      methods=["lora", "head_only"])
META = MetaDagOptions(suite={suite!r}, design={design!r}, store={meta_store!r}, tracking_uri={meta_tracking!r})
DAGS = {{"task": task_dag(TASK, dag_id="t_task"), "meta": meta_dag(META, dag_id="t_meta")}}


def refused(make):
    try:
        make()
    except MetapeftError as exc:
        return str(exc)


def say(what, value):
    print(f"=== {{what}} " + json.dumps(value), flush=True)


if __name__ == "__main__":
    for which, conf, mark_success in json.loads(sys.argv[1]):
        print("=== RUN " + which, flush=True)
        run = DAGS[which].test(run_conf=conf, mark_success_pattern=mark_success)
        tasks = {{t.task_id + (f"[{{t.map_index}}]" if t.map_index >= 0 else ""): str(t.state)
                 for t in run.get_task_instances()}}
        say("RESULT", {{"state": str(run.state), "tasks": tasks, "leaked": os.environ.get("MLFLOW_TRACKING_URI")}})
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.path.dirname(os.path.abspath(__file__)))
    helps = {{k: bag.dags["metapeft_task"].params.get_param(k).description for k in ("task", "trials")}}
    errors = {{k: str(v) for k, v in bag.import_errors.items()}}
    say("DAGBAG", {{"dags": sorted(bag.dag_ids), "errors": errors, "help": helps}})
    say("OPTIONS", [refused(lambda: TaskDagOptions(trials=0)), refused(lambda: TaskDagOptions(methods="lora")),
                    refused(lambda: MetaDagOptions(min_methods=1)), refused(lambda: task_dag(MetaDagOptions()))])
"""

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT")


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """Tiny data, a dags folder with the example DAG file and the tests' DAG file, and two migrated AIRFLOW_HOMEs
    (one migration, copied), one per DAG, each with its own METAPEFT_HOME and MLflow store: the two run at once."""
    root = tmp_path_factory.mktemp("airflow")
    dags, suite = root / "dags", root / "suite"
    lines = [json.loads(line) for line in (EXAMPLE / "train.jsonl").read_text().splitlines()]
    write_jsonl(root / "reviews" / "train.jsonl", lines[400:464])
    write_jsonl(root / "reviews" / "test.jsonl", lines[464:504])
    for i, name in enumerate(["sst2_a", "sst2_b"]):
        write_jsonl(suite / name / "train.jsonl", lines[i * 200 : i * 200 + 150])
        write_jsonl(suite / name / "test.jsonl", lines[i * 200 + 150 : i * 200 + 200])
    manifest = [{"name": n, "domain": "movie reviews", "task_type": "single"} for n in ["sst2_a", "sst2_b"]]
    (suite / "MANIFEST.json").write_text(json.dumps(manifest))
    (suite / "design.json").write_text(json.dumps(DESIGN))
    paths = {
        "task": str(root / "reviews"),
        "tracking": f"sqlite:///{root / 'mlflow.db'}",
        "suite": str(suite),
        "design": str(suite / "design.json"),
        "meta_store": f"sqlite:///{root / 'meta.db'}",
        "meta_tracking": f"sqlite:///{root / 'meta-mlflow.db'}",
        "store": f"sqlite:///{root / 'experience.db'}",
        "metapeft_home": str(root / "metapeft"),
    }
    dags.mkdir()
    (dags / "t_dags.py").write_text(DAG_FILE.format(**paths))
    (dags / "metapeft_dags.py").write_text((REPO / "examples" / "airflow" / "metapeft_dags.py").read_text())
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_", "METAPEFT_"))}

    def env(home: Path, metapeft_home: str, **extra: str) -> dict:
        return {
            **base,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "METAPEFT_HOME": metapeft_home,
            "METAPEFT_STORE": paths["store"],
            **extra,
        }

    (root / "home").mkdir()
    task_env = env(root / "home", paths["metapeft_home"])
    migrate = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=task_env, capture_output=True, text=True, timeout=300
    )
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    shutil.copytree(root / "home", root / "home-meta")
    # without the shipped prior the selector fits on the design's 6 runs alone: in seconds instead of minutes
    meta_env = env(root / "home-meta", str(root / "metapeft-meta"), METAPEFT_PRIOR="0")
    return {**paths, "envs": {"task": task_env, "meta": meta_env}, "root": root, "dags": dags}


@pytest.fixture(scope="module")
def dag_runs(airflow):
    """Both DAG files' runs at once, in two processes: (results, output) of each.

    task_dag: with the factory's options; then twice with a bad conf (a task path that does not exist; 0 trials).
    dag.test runs in one process, where a run's conf stays in the DAG's params: each conf is complete.
    meta_dag: the design's 6 runs and a challenger promoted by force; then nothing to run and no promotion."""
    degraded = {"task": airflow["task"], "store": _degraded_store(airflow["root"])}
    bad = [{"task": "/nonexistent/reviews"}, {"task": airflow["task"], "trials": 0}]
    runs = {
        "task": [
            ["task", {}, None],
            ["task", degraded, "profile|recommend|tune|register"],
            *[["task", conf, None] for conf in bad],
        ],
        "meta": [["meta", {"force": True}, None], ["meta", {"force": False}, None]],
    }
    procs = {}
    for which, todo in runs.items():
        with open(airflow["root"] / f"{which}.log", "w") as out:
            procs[which] = subprocess.Popen(
                [sys.executable, str(airflow["dags"] / "t_dags.py"), json.dumps(todo)],
                env=airflow["envs"][which],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
    done = {}
    for which, proc in procs.items():
        try:
            proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
        output = (airflow["root"] / f"{which}.log").read_text()
        assert proc.returncode == 0, output[-5000:]
        results = [
            json.loads(x.removeprefix("=== RESULT ")) for x in output.splitlines() if x.startswith("=== RESULT ")
        ]
        assert len(results) == len(runs[which]), output[-5000:]
        done[which] = results, output
    return done


@pytest.fixture(scope="module")
def task_runs(dag_runs):
    return dag_runs["task"]


@pytest.fixture(scope="module")
def meta_runs(dag_runs):
    return dag_runs["meta"]


def _said(stdout: str, what: str):
    line = next(x for x in stdout.splitlines() if x.startswith(f"=== {what} "))
    return json.loads(line.removeprefix(f"=== {what} "))


def _section(stdout: str, run: int) -> str:
    return stdout.split("=== RUN ")[run + 1]


def _degraded_store(root: Path) -> str:
    """A store where the selector promised lora ~0.85 for 12 tasks, and lora came last by 20 points every time."""
    from metapeft.experience import Experience, ExperienceStore
    from metapeft.monitoring import record_prediction

    url = f"sqlite:///{root / 'degraded.db'}"
    store = ExperienceStore(url)
    promised = [("lora", 0.85), ("ia3", 0.8), ("head_only", 0.75)]
    ranking = [
        {
            "method": m,
            "rank": i + 1,
            "expected_performance": {"accuracy": {"mean": a, "low": a - 0.03, "high": a + 0.03}},
        }
        for i, (m, a) in enumerate(promised)
    ]
    for t in range(12):
        record_prediction(store, {"task_name": f"t{t}", "fingerprint": f"fp{t}"}, ranking, source="recommend")
        store.add_many(
            [
                Experience(
                    task_name=f"t{t}",
                    task_fingerprint=f"fp{t}",
                    method=m,
                    model="m",
                    hyperparameters={},
                    metrics={"accuracy": a},
                    status="finished",
                )
                for m, a in (("lora", 0.55), ("ia3", 0.75), ("head_only", 0.7))
            ]
        )
    return url


def test_task_dag_profiles_recommends_tunes_registers_and_monitors(airflow, task_runs):
    from mlflow.tracking import MlflowClient

    from metapeft.experience import ExperienceStore

    results, stdout = task_runs
    assert results[0]["state"] == "success", _section(stdout, 0)[-5000:]
    assert results[0]["tasks"] == dict.fromkeys(["monitor", "profile", "recommend", "register", "tune"], "success")
    assert results[0]["leaked"] is None  # the tasks pointed MLflow at tracking_uri only while they ran
    store = ExperienceStore(airflow["store"])
    runs = [r for r in store.query(status="finished") if r.task_name == "reviews"]
    assert len(runs) == 2 and {r.method for r in runs} <= {"lora", "head_only"}  # final_steps = max_steps: pick kept
    assert {"airflow", "tune"} <= {p["source"] for p in store.predictions()}
    version = MlflowClient(airflow["tracking"]).get_model_version("metapeft-reviews", "1")
    tags = version.tags
    assert tags["metapeft.task"] == "reviews" and tags["metapeft.recommended_method"] in {"lora", "head_only"}
    assert "chosen from a Pareto set" in tags["metapeft.decision"] and version.description == tags["metapeft.decision"]
    assert json.loads(tags["metapeft.task_embedding"]) and json.loads(tags["metapeft.pareto"])
    pick = next(r for r in runs if r.id == tags["metapeft.experience_id"])
    assert tags["metapeft.method"] == pick.method and version.run_id == pick.tags["mlflow_run_id"]
    assert not (Path(airflow["metapeft_home"]) / "mlflow.db").exists()  # nothing went to the default tracking store
    assert "selector monitoring: 2 predictions" in _section(stdout, 0)


def test_a_monitoring_alert_is_a_warning_not_a_failure(task_runs):
    results, stdout = task_runs
    assert results[1]["state"] == "success" and results[1]["tasks"]["monitor"] == "success"
    alert = next(x for x in _section(stdout, 1).splitlines() if "selector monitoring alert" in x)
    assert "[warning" in alert and "metapeft retrain" in alert
    assert "interval coverage 0 over the last 36 is below" in alert


def _failure(stdout: str, run: int, task_id: str) -> list[str]:
    """What the failing task logged after "Task failed with exception": Airflow's traceback of the error."""
    section = _section(stdout, run)
    start = section.index(f"[DAG TEST] starting task_id={task_id} ")
    block = section[start : section.index(f"[DAG TEST] end task task_id={task_id} ", start)].splitlines()
    first = next(i for i, line in enumerate(block) if "Task failed with exception" in line) + 1
    end = next((i for i in range(first, len(block)) if TIMESTAMP.match(block[i])), len(block))
    return block[first:end]


@pytest.mark.parametrize(
    "run, line",
    [
        (
            2,
            "metapeft._errors.TaskError: no such file or directory: /nonexistent/reviews (give a "
            "JSONL/CSV/TSV/Parquet file, a folder with train/test files, or 'example')",
        ),
        (3, "metapeft._errors.OptionError: trials must be a whole number of at least 1, got 0"),
    ],
)
def test_a_bad_parameter_fails_the_first_task_with_one_line(task_runs, run, line):
    results, stdout = task_runs
    assert results[run]["state"] == "failed"
    assert results[run]["tasks"] == {
        "profile": "failed",
        **dict.fromkeys(["monitor", "recommend", "register", "tune"], "upstream_failed"),
    }
    error = _failure(stdout, run, "profile")
    assert error[-1] == line, error
    assert sum(x.startswith("Traceback") for x in error) == 1, error  # Airflow's own, no chained one of ours
    assert not any("During handling" in x or "direct cause" in x for x in error), error


def test_the_dag_files_parse_with_help_and_options_are_checked(task_runs):
    _, stdout = task_runs
    bag = _said(stdout, "DAGBAG")
    assert bag["errors"] == {} and bag["dags"] == ["metapeft_meta", "metapeft_task", "t_meta", "t_task"]
    assert "(required" in bag["help"]["task"] and bag["help"]["trials"] == "Search trials."
    assert _said(stdout, "OPTIONS") == [
        "trials must be a whole number of at least 1, got 0",
        "methods must be a non-empty list of names or null, got 'lora'",
        "min_methods must be a whole number of at least 2, got 1",
        "options must be a TaskDagOptions, got MetaDagOptions",
    ]


def test_meta_dag_benches_the_design_over_mapped_tasks_retrains_evaluates_and_promotes(airflow, meta_runs):
    from mlflow.tracking import MlflowClient

    from metapeft.bench import Design, expand
    from metapeft.experience import ExperienceStore

    (first, second), stdout = meta_runs
    steps = ["pending_runs", "retrain", "evaluate", "promote"]
    assert first["state"] == "success", _section(stdout, 0)[-5000:]
    assert first["tasks"] == {**{f"run[{i}]": "success" for i in range(6)}, **dict.fromkeys(steps, "success")}
    assert first["leaked"] is None
    keys = [r.tags["design_key"] for r in ExperienceStore(airflow["meta_store"]).query(status="finished")]
    assert sorted(keys) == sorted(r.key for r in expand(Design.load(airflow["design"]), ["sst2_a", "sst2_b"]))
    # the second run had nothing to bench (its mapped task skipped) and kept @champion
    assert second["state"] == "success", _section(stdout, 1)[-5000:]
    assert second["tasks"] == {"run": "skipped", **dict.fromkeys(steps, "success")}
    client = MlflowClient(airflow["meta_tracking"])
    alias = client.get_model_version_by_alias
    aliases = {a: int(alias("metapeft-selector", a).version) for a in ("champion", "challenger")}
    assert aliases == {"champion": 2, "challenger": 3}  # 1: the packaged champion; 2: forced in; 3: kept out
    forced, kept = (client.get_model_version("metapeft-selector", v).tags for v in ("2", "3"))
    assert forced["metapeft.retrain.held_out"] == "sst2_a,sst2_b"
    assert forced["metapeft.retrain.reason"].endswith("nothing shows it is better; promoted by --force")
    assert kept["metapeft.retrain.reason"].endswith("nothing shows it is better")
    assert client.get_model_version("metapeft-selector", "1").tags["metapeft.origin"] == "packaged (shipped prior)"


def test_without_airflow_the_module_says_what_to_install():
    code = (
        "import sys\nimport metapeft.orchestration\nassert 'airflow' not in sys.modules\n"
        "sys.modules['airflow'] = None\ntry:\n    import metapeft.orchestration.airflow\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    said = "MetapeftError metapeft's Airflow DAGs need Apache Airflow 3: pip install 'metapeft[airflow]'"
    assert proc.stdout.strip() == said
