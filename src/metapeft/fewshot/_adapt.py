"""``adapt``: learn a task from K examples per label, starting from the meta-initialisation."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._config import runs_dir
from .._errors import MetapeftError
from ..experience import Experience, ExperienceStore
from ..tasks import Task
from ._episodes import few_shot_split
from ._init import default_init, inner_loop_of, load_init, read_card
from ._learner import FewShotModel, adapt_in_place, predict, support_prototypes

FEW_SHOT_MAX = 16  # examples per label up to which a task is few-shot (the shots meta-training draws)


@dataclass
class AdaptResult:
    task: str
    method: str
    init: str  # "meta", "random" or the folder of a meta-initialisation
    shots: int
    seed: int
    support_size: int
    accuracy: float
    macro_f1: float
    adapt_time_s: float  # adaptation and prototypes, evaluation not counted
    test_examples: int
    adapter_path: str | None = None
    experience_id: str | None = None
    mlflow_run_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def adapt(
    task: Task | str | Path,
    shots: int = 8,
    *,
    init: str = "meta",
    method: str | None = None,
    seed: int = 0,
    model: str | None = None,
    output_dir: str | Path | None = None,
    save: bool = True,
    store: ExperienceStore | None = None,
    record: bool = True,
    track: bool = False,
) -> AdaptResult:
    """Adapt to ``task`` from ``shots`` training examples per label and evaluate on its whole held-out split.

    Args:
        task: The task (or its path, as ``load_task`` takes it); its training split is only drawn from (seeded,
            stratified).
        shots: Examples per label (a label with fewer uses what it has; ``notes`` says so).
        init: ``meta`` (the shipped meta-initialisation), ``random`` (the PEFT method's own initialisation, adapted
            the same way), or the folder of a meta-initialisation ``meta_train`` wrote.
        method: The PEFT method; must match the meta-initialisation's (default: its method, or lora).
        seed: Draws the support set and the adaptation's batches.
        model: Base model (default all-MiniLM-L6-v2); must match the meta-initialisation's.
        output_dir: Where the adapter, prototype head and ``metapeft.json`` go (default: a new run folder).
        save: Save the classifier (``load_classifier`` reloads it).
        store: Experience store the run is recorded in (default: the user's); ``record=False`` records nothing.
        track: Also log the run (and the saved adapter) to MLflow.

    Returns:
        An :class:`AdaptResult`.
    """
    from ..training import save_classifier, usable_output

    if shots < 1:
        raise MetapeftError(f"--shots must be at least 1, got {shots}")
    if not isinstance(task, Task):
        from ..tasks import load_task

        task = load_task(str(task))
    out = usable_output(output_dir) if save and output_dir else None
    folder = default_init() if init == "meta" else None if init == "random" else Path(init)
    if folder is not None:
        fsm, card = load_init(folder, method, model)
    else:  # the same method, settings and adaptation as the shipped initialisation, from the method's own start
        card = read_card(default_init())
        if method is not None and method != card["method"]:
            card = {**card, "method": method, "settings": {}}
        fsm = FewShotModel.build(card["method"], card["settings"], model)
    inner = inner_loop_of(card)
    support, notes = few_shot_split(task, shots, seed)
    torch.manual_seed(seed)
    started = time.perf_counter()
    adapt_in_place(fsm, support, inner, np.random.default_rng(seed))
    protos = support_prototypes(fsm, support, inner.max_length)
    adapt_time = time.perf_counter() - started
    predictions = predict(fsm, protos, task.test, inner.max_length)
    y = np.asarray(task.test.labels)
    from sklearn.metrics import f1_score

    accuracy, macro_f1 = float((predictions == y).mean()), float(f1_score(y, predictions, average="macro"))
    init_name = init if init in ("meta", "random") else str(Path(init).resolve())
    result = AdaptResult(
        task.name,
        card["method"],
        init_name,
        shots,
        seed,
        len(support),
        round(accuracy, 5),
        round(macro_f1, 5),
        round(adapt_time, 3),
        len(y),
        notes=notes,
    )
    hyperparameters = {
        **card["settings"],
        "learning_rate": inner.lr,
        "max_steps": inner.steps,
        "batch_size": inner.batch_size,
        "max_length": inner.max_length,
    }
    experience = Experience(
        task_name=task.name,
        task_fingerprint=task.fingerprint,
        method=card["method"],
        model=card["base_model"],
        hyperparameters=hyperparameters,
        seed=seed,
        tags={"few_shot": {"shots": shots, "init": init_name, "support_size": len(support)}},
    )
    if save:
        with torch.no_grad():
            fsm.classifier.head = torch.nn.Linear(protos.shape[1], protos.shape[0])
            fsm.classifier.head.weight.copy_(fsm.log_scale.exp() * protos)
            fsm.classifier.head.bias.zero_()
        out = out or runs_dir() / experience.id
        meta = {
            "method": card["method"],
            "label_names": task.label_names,
            "base_model": card["base_model"],
            "max_length": inner.max_length,
            "prompt_learning": fsm.classifier.prompt_learning,
            "pooling": "mean",
            "normalize": True,
            "hyperparameters": hyperparameters,
            "task": task.name,
            "task_fingerprint": task.fingerprint,
            "experience_id": experience.id,
            "few_shot": experience.tags["few_shot"],
        }
        save_classifier(fsm.classifier, out, kind="peft", meta=meta)
        result.adapter_path = str(out.resolve())
    if record:
        experience.status = "finished"
        experience.metrics = {
            "accuracy": result.accuracy,
            "macro_f1": result.macro_f1,
            "train_time_s": result.adapt_time_s,
            "eval_examples": len(y),
            "steps": inner.steps,
        }
        experience.tags["adapter_path"] = result.adapter_path
        result.experience_id = (store or ExperienceStore()).add(experience)
    if track:
        from ..tracking import MLflowTracker

        metrics = {
            "accuracy": result.accuracy,
            "macro_f1": result.macro_f1,
            "train_time_s": result.adapt_time_s,
            "eval_examples": len(y),
        }
        tags = {
            "metapeft.kind": "adapt",
            "metapeft.task": task.name,
            "metapeft.task_fingerprint": task.fingerprint,
            "metapeft.method": card["method"],
            "metapeft.base_model": card["base_model"],
            "metapeft.init": init_name,
            "metapeft.shots": shots,
            "metapeft.experience_id": result.experience_id,
        }
        result.mlflow_run_id = MLflowTracker().log_run(
            name=f"adapt/{card['method']}",
            params={**hyperparameters, "shots": shots, "init": init_name, "seed": seed},
            metrics=metrics,
            curve=[],
            tags=tags,
            artifact_dir=result.adapter_path,
        )
    return result


def few_shot_size(task: Task) -> int | None:
    """The most training examples any label of ``task`` has, when that is at most :data:`FEW_SHOT_MAX` (the task is
    few-shot: ``train`` and ``autotune`` adapt it from the meta-initialisation); ``None`` otherwise."""
    most = int(np.bincount(np.asarray(task.train.labels), minlength=task.num_labels).max())
    return most if most <= FEW_SHOT_MAX else None
