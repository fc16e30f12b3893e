"""``autotune``: profile → recommend → tune within a budget → train the pick with the full budget →
register it.

Search trials train with the default budget (:func:`~metapeft.methods.default_steps`: about 5 epochs, 80..320 steps)
unless ``search_steps`` shortens them: a search at a shorter budget ranks how fast methods learn (BENCHMARKS.md "Step
budget": the 80-step pick ends 1.04 points behind the 320-step one on the mean). Then the pick is trained again with
``final_steps`` (default: the default budget); when the search already used that budget, the pick's own run is the
result: nothing is trained twice.

The registered model version carries the meta-learning decision as tags: the task embedding, the recommended
method and its confidence, the pick and why, and the Pareto set it came from.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from .._errors import MetapeftError, OptionError
from ..experience import ExperienceStore
from ..tasks import Task, TaskProfile
from ._config import OBJECTIVES, SearchConfig
from ._tune import TrialResult, TuneResult, switch_callbacks, tune


@dataclass
class AutotuneResult:
    task: str
    recommended: dict[str, Any]
    search: TuneResult | None  # None for a few-shot task, adapted from the meta-initialisation without a search
    final: dict[str, Any]
    registered: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def autotune(
    task: Task,
    search: SearchConfig | None = None,
    *,
    final_steps: int | None = None,
    register: bool = True,
    registered_name: str | None = None,
    meta_init: bool = True,
    store: ExperienceStore | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_trial: Callable[[TrialResult], None] | None = None,
) -> AutotuneResult:
    """Profile ``task``, recommend, search, train the pick with the final budget and register it (module docstring).

    Args:
        task: the task to fine-tune for.
        search: the search (default: 4 trials over accuracy, training time and peak memory). Its ``max_steps`` is
            each search trial's budget (default: the default budget); its ``run`` how the trials and the final run
            are trained.
        final_steps: the final run's training steps (default: about 5 epochs, 80..320 steps:
            :func:`~metapeft.methods.default_steps`).
        register: register the final adapter in MLflow's model registry (needs ``search.run.track``).
        registered_name: the registered model's name (default: ``metapeft-<task>``).
        meta_init: adapt a few-shot task (at most 16 training examples per label) from the shipped
            meta-initialisation, as :func:`metapeft.adapt`, instead of searching.
        store: where the runs are recorded (default: the user's store).
        on_stage: called with a line saying what starts next.
        on_trial: called with each search trial's result as it finishes.

    Returns:
        The recommendation, the search, the final run and the registered version (``None`` when not registered).
    """
    if final_steps is not None and (
        not isinstance(final_steps, int) or isinstance(final_steps, bool) or final_steps < 1
    ):
        raise OptionError("final_steps", f"must be a whole number of at least 1, got {final_steps!r}")
    config = search or SearchConfig(trials=4, objectives=OBJECTIVES)
    from ..fewshot import few_shot_size
    from ..meta import MetaPEFT

    def stage(text: str) -> None:
        if on_stage:
            on_stage(text)

    store = store or ExperienceStore()
    if meta_init and (shots := few_shot_size(task)):
        return _autotune_few_shot(
            task,
            shots,
            model=config.run.model,
            store=store,
            register=register and config.run.track,
            registered_name=registered_name,
            stage=stage,
        )
    meta = MetaPEFT(store, model=config.run.model)
    stage("profiling the task and loading the meta-learner")
    profile = meta.profile(task)
    meta.fit()
    ranking = meta.recommend(profile, max_memory_mb=config.max_memory_mb, max_time_s=config.max_time_s)
    stage(f"searching: {config.trials or 'as many'} trials, warm-started with {ranking[0].method}")
    search, final = search_and_train(
        task,
        config,
        meta=meta,
        profile=profile,
        store=store,
        final_steps=final_steps,
        on_trial=on_trial,
        on_stage=stage,
    )
    registered = None
    if register and final["mlflow_run_id"]:
        tags = decision_tags(task, profile, meta, [r.as_dict() for r in ranking], search, config, final)
        registered = register_decision(task.name, final, tags, registered_name)
    top = ranking[0]
    return AutotuneResult(
        task.name,
        {"method": top.method, "confidence": top.confidence, "hyperparameters": top.hyperparameters},
        search,
        final,
        registered,
    )


def _autotune_few_shot(
    task: Task,
    shots: int,
    *,
    model: str | None,
    store: ExperienceStore,
    register: bool,
    registered_name: str | None,
    stage,
) -> AutotuneResult:
    from ..fewshot import adapt

    stage(
        f"{task.name} has at most {shots} examples per label: adapting from the meta-initialisation instead "
        "of searching"
    )
    result = adapt(task, shots, init="meta", model=model, store=store, track=register)
    final = {
        "method": result.method,
        "hyperparameters": {"shots": shots, "init": "meta"},
        "metrics": {"accuracy": result.accuracy, "macro_f1": result.macro_f1, "train_time_s": result.adapt_time_s},
        "adapter_path": result.adapter_path,
        "experience_id": result.experience_id,
        "mlflow_run_id": result.mlflow_run_id,
    }
    registered = None
    if register and result.mlflow_run_id:
        decision = (
            f"{result.method} adapted from the meta-initialisation: {task.name} has at most {shots} training "
            "examples per label (few-shot, no search)"
        )
        tags = {
            "metapeft.task": task.name,
            "metapeft.task_fingerprint": task.fingerprint,
            "metapeft.method": result.method,
            "metapeft.init": "meta",
            "metapeft.shots": shots,
            "metapeft.accuracy": result.accuracy,
            "metapeft.decision": decision,
            "metapeft.experience_id": result.experience_id,
        }
        registered = register_decision(task.name, final, tags, registered_name)
    return AutotuneResult(
        task.name,
        {"method": result.method, "confidence": None, "hyperparameters": final["hyperparameters"], "few_shot": True},
        None,
        final,
        registered,
    )


def search_and_train(
    task: Task,
    config: SearchConfig,
    *,
    meta,
    profile: dict[str, Any],
    store: ExperienceStore,
    final_steps: int | None = None,
    on_trial: Callable[[TrialResult], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    tracker=None,
) -> tuple[TuneResult, dict[str, Any]]:
    """:func:`autotune`'s search and final run: search as ``config`` says, then train the pick with the final budget
    (or keep the pick's own run when the search used that budget already).

    Args:
        task: the task.
        config: the search.
        meta: the fitted :class:`~metapeft.meta.MetaPEFT` that guides the search.
        profile: the task's profile (``meta.profile(task)``).
        store: where the runs are recorded.
        final_steps: the final run's training steps (default: about 5 epochs, 80..320 steps:
            :func:`~metapeft.methods.default_steps`).
        on_trial: called with each search trial's result as it finishes.
        on_stage: called with a line saying what starts next.
        tracker: the MLflow tracker of the final run (default: the user's tracking store).

    Returns:
        The search and the final run (as :meth:`~metapeft.training.TrainResult.as_dict` gives it, plus ``trial``
        when the pick's own run is kept).
    """
    from ..methods import MethodConfig, default_steps
    from ..training import train

    search = tune(task, config, meta=meta, store=store, on_trial=on_trial)
    pick = search.pick
    if pick is None:
        raise MetapeftError(
            "no trial finished within the limits; search more trials or loosen the memory or time limit"
        )
    steps = final_steps or default_steps(
        len(task.train), pick.hyperparameters.get("batch_size") or MethodConfig.batch_size
    )
    if steps == pick.metrics.get("steps"):  # the pick was trained with the final budget already: keep that run
        final = {
            "method": pick.method,
            "hyperparameters": pick.hyperparameters,
            "metrics": pick.metrics,
            "adapter_path": pick.adapter_path,
            "experience_id": pick.experience_id,
            "mlflow_run_id": pick.mlflow_run_id,
            "trial": pick.number,
        }
    else:
        if on_stage:
            on_stage(f"training the pick ({pick.method}, trial {pick.number}) for {steps} steps")
        run = replace(config.run, tags={**config.run.tags, "study": search.study, "autotune": True})
        final = train(
            task,
            pick.method,
            {**pick.hyperparameters, "max_steps": steps},
            run,
            profile=TaskProfile.from_dict(profile),
            store=store,
            tracker=tracker,
            parent_run_id=search.parent_run_id,
            callbacks=switch_callbacks(meta, profile, config.switch, config.methods)(pick.method),
        ).as_dict()
    return search, final


def decision_tags(
    task: Task,
    profile: dict[str, Any],
    meta,
    ranking: list[dict[str, Any]],
    search: TuneResult,
    config: SearchConfig,
    final: dict[str, Any],
) -> dict[str, Any]:
    """The tags of the registered model version that say why it was chosen: the task embedding, the recommended method
    and its confidence, the pick and why, and the Pareto set it came from.

    Args:
        task: the task.
        profile: its profile.
        meta: the fitted :class:`~metapeft.meta.MetaPEFT` that recommended (its task embedding is read).
        ranking: the recommendation, best first, each as :meth:`~metapeft.meta.MethodRecommendation.as_dict` gives it
            (``method`` and ``confidence`` are read).
        search: the search.
        config: the search's options.
        final: the final run (as :func:`search_and_train` returns it).

    Returns:
        Tag name → value (strings and numbers; ``None`` where unknown).
    """
    pick = search.pick
    confidence = next((r["confidence"] for r in ranking if r["method"] == pick.method), None)
    embedding = [round(float(x), 4) for x in meta.surrogate.embedder.predict([profile])[0]]
    return {
        "metapeft.task": task.name,
        "metapeft.task_fingerprint": task.fingerprint,
        "metapeft.task_embedding": json.dumps(embedding),
        "metapeft.recommended_method": ranking[0]["method"],
        "metapeft.recommended_confidence": ranking[0]["confidence"],
        "metapeft.method": pick.method,
        "metapeft.method_confidence": confidence,
        "metapeft.accuracy": final["metrics"].get("accuracy"),
        "metapeft.decision": (
            f"{pick.method} (trial {pick.number}, proposed by {pick.source}) chosen from a Pareto set of "
            f"{len(search.pareto)} by preference '{config.prefer}'{_limits(config.max_memory_mb, config.max_time_s)}"
        ),
        "metapeft.pareto": json.dumps(
            [
                {"trial": t.number, "method": t.method, **{o: t.metrics.get(o) for o in config.objectives}}
                for t in search.pareto
            ]
        ),
        "metapeft.study": search.study,
        "metapeft.experience_id": final["experience_id"],
        **(
            {
                "metapeft.switches": json.dumps(
                    [{k: w[k] for k in ("step", "from", "to", "p_better")} for w in final["metrics"]["switches"]]
                )
            }
            if final["metrics"].get("switches")
            else {}
        ),
    }


def register_decision(
    task_name: str,
    final: dict[str, Any],
    tags: dict[str, Any],
    registered_name: str | None = None,
    *,
    folder: str | None = None,
    tracker=None,
) -> dict[str, Any]:
    """Register a final run's classifier in MLflow's model registry as a new version carrying the decision ``tags``
    (its description is ``metapeft.decision``).

    Args:
        task_name: the task's name (the default model name is ``metapeft-<task>``).
        final: the final run: its ``mlflow_run_id`` and ``adapter_path`` are read.
        tags: the version's tags (:func:`decision_tags`).
        registered_name: the registered model's name (default: ``metapeft-<task>``).
        folder: where the saved classifier is (default: ``final["adapter_path"]``).
        tracker: the MLflow tracker (default: the user's tracking store).

    Returns:
        ``{"name", "version", "tags"}`` of the new version.
    """
    from ..serving import register_classifier

    name = registered_name or "metapeft-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", task_name)
    version = register_classifier(
        name,
        final["mlflow_run_id"],
        folder or final["adapter_path"],
        tags=tags,
        description=tags["metapeft.decision"],
        tracker=tracker,
    )
    return {"name": name, "version": int(version.version), "tags": tags}


def _limits(max_memory_mb: float | None, max_time_s: float | None) -> str:
    named = [f"{v:g} {unit}" for v, unit in ((max_memory_mb, "MB"), (max_time_s, "s")) if v is not None]
    return f" within {' and '.join(named)}" if named else ""
