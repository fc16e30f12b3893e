"""The backend seam on causal-LM tasks: one contract test run over both backends (attach a method, train a few
steps with the trainer's callbacks, save, reload in the framework's own way, same figures; a callback's Stop ends
the run), parity of the two backends' evaluation, the one-line errors of a backend that is missing or lacks a
method, and a causal-LM task through `train`, `recommend` and a 2-trial `tune`."""

import importlib.util

import pytest
from conftest import run_cli, shared_path

from metapeft import MetapeftError
from metapeft.backends import get_backend
from metapeft.tasks import load_task, verbalise
from metapeft.training import Progress, Stop, TrainerCallback

MLX = pytest.mark.skipif(importlib.util.find_spec("mlx_lm") is None, reason="needs the mlx extra")
BACKENDS = ["torch", pytest.param("mlx", marks=[pytest.mark.requires_mlx, MLX])]


@pytest.fixture(scope="module")
def s260k(tmp_path_factory):
    out = tmp_path_factory.mktemp("s260k") / "model"
    assert (
        run_cli("model", "import-llama2c", str(shared_path("models", "stories260K")), "-o", str(out)).returncode == 0
    )
    return out


@pytest.fixture(scope="module")
def task():
    """sst2-mini as generation: 'text\\nLabel:' → ' positive' / ' negative'."""
    return verbalise(load_task("example")).subsample(128)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["lora", "full_finetuning"])
