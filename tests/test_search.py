"""Search: real training trials on a tiny real task, Optuna studies in real SQLite storages, MLflow runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, run_cli


@pytest.fixture(scope="module")
def tiny_task(example_task):
    return example_task.subsample(32, seed=1)


def test_joint_space_round_trips_every_method():
    from metapeft.methods import get_method, list_methods
    from metapeft.search._space import joint_space, to_config, to_params

    methods = [m.name for m in list_methods()]
    space = joint_space(methods)
    for m in methods:
        method, hp = to_config(to_params(m, {}, space))
        defaults = {k: v for k, v in get_method(m).defaults().as_dict().items() if f"{m}.{k}" in space}
        assert method == m and hp == defaults
        for name, value in to_params(m, {}, space).items():
            assert name == "method" or space[name]._contains(space[name].to_internal_repr(value))


def test_tune_three_trials_store_track_and_pareto(tiny_task, tmp_path):
    from mlflow.tracking import MlflowClient

    from metapeft._config import tracking_uri
    from metapeft.experience import ExperienceStore
    from metapeft.meta import MetaPEFT
    from metapeft.search import SearchConfig, tune
    from metapeft.training import RunConfig

    store = ExperienceStore(f"sqlite:///{tmp_path / 'exp.db'}")
    meta = MetaPEFT(store)
    first = meta.recommend(tiny_task, budget={"max_steps": 4})[0]
    config = SearchConfig(
        trials=3,
        max_steps=4,
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        objectives=("accuracy", "train_time_s", "peak_memory_mb"),
        output_dir=tmp_path / "search",
        run=RunConfig(eval_size=40, final_eval_size=1000),
    )
    result = tune(tiny_task, config, store=store, meta=meta)
    assert [t.state for t in result.trials] == ["COMPLETE"] * 3
    # warm start: the surrogate's pick is the first trial
    assert result.trials[0].method == first.method and result.trials[0].source == "surrogate"
    assert result.trials[0].hyperparameters == {**first.hyperparameters, "max_steps": 4}
    ids = {t.experience_id for t in result.trials}
    assert len(ids) == 3 and all(store.get(i).status == "finished" for i in ids)
    # the curve (pruning) on 40 examples, the final accuracy the pick compares on the whole 300-example test split
    assert all(t.metrics["eval_examples"] == len(tiny_task.test) == 300 for t in result.trials)
    assert result.pareto and result.pick in result.pareto
    client = MlflowClient(tracking_uri())
    children = client.search_runs(
        [client.get_run(result.parent_run_id).info.experiment_id],
        f"tags.mlflow.parentRunId = '{result.parent_run_id}'",
    )
    assert {r.info.run_id for r in children} == {t.mlflow_run_id for t in result.trials}
    assert (tmp_path / "search" / "pareto.png").stat().st_size > 1000 and "Pareto set" in (
        tmp_path / "search" / "index.html"
    ).read_text()


def test_choose_honours_preference_and_limits():
    from metapeft.search._tune import TrialResult, choose

    a = TrialResult(0, "COMPLETE", "lora", metrics={"accuracy": 0.9, "train_time_s": 100, "peak_memory_mb": 3000})
    b = TrialResult(1, "COMPLETE", "ia3", metrics={"accuracy": 0.8, "train_time_s": 20, "peak_memory_mb": 2000})
    c = TrialResult(
        2, "COMPLETE", "loha", metrics={"accuracy": 0.85, "train_time_s": 120, "peak_memory_mb": 2000}
    )  # a dominates it
    assert choose([a, b, c], "accuracy", None, None) is a
    assert choose([a, b, c], "time", None, None) is b
    # c is the most accurate trial within 2,500 MB although a (over the limit) dominates it
    assert choose([a, b, c], "accuracy", 2500, None) is c
    assert choose([a, b, c], "accuracy", 100, None) is None


def test_search_config_validates_itself_and_names_the_field():
    from metapeft._errors import MethodError, OptionError
    from metapeft.search import SearchConfig
    from metapeft.training import RunConfig

    assert (
        SearchConfig().trials == 10 and SearchConfig(time_budget=60).trials is None
    )  # a time budget alone bounds the search
    assert SearchConfig(objectives=["accuracy", "peak_memory_mb"]).objectives == ("accuracy", "peak_memory_mb")
    cases = [
        (
            {"prefer": "time"},
            "prefer",
            "add it to the objectives",
        ),  # the pick is made within the Pareto set of the objectives
        ({"objectives": ("accuracy", "speed")}, "objectives", "distinct names among"),
        ({"objectives": ("accuracy", "accuracy")}, "objectives", "distinct names among"),
        ({"sampler": "magic"}, "sampler", "one of meta, gp, tpe, random"),
        ({"trials": 0}, "trials", "at least 1"),
        ({"max_steps": 2.5}, "max_steps", "whole number"),
        ({"warm_start": -1}, "warm_start", "at least 0"),
        ({"time_budget": 0}, "time_budget", "positive"),
        ({"max_memory_mb": -5}, "max_memory_mb", "positive"),
        ({"study_name": "../elsewhere"}, "study_name", "names a folder"),
        ({"methods": "lora"}, "methods", "list of method names"),
        ({"run": RunConfig(output_dir="x")}, "run", "output_dir"),
    ]
    for values, field, words in cases:
        with pytest.raises(OptionError, match=words) as caught:
            SearchConfig(**values)
        assert caught.value.option == field and "--" not in str(caught.value)  # the library does not name CLI flags
    with pytest.raises(MethodError, match="lora"):  # an unknown method is refused with the known ones
        SearchConfig(methods=["lorra"])
    assert set(SearchConfig.help()) == {f for f in SearchConfig.__dataclass_fields__}


@pytest.mark.slow  # several minutes on 2 cores: run by .ci/run's second step
def test_two_processes_share_one_sqlite_study(tiny_task, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    data = tmp_path / "tiny.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": t, "label": tiny_task.label_names[y]}) + "\n"
            for t, y in zip(tiny_task.train.texts, tiny_task.train.labels)
        )
    )
    # the default (meta) sampler: both processes load the meta-learner, race to warm-start the study and share it
    args = [
        "tune",
        str(data),
        "--trials",
        "4",
        "--max-steps",
        "3",
        "--eval-size",
        "30",
        "--storage",
        storage,
        "--study",
        "shared",
        "--json",
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", "from metapeft.cli import run; run()", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outputs]
    import optuna

    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert len(trials) == 4 and sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials), [
        (t.number, t.state.name, t.user_attrs) for t in trials
    ]
    # the pruner is fed each curve point at the step after it, while there is one (3 steps, points at steps 1, 2, 3)
    assert all(list(t.intermediate_values) == [1] for t in trials), [t.intermediate_values for t in trials]
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 4  # no configuration run twice
    assert trials[0].user_attrs["source"] == "surrogate"

    # the same study with other objectives is refused in one line
    other = run_cli(
        "tune",
        str(data),
        "--trials",
        "1",
        "--storage",
        storage,
        "--study",
        "shared",
        "--objectives",
        "accuracy,train_time",
    )
    assert other.returncode == 2 and "was started with objectives" in other.stderr and "Traceback" not in other.stderr


def test_tune_and_autotune_bad_input():
    bad = run_cli("tune", "example", "--objectives", "accuracy,speed")
    assert bad.returncode == 2 and "unknown objective 'speed'" in bad.stderr
    bad = run_cli("tune", "example", "--sampler", "magic", "--trials", "1")
    assert bad.returncode == 2 and "--sampler" in bad.stderr
    bad = run_cli("autotune", "example", "--trials", "0")
    assert bad.returncode == 2 and "--trials must be a whole number of at least 1" in bad.stderr
    # the library's field (max_steps) is reported as the flag this command calls it
    bad = run_cli("autotune", "example", "--search-steps", "0")
    assert bad.returncode == 2 and "--search-steps must be" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli("tune", "example", "--study", "../x")
    assert bad.returncode == 2 and "--study '../x' names a folder" in bad.stderr


def test_autotune_registers_a_model_version_with_the_decision(tiny_task, tmp_path):
    from mlflow.tracking import MlflowClient

    from metapeft._config import tracking_uri
    from metapeft.experience import ExperienceStore
    from metapeft.search import OBJECTIVES, SearchConfig, autotune
    from metapeft.training import RunConfig

    config = SearchConfig(
        trials=2, max_steps=3, objectives=OBJECTIVES, run=RunConfig(eval_size=40, final_eval_size=1000)
    )
    result = autotune(
        tiny_task,
        config,
        final_steps=4,
        store=ExperienceStore(f"sqlite:///{tmp_path / 'a.db'}"),
        registered_name="tiny-test",
    )
    assert result.registered["name"] == "tiny-test" and result.final["metrics"]["steps"] == 4
    version = MlflowClient(tracking_uri()).get_model_version("tiny-test", str(result.registered["version"]))
    assert version.tags["metapeft.method"] == result.search.pick.method
    assert len(json.loads(version.tags["metapeft.task_embedding"])) > 0 and json.loads(version.tags["metapeft.pareto"])
    assert "chosen from a Pareto set" in version.tags["metapeft.decision"]
    import mlflow

    from metapeft.tracking import MLflowTracker

    with MLflowTracker(tracking_uri()).fluent():
        model = mlflow.pyfunc.load_model(
            f"models:/tiny-test/{result.registered['version']}"
        )  # the registered adapter is a pyfunc model
    labels = model.predict(tiny_task.test.texts[:5])
    assert len(labels) == 5 and set(labels) <= set(tiny_task.label_names)


def test_processes_started_together_open_one_new_sqlite_storage(tmp_path):
    # both create the schema of a new database at once; without a retry one of them failed about a third of the time
    code = "import sys; from metapeft.search._tune import _open_storage; _open_storage(sys.argv[1])"
    for i in range(5):
        url = f"sqlite:///{tmp_path / f'race{i}.db'}"
        procs = [
            subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True) for _ in range(2)
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), errors


@pytest.mark.parametrize("objectives", [("accuracy",), ("accuracy", "train_time_s", "peak_memory_mb")])
def test_meta_sampler_does_not_repeat_failures_and_keeps_to_limits(example_profile, objectives):
    """A failed configuration is not proposed again, a method the model cannot take not at all, and none the
    surrogate expects over the user's memory limit while others are left — with one objective or three."""
    import numpy as np
    import optuna

    from metapeft.meta import MetaPEFT
    from metapeft.search import MetaSampler
    from metapeft.search._space import joint_space, to_params

    surrogate, profile = MetaPEFT(include_own=False).fit().surrogate, example_profile.as_dict()
    methods = ["prefix_tuning", "lora", "full_finetuning"]
    space = joint_space(methods)

    def asked(sampler, failed_method: str, error_type: str) -> list[dict]:
        study = optuna.create_study(directions=["maximize"] + ["minimize"] * (len(objectives) - 1), sampler=sampler)
        failed = to_params(failed_method, {}, space)
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.FAIL,
                params=failed,
                distributions={k: space[k] for k in failed},
                user_attrs={"error_type": error_type},
            )
        )
        proposals = [sampler.sample_relative(study, study.ask(space)._cached_frozen_trial, space) for _ in range(5)]
        assert failed not in proposals
        return proposals

    assert all(
        p["method"] != "prefix_tuning"
        for p in asked(
            MetaSampler(surrogate, profile, methods, objectives, seed=0), "prefix_tuning", "IncompatibleMethodError"
        )
    )
    free = MetaSampler(surrogate, profile, methods, objectives, seed=0)

    def memory(proposals: list[dict]) -> np.ndarray:
        return free.predict(proposals, [])[0][:, 2]

    limit = float(memory(asked(free, "lora", "MethodError")).max()) - 1.0  # one MB under its dearest proposal
    limited = MetaSampler(surrogate, profile, methods, objectives, seed=0, max_memory_mb=limit)
    assert memory(asked(limited, "lora", "MethodError")).max() <= limit


