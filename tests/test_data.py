"""DVC: the dataset hash every run records equals DVC's, `data track` versions a dataset, `--data-rev` reads a
tracked version after the workspace changed, and the pipeline in pipeline/dvc.yaml reproduces end to end (and
a second `dvc repro` does nothing)."""

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
from conftest import EXAMPLE, REPO, run_cli

from metapeft import MetapeftError
from metapeft.experience import ExperienceStore


def test_without_dvc_the_commands_that_need_it_name_the_extra(tmp_path, monkeypatch):
    from metapeft.tasks import track

    monkeypatch.setitem(sys.modules, "dvc.repo", None)  # what `import dvc.repo` meets when DVC is not installed
    (tmp_path / "data.jsonl").write_text('{"text": "a", "label": 0}\n')
    with pytest.raises(MetapeftError, match=r"pip install 'metapeft\[dvc\]'"):
        track(tmp_path / "data.jsonl")


def test_a_run_outside_dvc_records_the_md5_of_its_files(tmp_path):
    from metapeft.tasks import dataset_md5, load_task

    task = load_task(EXAMPLE)
    assert task.meta["data"] == {"md5": dataset_md5(EXAMPLE)} and task.meta["data"]["md5"].endswith(".dir")
    assert task.subsample(24).meta["data"] == task.meta["data"]
    assert (
        dataset_md5(EXAMPLE / "train.jsonl")
        == __import__("hashlib").md5((EXAMPLE / "train.jsonl").read_bytes()).hexdigest()
    )


# the tests below need the extra (pip install 'metapeft[dvc]'); CI runs them in a step that installs it
needs_dvc = pytest.mark.skipif(importlib.util.find_spec("dvc") is None, reason="needs the dvc extra")


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    """A git repository with a 60-example dataset folder."""
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "ci@example.com")
    _git(root, "config", "user.name", "ci")
    lines = (EXAMPLE / "train.jsonl").read_text().splitlines()
    (root / "data" / "train.jsonl").write_text("\n".join(lines[:60]) + "\n")
    (root / "data" / "test.jsonl").write_text(
        (EXAMPLE / "test.jsonl").read_text().splitlines()[0] + "\n" + "\n".join(lines[900:929]) + "\n"
    )
    return root


def _train(root, *args):
    result = run_cli(
        "train",
        str(root / "data"),
        "-m",
        "head_only",
        "--max-steps",
        "2",
        "--no-track",
        "--eval-size",
        "0",
        "--json",
        *args,
        env={"METAPEFT_STORE": f"sqlite:///{root.parent / 'runs.db'}"},
    )
    return result, (
        ExperienceStore(f"sqlite:///{root.parent / 'runs.db'}").get(json.loads(result.stdout)["experience_id"])
        if result.returncode == 0
        else None
    )


@needs_dvc
def test_track_then_data_rev_reads_the_tracked_version_after_the_file_changed(repo):
    import yaml

    tracked = run_cli("data", "track", str(repo / "data"))
    assert tracked.returncode == 0, tracked.stderr
    dvcfile = yaml.safe_load((repo / "data.dvc").read_text())
    assert yaml.safe_load(tracked.stdout) == dvcfile and (repo / ".dvc" / "config").exists()
    md5 = dvcfile["outs"][0]["md5"]

    result, run = _train(repo)  # not committed yet: the workspace is the tracked version, but no commit holds it
    assert result.returncode == 0, result.stderr
    assert run.environment["data"]["md5"] == md5  # the hash recorded in the experience equals DVC's
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "60 examples")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()

    lines = (repo / "data" / "train.jsonl").read_text().splitlines()
    (repo / "data" / "train.jsonl").write_text("\n".join(lines[:40]) + "\n")  # the workspace changes
    result, run = _train(repo)
    assert (
        result.returncode == 0 and "differs from the version data.dvc tracks" in result.stderr
    )  # a warning, one line
    assert (
        run.environment["data"]["md5"] != md5
        and run.environment["data"]["dvc"]["rev"] is None
        and run.profile["dataset_size"] == 40
    )

    result, run = _train(repo, "--data-rev", "HEAD")
    assert result.returncode == 0, result.stderr
    assert run.environment["data"] == {"md5": md5, "dvc": {"repo": str(repo.resolve()), "path": "data", "rev": commit}}
    assert run.profile["dataset_size"] == 60


@needs_dvc
@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown", "--data-rev nosuch: no such revision"),
        ("outside", "not inside a DVC repository"),
        ("no-scm", "has no git (dvc init --no-scm)"),
    ],
)
def test_bad_data_revisions_are_one_clear_line(tmp_path, repo, case, message):
    if case == "outside":
        data, rev = EXAMPLE, "HEAD"
    elif case == "unknown":
        assert run_cli("data", "track", str(repo / "data")).returncode == 0
        data, rev = repo / "data", "nosuch"
    else:
        data = tmp_path / "plain" / "data"
        shutil.copytree(repo / "data", data)
        assert run_cli("data", "track", str(data)).returncode == 0 and (data.parent / ".dvc").is_dir()
        rev = "HEAD"
    result = run_cli("train", str(data), "-m", "head_only", "--data-rev", rev, "--no-track")
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
        result.stderr
    )


@needs_dvc
@pytest.mark.slow
@pytest.mark.integration
def test_the_pipeline_reproduces_end_to_end_and_then_does_nothing(tmp_path):
    """pipeline/ as a fresh clone has it: bench → export → fit → evaluate → register on the small suite, then a
    second `dvc repro` that runs nothing and leaves dvc.lock as it was."""
    root = tmp_path / "clone"
    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("out", "dvc.lock"))
    _git(root, "init", "-q")
    env = {
        **__import__("os").environ,
        "PATH": f"{REPO / '.venv' / 'bin'}:{__import__('os').environ['PATH']}",
        "METAPEFT_HOME": str(tmp_path / "home"),
    }
    dvc = [sys.executable, "-m", "dvc", "repro"]
    first = subprocess.run(dvc, cwd=root / "pipeline", env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    out = root / "pipeline" / "out"
    lock = (root / "pipeline" / "dvc.lock").read_text()
    assert {"bench", "export", "fit", "evaluate", "register"} <= set(__import__("yaml").safe_load(lock)["stages"])
    records = [json.loads(line) for line in __import__("gzip").open(out / "experience.jsonl.gz", "rt")]
    assert (
        len(records) == 9
        and {r["status"] for r in records} == {"finished"}
        and all(r["environment"]["data"]["md5"] for r in records)
    )
    assert (out / "selector" / "surrogate.safetensors").exists() and json.loads((out / "evaluation.json").read_text())[
        "tasks"
    ] == 3
    assert json.loads((out / "registered.json").read_text()) == {"version": 1, "alias": "challenger"}
    second = subprocess.run(dvc, cwd=root / "pipeline", env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "Data and pipelines are up to date" in second.stdout, second.stdout
    assert (root / "pipeline" / "dvc.lock").read_text() == lock
