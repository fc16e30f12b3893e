"""The commands a user types, run as a user runs them (subprocess, real model, real data)."""

import json

import pytest
from conftest import run_cli


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    """Each test a data directory of its own (experience store, MLflow store, caches): a run stored by one test must
    not change what a later one sees (a `train` made later commands refit the meta-learner)."""
    home = tmp_path / "home"
    monkeypatch.setenv("METAPEFT_HOME", str(home))
    return home


def test_version_and_methods():
    assert run_cli("--version").stdout.startswith("metapeft ")
    methods = json.loads(run_cli("methods", "--json").stdout)
    assert {m["name"] for m in methods} >= {"lora", "adalora", "prompt_tuning", "prefix_tuning", "p_tuning"}


def test_piped_tables_keep_every_cell_whole():
    methods = json.loads(run_cli("methods", "--json").stdout)
    piped = run_cli("methods", env={"COLUMNS": "80"}).stdout  # stdout is a pipe here, as in `metapeft methods > file`
    lines = piped.splitlines()
    helps = [p["help"] for m in methods for p in m["hyperparameters"].values()]
    assert helps and all(any(h in line for line in lines) for h in helps)  # each help text whole on one line


def test_train_json_tracks_in_mlflow_and_stores_the_experience():
    proc = run_cli(
        "train",
        "example",
        "--method",
        "lora",
        "--max-steps",
        "6",
        "--eval-size",
        "60",
        "--register",
        "sst2-lora",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert 0 <= result["metrics"]["accuracy"] <= 1 and result["metrics"]["steps"] == 6

    from mlflow.tracking import MlflowClient

    from metapeft._config import tracking_uri
    from metapeft.experience import ExperienceStore

    client = MlflowClient(tracking_uri())
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.params["r"] == "8" and run.data.tags["metapeft.method"] == "lora"
    assert run.data.metrics["accuracy"] == result["metrics"]["accuracy"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "curve/accuracy")] == [2, 3, 5, 6]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"task_profile.json", "learning_curve.json", "adapter"} <= artifacts

    record = ExperienceStore().get(result["experience_id"])
    assert record.status == "finished" and record.tags["mlflow_run_id"] == result["mlflow_run_id"]
    assert record.profile["task_name"] == "sst2-mini" and record.environment["device"] == "cpu"

    import mlflow.pyfunc

    from metapeft.tracking import MLflowTracker

    assert result["registered"] == {"name": "sst2-lora", "version": 1}
    with MLflowTracker().fluent():  # `train --register` made a pyfunc model: texts in, labels out
        labels = mlflow.pyfunc.load_model("models:/sst2-lora/1").predict(
            ["a gripping, beautifully made film", "dull and lifeless"]
        )
    assert len(labels) == 2 and set(labels) <= {"negative", "positive"}


def test_profile_json():
    p = json.loads(run_cli("profile", "example", "--json").stdout)
    assert p["dataset_size"] == 1000 and len(p["domain_vector"]) == 384


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "/nonexistent/data.jsonl"], "no such file or directory"),
        (["train", "example", "--method", "lorax"], "unknown method 'lorax'"),
        (["train", "example", "--set", "r=100000"], "out of range"),
        (["train", "example", "--set", "alpha=2"], "no hyperparameter 'alpha'"),
        (["profile", "example", "--model", "/tmp"], "has no config.json"),
        (["train", "example", "--eval-size", "-1"], "--eval-size must be"),
        (["tune", "example", "--final-eval-size", "-1"], "--final-eval-size must be"),
        (["train", "example", "--device", "tpu"], "unknown device 'tpu'"),
        (["train", "example", "-o", "/proc/nope/out"], "cannot create output folder /proc/nope/out"),
        (["train", "example", "--register", "x", "--no-track"], "--register needs the run logged to MLflow"),
        (["experience", "export", "/proc/nope/x.jsonl"], "cannot use /proc/nope/x.jsonl: No such file or directory"),
        (["experience", "list", "--status", "done"], "--status must be one of"),
        (["recommend", "example", "--max-memory", "1"], "no method is expected to keep within --max-memory 1 MB"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_prior_can_be_switched_off_from_the_environment(tmp_path):
    proc = run_cli(
        "recommend", "example", "--store", f"sqlite:///{tmp_path / 'empty.db'}", env={"METAPEFT_PRIOR": "0"}
    )
    assert proc.returncode == 2 and "not enough experience" in proc.stderr


def test_help_shows_defaults_written_in_brackets():
    # typer parses help text as rich markup, where an unescaped "[default: …]" is a style tag and vanishes
    proc = run_cli("tune", "--help", env={"COLUMNS": "200"})
    assert "[default: 10 unless --time-budget]" in proc.stdout and "[env: METAPEFT_STORE]" in proc.stdout


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"text": "ok", "label": "b"}\n\n{"text": oops}\n')
    proc = run_cli("train", str(path), "--method", "lora", "--max-steps", "3", "--json")
    assert proc.returncode == 2 and "line 4: not valid JSON" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_incompatible_method_is_one_line(tmp_path):
    from transformers import GPT2Config, GPT2Model

    from metapeft._backbone import load_tokenizer

    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=30522, n_positions=64)).save_pretrained(tmp_path)
    load_tokenizer(None).save_pretrained(tmp_path)
    proc = run_cli("train", "example", "--model", str(tmp_path), "--method", "lora", "--max-steps", "2", "--no-track")
    assert proc.returncode == 2 and "no torch.nn.Linear layers" in proc.stderr and "Traceback" not in proc.stderr


