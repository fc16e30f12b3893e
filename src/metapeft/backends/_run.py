"""A causal-LM run from data to experience: load (a prompt/completion task, or a classification task verbalised),
train on a backend, evaluate, save, and record the run in the experience store."""

from __future__ import annotations

import json
from pathlib import Path

from .._errors import MetapeftError, TaskError
from ._base import CausalResult


def is_causal_model(model: str | None) -> bool:
    """Whether ``model`` (a local folder) is a causal LM (its config's architecture ends in ``ForCausalLM``)."""
    if not model or not (Path(model).expanduser() / "config.json").is_file():
        return False
    config = json.loads((Path(model).expanduser() / "config.json").read_text())
    return any(str(a).endswith("ForCausalLM") for a in config.get("architectures") or [])


def load_for_causal(data: str | Path, seed: int = 0):
    """``data`` as a causal-LM task: prompt/completion (or text) rows as they are, labelled rows verbalised."""
    from ..tasks import load_causal_task, load_task, verbalise

    try:
        return verbalise(load_task(data, seed=seed))
    except TaskError:  # no text or no label column: prompt/completion or text rows (else their one-line error)
        return load_causal_task(data, seed=seed)


def train_causal(data: str | Path, method: str, hyperparameters: dict, model: str, *, backend: str = "torch", seed: int = 0, eval_size: int = 200,
                 output: str | Path | None = None, store=None, on_step=None) -> tuple[CausalResult, str]:  # fmt: skip
    """Train ``method`` on ``data`` with ``backend`` from the causal LM ``model`` and record the run.

    Returns:
        The result and the experience record's id. Causal-LM records carry no domain vector, so the selector does
        not learn from them yet: they are kept for when it does.
    """
    from .._environment import environment
    from ..experience import Experience, ExperienceStore
    from ..methods import get_method
    from . import get_backend

    runner = get_backend(backend)
    runner.check(method)
    if not is_causal_model(model):
        raise MetapeftError(f"--model {model}: not a causal LM folder (config.json with a *ForCausalLM architecture); "
                            "import one with `metapeft model import-llama2c`")  # fmt: skip
    task = load_for_causal(data, seed)
    config = get_method(method).make_config(hyperparameters)
    result = runner.fit(
        task, method, hyperparameters, model, seed=seed, eval_size=eval_size, output=output, on_step=on_step
    )
    metrics = {**result.metrics, **({"accuracy": result.metrics["exact_match"]} if task.labels else {})}
    record = Experience(task_name=task.name, method=method, model=Path(model).name, hyperparameters=config.as_dict(), metrics=metrics,
                        curve=[{"step": i + 1, "train_loss": x} for i, x in enumerate(result.losses)], status="finished", seed=seed,
                        profile={"task_type": "causal_lm", "dataset_size": len(task.train), "verbalised": bool(task.labels)},
                        environment={**environment(), "backend": backend}, tags={"backend": backend, "adapter_path": result.adapter_path})  # fmt: skip
    (store or ExperienceStore()).add(record)
    return result, record.id
