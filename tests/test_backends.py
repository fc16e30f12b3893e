"""The backend seam on causal-LM tasks: one contract test run over both backends (attach a method, train a few
steps, save, reload in the framework's own way, same figures), parity of the two backends' evaluation, and the
one-line errors of a backend that is missing or lacks a method."""

import importlib.util

import pytest

from conftest import run_cli, shared_path
from metapeft import MetapeftError
from metapeft.backends import get_backend
from metapeft.tasks import load_task, verbalise

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
        on_step=lambda s, loss: steps.append(s),
    )
    m = result.metrics
    assert steps == list(range(1, 13)) and len(result.losses) == 12
    assert m["loss"] < 0.6 * m["initial_loss"], m  # learning the label words
    reloaded = get_backend(backend).evaluate(task, s260k, result.adapter_path, eval_size=30)
    assert reloaded["loss"] == pytest.approx(m["loss"], abs=1e-4) and reloaded["exact_match"] == m["exact_match"]


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
    result = run_cli("train", str(tmp_path / "sums.jsonl"), "--model", str(s260k), "--backend", backend, "-m", "lora", "--max-steps", "8",
                     "--set", "batch_size=8", "--output", str(tmp_path / "out"), "--json", env={"METAPEFT_STORE": store})  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (
        data["backend"] == backend
        and data["metrics"]["loss"] < data["metrics"]["initial_loss"]
        and data["metrics"]["steps"] == 8
    )
    record = ExperienceStore(store).get(data["experience_id"])
    assert record.environment["backend"] == backend and record.profile == {
        "task_type": "causal_lm",
        "dataset_size": 36,
        "verbalised": False,
    }
    assert (tmp_path / "out" / ("adapters.safetensors" if backend == "mlx" else "adapter_model.safetensors")).is_file()