def test_experience_import_peft_results_and_export(tmp_path):
    from conftest import shared_path

    folder = shared_path("peft-method-comparison")
    url = f"sqlite:///{tmp_path / 's.db'}"
    summary = json.loads(run_cli("experience", "import-peft-results", str(folder), "--store", url, "--json").stdout)
    assert summary["added"] == summary["files"] > 50
    proc = run_cli("experience", "export", str(tmp_path / "out.jsonl"), "--store", url)
    assert proc.returncode == 0 and len((tmp_path / "out.jsonl").read_text().splitlines()) == summary["files"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train"], "Missing argument"),
        (["train", "example", "--max-steps", "abc"], "Invalid value for '--max-steps'"),
        (["frobnicate"], "No such command"),
    ],
)
def test_usage_errors_are_reported_not_raised(args, message):
    proc = run_cli(*args)
    assert (
        proc.returncode == 2
        and message in proc.stderr
        and "Traceback" not in proc.stderr
        and "internal error" not in proc.stderr
    )


def test_passwords_in_urls_are_never_printed():
    proc = run_cli(
        "info",
        "--json",
        "--store",
        "postgresql+psycopg://bob:s3cret-pw@127.0.0.1:1/x",
        env={"MLFLOW_TRACKING_URI": "postgresql://ann:hidden-pw@db/mlflow"},
    )
    assert proc.returncode == 0 and "s3cret-pw" not in proc.stdout and "hidden-pw" not in proc.stdout
    assert json.loads(proc.stdout)["store"] == "postgresql+psycopg://bob:***@127.0.0.1:1/x"


def test_tune_refuses_a_study_name_that_leaves_its_folder_and_a_bad_storage_before_any_work(tmp_path):
    proc = run_cli("tune", "example", "--trials", "1", "--study", "../../x")
    assert proc.returncode == 2 and "--study '../../x' names a folder" in proc.stderr
    home = tmp_path / "home"
    proc = run_cli(
        "tune",
        "example",
        "--trials",
        "1",
        "--storage",
        "postgresql+psycopg://bob:s3cret-pw@127.0.0.1:1/x",
        env={"METAPEFT_HOME": str(home)},
    )
    assert proc.returncode == 2 and "cannot open the Optuna storage" in proc.stderr and "s3cret-pw" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (home / "profiles").exists()  # refused before profiling the task and fitting the meta-learner


def test_validate_checks_the_setup_and_names_each_problem(tmp_path):
    proc = run_cli("validate", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert checks["base model (offline)"]["ok"] and "all-MiniLM-L6-v2" in checks["base model (offline)"]["detail"]
    assert checks["experience store"]["ok"] and checks["tracking store"]["ok"]
    (tmp_path / "store.db").write_bytes(b"this is not a database" * 100)
    proc = run_cli(
        "validate",
        "--store",
        f"sqlite:///{tmp_path / 'store.db'}",
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'nowhere' / 'x' / 'm.db'}"},
    )
    assert proc.returncode == 2 and "problem" in proc.stdout and "experience store:" in proc.stderr, (
        proc.stdout + proc.stderr
    )
    assert "Traceback" not in proc.stderr