def test_hypervolume_gain_is_exact_and_nothing_for_dominated_points():
    """The multi-objective meta sampler scores a candidate by the hypervolume it adds to the trials' front."""
    import numpy as np

    from metapeft.search._sampler import _hypervolume_gain

    front = np.array([[0.5, 0.5]])
    points = np.array([[0.6, 0.6], [0.5, 0.5], [0.2, 0.9], [1.2, 0.0], [0.4, 0.4]])
    # [0.2, 0.9] adds the strip (0.5 − 0.2) × (1.1 − 0.9); [0.4, 0.4] adds 0.7² − 0.6²;
    # past the reference: nothing
    assert _hypervolume_gain(points, front) == pytest.approx([0.0, 0.0, 0.06, 0.0, 0.13])
    assert _hypervolume_gain(np.array([[0.1, 0.1]]), np.empty((0, 2))) == pytest.approx([1.0])


def test_of_two_trials_started_at_once_at_the_shared_total_only_the_first_counts():
    """Processes sharing a study each check for room before starting a trial; the storage numbers the trials in
    the order they start, so the later of two started at once finds the total reached and is not run."""
    import optuna

    from metapeft.search._tune import _counted_before, _finished

    study = optuna.create_study()
    for value in (0.1, 0.2, 0.3):
        study.add_trial(optuna.trial.create_trial(value=value))
    study.enqueue_trial({"x": 1.0})
    assert _finished(study) == 3  # a waiting (enqueued) trial does not count
    first, second = study.ask(), study.ask()  # both saw 3 of --trials 4
    assert _counted_before(study, first.number) == 3 and _counted_before(study, second.number) == 4
    second.set_user_attr("over_total", True)  # what tune's objective does with it
    study.tell(second, state=optuna.trial.TrialState.FAIL)
    assert _finished(study) == 4  # the three finished and the first: the unrun one counts nowhere


