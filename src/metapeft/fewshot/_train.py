"""``meta_train``: meta-learn a PEFT initialisation over a suite's tasks, resumable, tracked in MLflow."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .._errors import MetapeftError
from ._episodes import TaskConfig, sample_episode
from ._init import card_for, load_init, save_init
from ._learner import ALGORITHMS, OUTER_OPTIMIZERS, FewShotModel, InnerLoop, ReptileLearner, adapt_in_place

CHECKPOINT = "checkpoint"
OUTER = "outer_optimizer.safetensors"
REGISTERED_NAME = "metapeft-fewshot-init"


@dataclass
class MetaTrainConfig:
    """Everything ``meta-train`` takes (the YAML file's keys are these fields' names).

    Args:
        method: PEFT method whose parameters are meta-learned.
        settings: The method's hyperparameters (rank, target modules…); its defaults otherwise.
        model: Base model (default all-MiniLM-L6-v2).
        shots: K of each episode, drawn from these.
        classes: N of each episode (fewer on tasks with fewer labels).
        query: Query examples per label.
        iterations: Outer updates.
        meta_batch: Episodes per outer update.
        outer_lr: Outer step size, decayed linearly to 0 over the iterations.
        algorithm: reptile or fomaml.
        outer_optimizer: sgd or adam (see :class:`ReptileLearner`).
        inner: The adaptation each episode gets during meta-training (no steps: first-order MAML is then episodic
            prototypical-network training).
        adaptation: The adaptation ``adapt`` uses with the result and validation measures (default: ``inner``).
        tasks: Suite tasks to meta-train on (default: all but ``exclude``).
        exclude: Suite tasks never used (evaluation tasks).
        validation_episodes: Fixed episodes, drawn from the meta-training tasks' held-out splits, scored every
            ``validate_every`` iterations (the validation curve).
        validate_every: Iterations between validations.
        checkpoint_every: Iterations between checkpoints (a killed run resumes from the last).
        seed: Seeds episodes, batches and dropout.
    """

    method: str = "lora"
    settings: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    shots: list[int] = field(default_factory=lambda: [4, 8, 16])
    classes: int = 5
    query: int = 8
    iterations: int = 300
    meta_batch: int = 4
    outer_lr: float = 0.5
    algorithm: str = "reptile"
    outer_optimizer: str = "sgd"
    inner: InnerLoop = field(default_factory=InnerLoop)
    adaptation: InnerLoop | None = None
    tasks: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    validation_episodes: int = 8
    validate_every: int = 25
    checkpoint_every: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.inner, dict):
            self.inner = InnerLoop(**self.inner)
        if isinstance(self.adaptation, dict):
            self.adaptation = InnerLoop(**self.adaptation)
        if not self.shots or min(self.shots) < 1:
            raise MetapeftError(f"shots must be positive numbers, got {self.shots}")
        for name in ("iterations", "meta_batch", "validate_every", "checkpoint_every", "classes", "query"):
            if getattr(self, name) < 1:
                raise MetapeftError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.algorithm not in ALGORITHMS:
            raise MetapeftError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if self.outer_optimizer not in OUTER_OPTIMIZERS:
            raise MetapeftError(
                f"outer_optimizer must be one of {', '.join(OUTER_OPTIMIZERS)}, got {self.outer_optimizer!r}"
            )
        if self.outer_lr <= 0:
            raise MetapeftError(f"outer_lr must be positive, got {self.outer_lr}")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> MetaTrainConfig:
        """The config in a YAML file, with ``overrides`` (those not None) on top; unknown keys are refused."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise MetapeftError(f"{path}: not a readable YAML file ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise MetapeftError(f"{path}: a meta-train config is a mapping of option names to values")
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - known):
            raise MetapeftError(f"{path}: unknown options {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls.from_dict({**data, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def from_dict(cls, data: dict) -> MetaTrainConfig:
        try:
            return cls(**data)
        except TypeError as exc:
            raise MetapeftError(f"meta-train config: {exc}") from None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class MetaTrainResult:
    output: str
    iterations: int
    validation: list[dict]
    history: list[dict]
    mlflow_run_id: str | None = None
    model_version: str | None = None


def meta_train(
    suite: str | Path,
    config: MetaTrainConfig,
    output: str | Path,
    *,
    track: bool = True,
    on_iteration: Callable[[int, int, dict], None] | None = None,
) -> MetaTrainResult:
    """Meta-train ``config.method``'s parameters over the tasks of ``suite`` into ``output`` (resumed from its
    checkpoint when it holds one of the same config). Returns the curve; the meta-initialisation is ``output``."""
    from .._backbone import resolve_model
    from ..tasks import load_suite

    output = Path(output)
    entries = {e.name: e for e in load_suite(suite)}
    if unknown := sorted((set(config.exclude) | set(config.tasks or ())) - set(entries)):
        raise MetapeftError(
            f"tasks not in the suite: {', '.join(unknown)}; the suite has {', '.join(sorted(entries))}"
        )
    names = [n for n in (config.tasks or entries) if n not in config.exclude]
    if not names:
        raise MetapeftError("no task left to meta-train on after --exclude")
    tasks = {n: entries[n].load() for n in names}
    base_model = resolve_model(config.model)[0]

    checkpoint = output / CHECKPOINT
    state = _read_state(checkpoint, config)
    if state is not None:
        model, _ = load_init(checkpoint, config.method, config.model)
    else:
        if output.exists() and any(output.iterdir()):
            raise MetapeftError(
                f"output folder {output} is not empty and holds no checkpoint of this config; choose a new folder"
            )
        model = FewShotModel.build(config.method, config.settings, config.model)
        state = {"iteration": 0, "history": [], "validation": [], "mlflow_run_id": None}
    learner = ReptileLearner(
        model, config.inner, config.outer_lr, config.algorithm, config.seed, config.outer_optimizer
    )
    if (checkpoint / OUTER).is_file() and state["iteration"]:
        learner.load_outer_state(load_file(str(checkpoint / OUTER)))
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    if "rng" in state:
        rng.bit_generator.state = state["rng"]
        learner._rng.bit_generator.state = state["learner_rng"]
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    validation = _validation_episodes(tasks, config)

    tracker = _Tracker(state.get("mlflow_run_id"), config, names, base_model) if track else None
    state["mlflow_run_id"] = tracker.run_id if tracker else None

    def card():
        return card_for(
            model,
            config.method,
            model_settings(model, config),
            base_model,
            config.adaptation or config.inner,
            tasks=names,
            excluded=config.exclude,
            config=config.as_dict(),
            iterations=state["iteration"],
            validation=state["validation"],
            history_tail=state["history"][-5:],
        )

    try:
        if state["iteration"] == 0 and not state["validation"]:
            state["validation"].append(
                {"iteration": 0, "accuracy": _validate(learner, validation, config.adaptation or config.inner)}
            )
        while state["iteration"] < config.iterations:
            i = state["iteration"]
            episodes = []
            for _ in range(config.meta_batch):
                name = names[rng.integers(len(names))]
                task_config = TaskConfig(
                    name, min(config.classes, tasks[name].num_labels), int(rng.choice(config.shots)), config.query
                )
                episodes.append(sample_episode(tasks[name], task_config, rng))
            started = time.perf_counter()
            step = learner.meta_train_step(episodes, outer_lr=config.outer_lr * (1 - i / config.iterations))
            numbers = {**asdict(step), "seconds": round(time.perf_counter() - started, 2)}
            state["history"].append({"iteration": i + 1, **numbers})
            state["iteration"] = i + 1
            if (i + 1) % config.validate_every == 0 or i + 1 == config.iterations:
                state["validation"].append(
                    {"iteration": i + 1, "accuracy": _validate(learner, validation, config.adaptation or config.inner)}
                )
                numbers["validation_accuracy"] = state["validation"][-1]["accuracy"]
            if tracker:
                tracker.log(i + 1, numbers)
            if (i + 1) % config.checkpoint_every == 0 or i + 1 == config.iterations:
                state.update(
                    rng=rng.bit_generator.state,
                    learner_rng=learner._rng.bit_generator.state,
                    torch_rng=torch.get_rng_state().tolist(),
                )
                _write_state(learner, checkpoint, state, card())
            if on_iteration:
                on_iteration(i + 1, config.iterations, numbers)
    except KeyboardInterrupt:
        if tracker:
            tracker.end("KILLED")
        raise
    save_init(model, output, card())
    version = tracker.finish(output) if tracker else None
    return MetaTrainResult(
        str(output.resolve()),
        state["iteration"],
        state["validation"],
        state["history"],
        state["mlflow_run_id"],
        version,
    )


def model_settings(model: FewShotModel, config: MetaTrainConfig) -> dict:
    from ..methods import get_method

    return get_method(config.method).make_config(config.settings).as_dict()


def _validation_episodes(tasks: dict, config: MetaTrainConfig) -> list:
    """Fixed episodes from the meta-training tasks' held-out splits (examples meta-training never draws)."""
    from ..tasks import Task

    rng = np.random.default_rng(10_000 + config.seed)
    episodes = []
    names = sorted(tasks)
    for i in range(config.validation_episodes):
        task = tasks[names[i % len(names)]]
        held_out = Task(task.name, task.label_names, task.test, task.test)
        shots = sorted(config.shots)[len(config.shots) // 2]
        try:
            episodes.append(
                sample_episode(
                    held_out, TaskConfig(task.name, min(config.classes, task.num_labels), shots, config.query), rng
                )
            )
        except MetapeftError:
            continue  # a held-out split too small for an episode
    return episodes


def _validate(learner: ReptileLearner, episodes: list, loop: InnerLoop) -> float:
    """Mean query accuracy after adaptation by ``loop`` on ``episodes``; the initialisation is left as it was."""
    if not episodes:
        return float("nan")
    params = learner.model.meta_parameters()
    start = {n: p.detach().clone() for n, p in params.items()}
    accuracies = []
    for episode in episodes:
        adapt_in_place(learner.model, episode.support, loop, np.random.default_rng(0))
        accuracies.append(learner.query(episode, grad=False, max_length=loop.max_length)[1])
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(start[n])
    return round(float(np.mean(accuracies)), 5)


def _read_state(checkpoint: Path, config: MetaTrainConfig) -> dict | None:
    path = checkpoint / "state.json"
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except ValueError:
        raise MetapeftError(f"{path} is damaged; remove {checkpoint} to start over") from None
    if state.get("config") != json.loads(json.dumps(config.as_dict())):
        raise MetapeftError(
            f"{checkpoint} holds a meta-training with another config; use the same options to resume, or a "
            "new output folder"
        )
    return state


def _write_state(learner: ReptileLearner, checkpoint: Path, state: dict, card: dict) -> None:
    """The initialisation and the outer optimiser's state, then the state that says which iteration it is (written
    last: a kill between them resumes from the previous state with a newer initialisation, at worst redoing a few
    iterations' episodes)."""
    save_init(learner.model, checkpoint, card)
    if outer := learner.outer_state():
        save_file(outer, str(checkpoint / (OUTER + ".tmp")))
        (checkpoint / (OUTER + ".tmp")).replace(checkpoint / OUTER)
    tmp = checkpoint / "state.json.tmp"
    tmp.write_text(json.dumps({**state, "config": card["config"]}))
    tmp.replace(checkpoint / "state.json")


class _Tracker:
    """One MLflow run per meta-training (resumed with it); the result is registered with its card as tags."""

    def __init__(self, run_id: str | None, config: MetaTrainConfig, tasks: list[str], base_model: str):
        from ..tracking import MLflowTracker

        self.tracker = MLflowTracker()
        client = self.tracker.client
        if run_id is None:
            run_id = self.tracker.start_parent(
                f"meta-train/{config.method}",
                {
                    "metapeft.kind": "meta-train",
                    "metapeft.method": config.method,
                    "metapeft.base_model": base_model,
                    "metapeft.tasks": ",".join(tasks),
                },
            )
            params = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in config.as_dict().items()}
            client.log_batch(run_id, params=[_param(k, v) for k, v in params.items()])
        else:
            self.tracker.reopen_parent(run_id)
        self.run_id, self.client = run_id, client

    def log(self, iteration: int, numbers: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, float(v), now, iteration) for k, v in numbers.items() if isinstance(v, (int, float))],
        )

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)

    def finish(self, output: Path) -> str | None:
        card = json.loads((output / "card.json").read_text())
        self.client.log_artifacts(self.run_id, str(output), artifact_path="meta_init")
        self.end("FINISHED")
        tags = {
            "metapeft.method": card["method"],
            "metapeft.base_model": card["base_model"],
            "metapeft.tasks": ",".join(card["tasks"]),
            "metapeft.excluded": ",".join(card["excluded"]),
            "metapeft.settings": json.dumps(card["settings"]),
            "metapeft.inner": json.dumps(card["inner"]),
            "metapeft.validation": json.dumps(card["validation"])[:5000],
        }
        version = self.tracker.register(
            REGISTERED_NAME,
            self.run_id,
            artifact_path="meta_init",
            tags=tags,
            description=f"meta-initialisation of {card['method']} for {card['base_model']}",
        )
        return str(version.version)


def _param(key: str, value: Any):
    from mlflow.entities import Param

    return Param(key, str(value)[:6000])
