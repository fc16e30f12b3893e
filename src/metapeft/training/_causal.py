"""``train`` for a causal-LM task: the same run lifecycle as a classification run (validate, record before, train
with the callbacks, save, track, complete the record), on the backend the run asks for."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._config import runs_dir
from .._environment import environment
from .._errors import MetapeftError
from ..experience import Experience, ExperienceStore
from ..methods import get_method, with_default_steps
from ..tasks import CausalTask, TaskProfile, cached_profile
from ._callbacks import TimeBudget, TrainerCallback
from ._config import RunConfig

log = logging.getLogger("metapeft")


def backend_methods(backend: str) -> tuple[str, ...]:
    """The methods ``backend`` trains causal LMs with (what a search over a causal-LM task may propose)."""
    from ..backends import get_backend

    return get_backend(backend).methods


def train_causal(
    task: CausalTask,
    method: str,
    hyperparameters: dict[str, Any] | None,
    run: RunConfig,
    *,
    profile: TaskProfile | None,
    store: ExperienceStore | None,
    tracker,
    callbacks: Sequence[TrainerCallback],
    parent_run_id: str | None,
):
    """What :func:`~metapeft.training.train` does for a :class:`~metapeft.tasks.CausalTask` (its arguments). The
    record's ``accuracy`` is the exact match of greedy completions (for a verbalised classification task, its
    accuracy): what the selector ranks causal-LM runs by; ``loss`` and ``perplexity`` are beside it."""
    from .._backbone import backbone_info
    from ..backends import DEFAULT_MAX_LENGTH, get_backend, is_causal_model
    from ._run import TrainResult, _data_tags, _default_tracker, _log_failure, recorded_failures, usable_output

    backend = get_backend(run.backend)
    backend.check(method)
    if not is_causal_model(run.model):
        raise MetapeftError(
            f"--model {run.model}: not a causal LM folder (config.json with a *ForCausalLM architecture); "
            "import one with `metapeft model import-llama2c`"
        )
    spec = get_method(method)
    config = with_default_steps(spec.make_config(hyperparameters), len(task.train))
    spec.check_compatible(config, backbone_info(run.model))
    model_path = str(Path(run.model).expanduser().resolve())
    profile = dataclasses.replace(profile or cached_profile(task, run.model), backend=run.backend)
    out = usable_output(run.output_dir) if run.save and run.output_dir else None
    store = (store or ExperienceStore()) if run.record else None
    tags = {
        **run.tags,
        "backend": run.backend,
        "n_train": len(task.train),
        "eval_size": run.eval_size,
        "time_budget": run.time_budget,
    }
    experience = Experience(
        task_name=task.name,
        task_fingerprint=task.fingerprint,
        method=spec.name,
        model=Path(run.model).name,
        hyperparameters=config.as_dict(),
        profile=profile.as_dict(),
        environment={
            **environment(),
            "backend": run.backend,
            **({"data": task.meta["data"]} if "data" in task.meta else {}),
        },
        tags=tags,
        seed=run.seed,
    )
    if store is not None:
        store.start(experience)
    budget = [TimeBudget(run.time_budget)] if run.time_budget is not None else []
    alive = store.keep_alive(experience.id) if store is not None else contextlib.nullcontext()
    log_failure = (
        (lambda exc: _log_failure(tracker, task, spec, experience.model, config, experience.id, exc))
        if run.track
        else None
    )
    with recorded_failures(store, experience.id, f"{spec.name} on {task.name} with {run.backend}", log_failure):
        with alive:
            output = (out or runs_dir() / experience.id) if run.save else None
            result = backend.fit(
                task,
                method,
                config.as_dict(),
                model_path,
                seed=run.seed,
                eval_size=run.eval_size
                if run.final_eval_size is None
                else run.final_eval_size,  # one evaluation: the final
                output=output,
                callbacks=[*budget, *callbacks],
            )

    metrics = {
        **result.metrics,
        "accuracy": result.metrics["exact_match"],
        "max_length": config.max_length or DEFAULT_MAX_LENGTH,
    }
    curve = [{"step": i + 1, "train_loss": x} for i, x in enumerate(result.losses)]
    warnings, run_id = [], None
    if run.track:
        try:
            run_id = (tracker or _default_tracker()).log_run(
                name=f"{task.name}/{spec.name}",
                params={**config.as_dict(), "seed": run.seed, "backend": run.backend, "n_train": len(task.train)},
                metrics=metrics,
                curve=[],
                tags={
                    "metapeft.task": task.name,
                    "metapeft.task_fingerprint": task.fingerprint,
                    "metapeft.method": spec.name,
                    "metapeft.model": experience.model,
                    "metapeft.backend": run.backend,
                    "metapeft.experience_id": experience.id,
                    **run.tags,
                    **_data_tags(task.meta.get("data")),
                },
                artifacts={"task_profile.json": profile.as_dict(), "losses.json": result.losses},
                artifact_dir=result.adapter_path,
                parent_run_id=parent_run_id,
            )
        except Exception as exc:  # tracking trouble must not lose a finished run
            warnings.append(f"MLflow logging failed: {type(exc).__name__}: {exc}")
            log.warning(warnings[-1])
    if store is not None:
        store.finish(
            experience.id,
            metrics=metrics,
            curve=curve,
            tags={
                **tags,
                "adapter_path": result.adapter_path,
                "mlflow_run_id": run_id,
                "stopped_by": result.stopped_by,
            },
        )
    return TrainResult(
        task=task.name,
        method=spec.name,
        model=experience.model,
        hyperparameters=config.as_dict(),
        metrics=metrics,
        curve=curve,
        adapter_path=result.adapter_path,
        experience_id=experience.id if store is not None else None,
        mlflow_run_id=run_id,
        stopped_by=result.stopped_by,
        warnings=warnings,
    )