def test_a_backend_trains_saves_and_reloads_with_the_same_figures(backend, method, s260k, task, tmp_path):
    steps = []
    settings = {
        "max_steps": 12,
        "batch_size": 8,
        "learning_rate": 5e-3 if method == "lora" else 1e-3,
        "target_modules": "all-linear",
    }
    if method == "full_finetuning":
        settings.pop("target_modules")
    result = get_backend(backend).fit(
        task,
        method,
        settings,
        s260k,
        eval_size=30,
        output=tmp_path / "adapter",
        callbacks=[Progress(lambda step, total, numbers: steps.append((step, total)))],
    )
    m = result.metrics
    assert steps == [(i, 12) for i in range(1, 13)] and len(result.losses) == 12 and result.stopped_by == "max_steps"
    assert m["loss"] < 0.6 * m["initial_loss"], m  # learning the label words
    reloaded = get_backend(backend).evaluate(task, s260k, result.adapter_path, eval_size=30)
    assert reloaded["loss"] == pytest.approx(m["loss"], abs=1e-4) and reloaded["exact_match"] == m["exact_match"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_callback_stops_a_backend_run(backend, s260k, task):
    class StopAtFive(TrainerCallback):
        def should_stop(self, state):
            return Stop("enough") if state.step == 5 else None

    result = get_backend(backend).fit(
        task, "lora", {"max_steps": 40, "batch_size": 4}, s260k, eval_size=10, callbacks=[StopAtFive()]
    )
    assert result.stopped_by == "enough" and result.metrics["steps"] == 5 and result.metrics["trainable_params"] > 0


@pytest.mark.requires_mlx
@MLX
def test_both_backends_score_the_untrained_model_alike(s260k, task):
    torch_loss = get_backend("torch").evaluate(task, s260k, eval_size=30)
    mlx_loss = get_backend("mlx").evaluate(task, s260k, eval_size=30)
    assert (
        mlx_loss["loss"] == pytest.approx(torch_loss["loss"], abs=1e-4)
        and mlx_loss["exact_match"] == torch_loss["exact_match"]
    )


def test_a_missing_backend_or_method_is_one_line(task, s260k, monkeypatch):
    with pytest.raises(MetapeftError, match=r"--backend mlx has no method 'ia3'; it has: lora, dora, full_finetuning"):
        if importlib.util.find_spec("mlx_lm") is None:
            monkeypatch.setattr("metapeft.backends.MLXBackend._available", lambda self: True)
        get_backend("mlx").fit(task, "ia3", {}, s260k)
    monkeypatch.setattr("metapeft.backends.MLXBackend._available", lambda self: False)
    with pytest.raises(MetapeftError, match=r"pip install 'metapeft\[mlx\]'"):
        get_backend("mlx").fit(task, "lora", {}, s260k)
    with pytest.raises(MetapeftError, match="--backend must be one of torch, mlx"):
        get_backend("jax")


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_train_takes_a_prompt_completion_task_on_either_backend(backend, s260k, tmp_path):
    import json

    from metapeft.experience import ExperienceStore

    rows = [{"prompt": f"Q: what is {i} plus {i}?\nA:", "completion": f" {2 * i}"} for i in range(40)]
    (tmp_path / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    result = run_cli(
        "train",
        str(tmp_path / "sums.jsonl"),
        "--model",
        str(s260k),
        "--backend",
        backend,
        "-m",
        "lora",
        "--max-steps",
        "8",
        "--set",
        "batch_size=8",
        "--output",
        str(tmp_path / "out"),
        "--json",
        env={"METAPEFT_STORE": store},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    m = data["metrics"]
    assert m["loss"] < m["initial_loss"] and m["steps"] == 8 and m["accuracy"] == m["exact_match"]
    record = ExperienceStore(store).get(data["experience_id"])
    assert (
        record.status == "finished" and record.environment["backend"] == backend and record.tags["backend"] == backend
    )
    assert (
        record.profile["task_type"] == "causal_lm"
        and record.profile["backend"] == backend
        and record.profile["dataset_size"] == 36
    )
    assert record.profile["num_classes"] == 0  # 36 different sums: free text, not label words
    assert (tmp_path / "out" / ("adapters.safetensors" if backend == "mlx" else "adapter_model.safetensors")).is_file()


@pytest.mark.slow  # ~2 min; CI runs it with -m slow (and with -m requires_mlx for MLX)
@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_recommend_and_a_two_trial_tune_on_a_causal_task(backend, s260k, tmp_path):
    """Generation is ranked over the backend's methods, and a search's trials are real runs on the causal LM, on
    that backend, recorded as such."""
    import json

    from metapeft.experience import ExperienceStore

    data, env = "benchmarks/causal-suite/trec6-gen", {"METAPEFT_STORE": f"sqlite:///{tmp_path / 'runs.db'}"}
    methods = {"torch": "lora,ia3", "mlx": "lora,dora"}[backend]
    ranked = run_cli("recommend", data, "--model", str(s260k), "--backend", backend, "--json", env=env)
    assert ranked.returncode == 0, ranked.stderr
    ranking = json.loads(ranked.stdout)["recommendations"]
    assert sorted(r["method"] for r in ranking) == sorted(get_backend(backend).methods)
    # fmt: off
    found = run_cli("tune", data, "--model", str(s260k), "--backend", backend, "-n", "2", "--methods", methods,
                    "--max-steps", "6", "--eval-size", "20", "--final-eval-size", "20", "--json", env=env)
    # fmt: on
    assert found.returncode == 0, found.stderr
    trials = json.loads(found.stdout)["trials"]
    assert len(trials) == 2 and all(t["state"] == "COMPLETE" for t in trials), trials
    for t in trials:
        record = ExperienceStore(env["METAPEFT_STORE"]).get(t["experience_id"])
        assert record.profile["task_type"] == "causal_lm" and record.profile["num_classes"] == 6
        assert record.profile["backend"] == backend and record.hyperparameters["max_steps"] == 6
    if backend == "torch":  # a method the other backend lacks: one line
        lacking = run_cli("tune", data, "--model", str(s260k), "--backend", "mlx", "--methods", "ia3", env=env)
        assert lacking.returncode == 2 and "lacks; it has: lora, dora, full_finetuning" in lacking.stderr


def test_the_meta_learner_and_the_search_never_import_a_backend():
    """They read a run's backend as a recorded name; which frameworks exist is the training side's business."""
    import ast
    from pathlib import Path

    import metapeft

    root = Path(metapeft.__file__).parent
    for package in ("meta", "search"):
        for path in (root / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                    assert not any("backends" in n or n.startswith(("mlx", "mlx_lm")) for n in names), (path, names)


def test_the_backend_and_generation_are_features_and_set_apart_task_instances():
    from metapeft.experience import Experience, cell_key
    from metapeft.meta._features import PROFILE_FEATURES, profile_vector

    base = {"dataset_size": 300, "num_classes": 6, "task_type": "causal_lm", "fingerprint": "f"}
    torch_x, mlx_x = profile_vector({**base, "backend": "torch"}), profile_vector({**base, "backend": "mlx"})
    column = list(PROFILE_FEATURES).index
    assert torch_x[column("causal_lm")] == mlx_x[column("causal_lm")] == 1.0
    assert (torch_x[column("backend_mlx")], mlx_x[column("backend_mlx")]) == (0.0, 1.0)
    assert profile_vector({**base, "task_type": "single"})[column("causal_lm")] == 0.0

    def run(backend):
        return Experience(
            task_name="t",
            method="lora",
            model="s260k",
            hyperparameters={"max_steps": 6, "batch_size": 8},
            profile={**base, "backend": backend},
        )

    assert cell_key(run("torch")) != cell_key(run("mlx"))  # one backend's runs do not set the other's task level