@pytest.mark.slow
def test_a_sigkilled_search_resumes_to_its_full_trial_count(tiny_task, tmp_path):
    """A tune killed (SIGKILL) during a trial: its parent run is closed as KILLED, and the same command started again
    redoes the cut trial (failed and queued again, not counted) and stops at the full --trials with a FINISHED
    parent."""
    import os
    import signal
    import time

    import optuna
    from mlflow.tracking import MlflowClient

    from metapeft.experience import ExperienceStore
    from metapeft.tracking import MLflowTracker

    home = tmp_path / "home"
    env = {**os.environ, "METAPEFT_HOME": str(home)}
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    data = tmp_path / "tiny.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": t, "label": tiny_task.label_names[y]}) + "\n"
            for t, y in zip(tiny_task.train.texts, tiny_task.train.labels)
        )
    )
    args = [
        sys.executable,
        "-c",
        "from metapeft.cli import run; run()",
        "tune",
        str(data),
        "--trials",
        "3",
        "--max-steps",
        "12",
        "--eval-size",
        "30",
        "--final-eval-size",
        "30",
        "--sampler",
        "random",
        "--seed",
        "1",
        "--storage",
        storage,
        "--study",
        "killed",
        "--json",
    ]
    proc = subprocess.Popen(
        args, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            try:
                seen = optuna.load_study(study_name="killed", storage=storage).trials
            except KeyError:  # the study is not created yet
                seen = []
            states = {t.number: t.state.name for t in seen}
            # kill in training: trial 1 running with all its settings drawn (a kill while it is still drawing them
            # would leave the retry only the part drawn, and a fresh draw for the rest)
            if (
                states.get(0) == "COMPLETE"
                and states.get(1) == "RUNNING"
                and len(seen[1].params) == len(seen[0].params)
            ):
                break
            time.sleep(0.3)
        assert proc.poll() is None and states.get(1) == "RUNNING", states
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking)
    parent = optuna.load_study(study_name="killed", storage=storage).user_attrs["mlflow_parent_run_id"]
    assert client.get_run(parent).info.status == "RUNNING"
    assert MLflowTracker(tracking).close_dead_parents() == 1 and client.get_run(parent).info.status == "KILLED"

    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    trials = optuna.load_study(study_name="killed", storage=storage).trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 3 and states[1] == "FAIL", states
    redone = [t for t in trials if t.system_attrs.get("retry_history") == [1]]
    assert len(redone) == 1 and redone[0].params == trials[1].params and redone[0].state.name in ("COMPLETE", "PRUNED")
    assert len(json.loads(again.stdout)["trials"]) == 4
    assert client.get_run(parent).info.status == "FINISHED"
    statuses = sorted(r.status for r in ExperienceStore(f"sqlite:///{home / 'experience.db'}").query())
    assert statuses == ["finished"] * 3 + ["interrupted"]
