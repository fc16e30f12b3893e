"""``autotune``: profile → recommend → tune within a budget → train the pick with the full budget → register it.

Search trials train with each method's default budget unless ``search_steps`` shortens them; then the pick is
trained again with ``final_steps`` (default: its method's). When the search already used the final budget, the
pick's own run is the result: nothing is trained twice.

The registered model version carries the meta-learning decision as tags: the task embedding, the recommended
method and its confidence, the pick and why, and the Pareto set it came from.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable

from .._errors import MetapeftError
from ..experience import ExperienceStore
from ..tasks import Task, TaskProfile
from ._tune import TuneResult, tune


@dataclass
class AutotuneResult:
    task: str
    recommended: dict[str, Any]
    search: TuneResult | None  # None for a few-shot task, adapted from the meta-initialisation without a search
    final: dict[str, Any]
    registered: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def autotune(task: Task, *, trials: int = 4, time_budget: float | None = None, search_steps: int | None = None, final_steps: int | None = None,
             objectives: tuple[str, ...] = ("accuracy", "train_time_s", "peak_memory_mb"), prefer: str = "accuracy",
             max_memory_mb: float | None = None, max_time_s: float | None = None, model: str | None = None, store: ExperienceStore | None = None,
             registered_name: str | None = None, register: bool = True, eval_size: int = 300, final_eval_size: int | None = 1000,
             on_stage: Callable[[str], None] | None = None, on_trial=None, meta_init: bool = True) -> AutotuneResult:  # fmt: skip
    """Profile ``task``, recommend, search, train the pick with the final budget and register it (module docstring).

    A few-shot task (at most 16 training examples per label) is not searched when ``meta_init``: it is adapted from
    the shipped meta-initialisation (as :func:`metapeft.adapt`), and that run is registered.
    """
    from ..fewshot import few_shot_size
    from ..meta import MetaPEFT
    from ..methods import get_method
    from ..serving import register_classifier
    from ..training import RunConfig, train

    def stage(text: str) -> None:
        if on_stage:
            on_stage(text)

    store = store or ExperienceStore()
    if meta_init and (shots := few_shot_size(task)):
        return _autotune_few_shot(task, shots, model=model, store=store, register=register, registered_name=registered_name, stage=stage)
    meta = MetaPEFT(store, model=model)
    stage("profiling the task and loading the meta-learner")
    profile = meta.profile(task)
    meta.fit()
    ranking = meta.recommend(profile, max_memory_mb=max_memory_mb, max_time_s=max_time_s)
    stage(f"searching: {trials} trials, warm-started with {ranking[0].method}")
    search = tune(task, trials=trials, time_budget=time_budget, objectives=objectives, max_steps=search_steps, meta=meta, store=store, model=model,
                  prefer=prefer, max_memory_mb=max_memory_mb, max_time_s=max_time_s, eval_size=eval_size, final_eval_size=final_eval_size, on_trial=on_trial)  # fmt: skip
    pick = search.pick
    if pick is None:
        raise MetapeftError("no trial finished within your limits; raise --trials or loosen --max-memory/--max-time")
    steps = final_steps or get_method(pick.method).defaults().max_steps
    if steps == pick.metrics.get("steps"):  # the pick was trained with the final budget already: keep that run
        final = {"method": pick.method, "hyperparameters": pick.hyperparameters, "metrics": pick.metrics, "adapter_path": pick.adapter_path,
                 "experience_id": pick.experience_id, "mlflow_run_id": pick.mlflow_run_id, "trial": pick.number}  # fmt: skip
    else:
        stage(f"training the pick ({pick.method}, trial {pick.number}) for {steps} steps")
        run = RunConfig(model=model, eval_size=eval_size, final_eval_size=final_eval_size, tags={"study": search.study, "autotune": True})
        final = train(task, pick.method, {**pick.hyperparameters, "max_steps": steps}, run, profile=TaskProfile.from_dict(profile), store=store,
                      parent_run_id=search.parent_run_id).as_dict()  # fmt: skip
    registered = None
    if register and final["mlflow_run_id"]:
        confidence = next((r.confidence for r in ranking if r.method == pick.method), None)
        embedding = [round(float(x), 4) for x in meta.surrogate.embedder.predict([profile])[0]]
        tags = {
            "metapeft.task": task.name, "metapeft.task_fingerprint": task.fingerprint, "metapeft.task_embedding": json.dumps(embedding),
            "metapeft.recommended_method": ranking[0].method, "metapeft.recommended_confidence": ranking[0].confidence,
            "metapeft.method": pick.method, "metapeft.method_confidence": confidence, "metapeft.accuracy": final["metrics"].get("accuracy"),
            "metapeft.decision": f"{pick.method} (trial {pick.number}, proposed by {pick.source}) chosen from a Pareto set of {len(search.pareto)} by preference '{prefer}'{_limits(max_memory_mb, max_time_s)}",
            "metapeft.pareto": json.dumps([{"trial": t.number, "method": t.method, **{o: t.metrics.get(o) for o in objectives}} for t in search.pareto]),
            "metapeft.study": search.study, "metapeft.experience_id": final["experience_id"],
        }  # fmt: skip
        name = registered_name or "metapeft-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", task.name)
        version = register_classifier(name, final["mlflow_run_id"], final["adapter_path"], tags=tags, description=tags["metapeft.decision"])
        registered = {"name": name, "version": int(version.version), "tags": tags}
    top = ranking[0]
    return AutotuneResult(task.name, {"method": top.method, "confidence": top.confidence, "hyperparameters": top.hyperparameters}, search, final, registered)


def _autotune_few_shot(task: Task, shots: int, *, model: str | None, store: ExperienceStore, register: bool, registered_name: str | None, stage) -> AutotuneResult:
    from ..fewshot import adapt
    from ..serving import register_classifier

    stage(f"{task.name} has at most {shots} examples per label: adapting from the meta-initialisation instead of searching")
    result = adapt(task, shots, init="meta", model=model, store=store, track=register)
    final = {"method": result.method, "hyperparameters": {"shots": shots, "init": "meta"}, "metrics": {"accuracy": result.accuracy, "macro_f1": result.macro_f1,
             "train_time_s": result.adapt_time_s}, "adapter_path": result.adapter_path, "experience_id": result.experience_id, "mlflow_run_id": result.mlflow_run_id}  # fmt: skip
    registered = None
    if register and result.mlflow_run_id:
        decision = f"{result.method} adapted from the meta-initialisation: {task.name} has at most {shots} training examples per label (few-shot, no search)"
        tags = {"metapeft.task": task.name, "metapeft.task_fingerprint": task.fingerprint, "metapeft.method": result.method, "metapeft.init": "meta",
                "metapeft.shots": shots, "metapeft.accuracy": result.accuracy, "metapeft.decision": decision, "metapeft.experience_id": result.experience_id}  # fmt: skip
        name = registered_name or "metapeft-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", task.name)
        version = register_classifier(name, result.mlflow_run_id, result.adapter_path, tags=tags, description=decision)
        registered = {"name": name, "version": int(version.version), "tags": tags}
    return AutotuneResult(task.name, {"method": result.method, "confidence": None, "hyperparameters": final["hyperparameters"], "few_shot": True}, None, final, registered)


def _limits(max_memory_mb: float | None, max_time_s: float | None) -> str:
    named = [f"{v:g} {unit}" for v, unit in ((max_memory_mb, "MB"), (max_time_s, "s")) if v is not None]
    return f" within {' and '.join(named)}" if named else ""
