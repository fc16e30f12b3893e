"""Airflow 3 DAGs (TaskFlow API) for metapeft, built from parameters.

- :func:`task_dag`: fine-tune for one task as ``metapeft autotune`` does, one Airflow task per stage: **profile** →
  **recommend** (the ranking is recorded for monitoring) → **tune** (the warm-started search, then the pick trained
  with the final budget) → **register** (the final classifier in MLflow's model registry, with the decision tags
  ``autotune`` writes) → **monitor** (the selector's rolling figures; an alert is logged as a warning, not a
  failure).
- :func:`meta_dag`: keep the selector learning: **pending_runs** lists the runs of a bench design not yet done and
  **run** does each as a mapped task (Airflow's dynamic task mapping), so that a team's workers share a design over
  many machines and one PostgreSQL experience store (claims in the store keep two workers off one run) →
  **retrain** (refit on all experience, registered as ``@challenger``) → **evaluate** (against ``@champion`` on the
  tasks it never saw) → **promote** (to ``@champion`` when not worse, or when forced).

Every option is also a DAG parameter: the options given to the factory are the defaults, and a trigger's conf
overrides them (``airflow dags trigger metapeft_task --conf '{"task": "data/reviews", "trials": 8}'``). A bad value
fails the first task with one line. Each Airflow task calls the library in the worker's process (never a shell);
XComs are small JSON. Workers find metapeft's data as the command line does (``METAPEFT_HOME``, ``METAPEFT_STORE``,
``MLFLOW_TRACKING_URI``), unless ``store`` or ``tracking_uri`` is set; a DAG that runs on several machines needs a
store and a tracking server that all of them reach.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import Any

from .._errors import MetapeftError, OptionError

try:
    from airflow.sdk import DAG, Param, dag, task
except ImportError:  # the module must say what to install, in one line
    raise MetapeftError("metapeft's Airflow DAGs need Apache Airflow 3: pip install 'metapeft[airflow]'") from None

log = logging.getLogger("metapeft.airflow")

_START = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _text(options, *names: str) -> None:
    for name in names:
        value = getattr(options, name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise OptionError(name, f"must be a non-empty string or null, got {value!r}")


def _whole(options, name: str, least: int, optional: bool) -> None:
    value = getattr(options, name)
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        null = " or null" if optional else ""
        raise OptionError(name, f"must be a whole number of at least {least}{null}, got {value!r}")


def _names(options, name: str) -> None:
    """A list of names (a conf gives a JSON list) is kept as a tuple, so that the options stay hashable."""
    value = getattr(options, name)
    if value is None:
        return
    names = isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value)
    if not names or not value:
        raise OptionError(name, f"must be a non-empty list of names or null, got {value!r}")
    object.__setattr__(options, name, tuple(value))


def _option(default, text: str):
    return field(default=default, metadata={"help": text})


_STORE_HELP = "Experience store URL (default: the worker's METAPEFT_STORE, else SQLite in METAPEFT_HOME)."
_TRACKING_HELP = "MLflow tracking URI (default: the worker's MLFLOW_TRACKING_URI, else SQLite in METAPEFT_HOME)."


@dataclass(frozen=True)
class TaskDagOptions:
    """What :func:`task_dag`'s runs do by default (each is a DAG parameter a trigger's conf may override), checked on
    construction (``OptionError`` names the field); the search's own checks (objective and method names) run when
    the first task starts.

    >>> task_dag(TaskDagOptions(task="data/reviews", trials=8))   # doctest: +SKIP
    """

    task: str | None = _option(
        None,
        "The task to fine-tune for: a data file or folder as `metapeft train` reads it, "
        "or `example` (required, here or in the run's conf).",
    )
    store: str | None = _option(None, _STORE_HELP)
    tracking_uri: str | None = _option(None, _TRACKING_HELP)
    model: str | None = _option(None, "Base model: a hub id or a local folder (default: all-MiniLM-L6-v2, bundled).")
    trials: int = _option(4, "Search trials.")
    max_steps: int | None = _option(None, "Training steps of each search trial (default: ~5 epochs, 80..320).")
    final_steps: int | None = _option(None, "Training steps of the pick's final run (default: ~5 epochs, 80..320).")
    objectives: tuple[str, ...] | None = _option(
        None, "What the Pareto set is over, among accuracy, train_time_s and peak_memory_mb (default: all three)."
    )
    prefer: str = _option(
        "accuracy", "Which trial of the Pareto set is the pick: the best on accuracy, time or memory."
    )
    methods: tuple[str, ...] | None = _option(
        None, "Methods to rank and search (default: every method that can take the model)."
    )
    max_memory_mb: float | None = _option(None, "Pick only configurations within this peak memory (MB).")
    max_time_s: float | None = _option(None, "Pick only configurations within this training time (s).")
    registered_name: str | None = _option(None, "Registered model name (default: metapeft-<task>).")

    def __post_init__(self) -> None:
        _text(self, "task", "store", "tracking_uri", "model", "registered_name", "prefer")
        _whole(self, "trials", 1, optional=False)
        _whole(self, "max_steps", 1, optional=True)
        _whole(self, "final_steps", 1, optional=True)
        for name in ("max_memory_mb", "max_time_s"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0):
                raise OptionError(name, f"must be a positive number or null, got {value!r}")
        _names(self, "objectives")
        _names(self, "methods")

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each field's help text, by field name."""
        return {f.name: f.metadata["help"] for f in fields(cls)}


@dataclass(frozen=True)
class MetaDagOptions:
    """What :func:`meta_dag`'s runs do by default (each is a DAG parameter a trigger's conf may override), checked on
    construction (``OptionError`` names the field).

    >>> meta_dag(MetaDagOptions(suite="suite", design="suite/design.json"), schedule="@weekly")   # doctest: +SKIP
    """

    suite: str | None = _option(
        None,
        "The suite the design runs over: its MANIFEST.json or folder, as `metapeft "
        "bench` reads it (required, here or in the run's conf).",
    )
    design: str | None = _option(None, "The bench design (a JSON file) whose runs not done yet are run (required).")
    store: str | None = _option(None, _STORE_HELP + " Workers on several machines share one (PostgreSQL).")
    tracking_uri: str | None = _option(None, _TRACKING_HELP + " Its registry holds the selector's versions.")
    force: bool = _option(False, "Promote the new selector to @champion whatever the comparison says.")
    min_methods: int = _option(5, "Methods a task instance needs run to be scored in the comparison.")

    def __post_init__(self) -> None:
        _text(self, "suite", "design", "store", "tracking_uri")
        if not isinstance(self.force, bool):
            raise OptionError("force", f"must be true or false, got {self.force!r}")
        _whole(self, "min_methods", 2, optional=False)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each field's help text, by field name."""
        return {f.name: f.metadata["help"] for f in fields(cls)}


def task_dag(
    options: TaskDagOptions | None = None, *, dag_id: str = "metapeft_task", schedule: Any = None, **dag_args: Any
) -> DAG:
    """A DAG that fine-tunes for a task: profile → recommend → tune → register → monitor (module docstring).

    Args:
        options: The runs' default parameters (a trigger's conf overrides them).
        dag_id: The DAG's id.
        schedule: Airflow's schedule (default: none, runs are triggered).
        dag_args: Further arguments of Airflow's ``@dag`` (``tags``, ``default_args``, ``start_date``…).

    Returns:
        The DAG.
    """
    defaults = _checked(options, TaskDagOptions)

    @dag(dag_id=dag_id, schedule=schedule, params=_params(defaults), **_dag_args(dag_args))
    def metapeft_task():
        @task
        def profile(params=None) -> dict:
            return _profile(_resolve(defaults, params))

        @task
        def recommend(task_profile: dict, params=None) -> list:
            return _recommend(_resolve(defaults, params), task_profile)

        @task
        def tune(task_profile: dict, ranking: list, params=None) -> dict:
            return _tune(_resolve(defaults, params), task_profile, ranking)

        @task
        def register(chosen: dict, params=None) -> dict:
            return _register(_resolve(defaults, params), chosen)

        @task
        def monitor(params=None) -> dict:
            return _monitor(_resolve(defaults, params))

        task_profile = profile()
        register(tune(task_profile, recommend(task_profile))) >> monitor()

    return metapeft_task()


def meta_dag(
    options: MetaDagOptions | None = None, *, dag_id: str = "metapeft_meta", schedule: Any = None, **dag_args: Any
) -> DAG:
    """A DAG that keeps the selector learning: bench new runs → retrain → evaluate → promote (module docstring).

    Args:
        options: The runs' default parameters (a trigger's conf overrides them).
        dag_id: The DAG's id.
        schedule: Airflow's schedule (default: none, runs are triggered), e.g. ``"@weekly"``.
        dag_args: Further arguments of Airflow's ``@dag`` (``tags``, ``default_args``, ``max_active_tasks``…).

    Returns:
        The DAG.
    """
    defaults = _checked(options, MetaDagOptions)

    @dag(dag_id=dag_id, schedule=schedule, params=_params(defaults), **_dag_args(dag_args))
    def metapeft_meta():
        @task
        def pending_runs(params=None) -> list:
            return _pending(_resolve(defaults, params))

        @task
        def run(key: str, params=None) -> dict:
            return _run(_resolve(defaults, params), key)

        @task(trigger_rule="none_failed")  # also when there was nothing to run (the mapped task is then skipped)
        def retrain(params=None) -> dict:
            return _retrain(_resolve(defaults, params))

        @task
        def evaluate(challenger: dict, params=None) -> dict:
            return _evaluate(_resolve(defaults, params), challenger)

        @task
        def promote(evaluation: dict, params=None) -> dict:
            return _promote(_resolve(defaults, params), evaluation)

        runs = run.expand(key=pending_runs())
        challenger = retrain()
        runs >> challenger
        promote(evaluate(challenger))

    return metapeft_meta()


# --- the options as DAG parameters -----------------------------------------------------------------------------


def _checked(options, cls):
    if options is None:
        return cls()
    if not isinstance(options, cls):
        raise OptionError("options", f"must be a {cls.__name__}, got {type(options).__name__}")
    return options


def _dag_args(given: dict) -> dict:
    return {"start_date": _START, "catchup": False, "tags": ["metapeft"], "doc_md": __doc__, **given}


def _params(options) -> dict[str, Param]:
    return {f.name: Param(_plain(getattr(options, f.name)), description=f.metadata["help"]) for f in fields(options)}


def _resolve(defaults, params):
    """The options of this run: the factory's, overridden by the run's parameters (checked again: a conf may set
    anything)."""
    values = dict(params or {})
    known = {f.name for f in fields(defaults)}
    unknown = sorted(set(values) - known)
    if unknown:
        known_names = ", ".join(sorted(known))
        raise MetapeftError(f"unknown DAG parameter {', '.join(map(repr, unknown))}; known: {known_names}")
    return replace(defaults, **values)


def _plain(value):
    """``value`` as plain JSON (what an XCom or a DAG parameter holds): tuples as lists, numpy scalars as numbers."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


# --- task_dag's steps ------------------------------------------------------------------------------------------


def _tracker(options):
    from ..tracking import MLflowTracker

    return MLflowTracker(options.tracking_uri)


def _methods(options: TaskDagOptions) -> list[str] | None:
    return list(options.methods) if options.methods else None


def _search_config(options: TaskDagOptions):
    from ..search import OBJECTIVES, SearchConfig

    return SearchConfig(
        trials=options.trials,
        objectives=options.objectives or OBJECTIVES,
        methods=_methods(options),
        max_steps=options.max_steps,
        prefer=options.prefer,
        max_memory_mb=options.max_memory_mb,
        max_time_s=options.max_time_s,
        run=SearchConfig.trial_run(model=options.model),
    )


def _load(options: TaskDagOptions, profile: dict | None = None):
    from .._environment import quiet_libraries
    from ..tasks import load_task

    quiet_libraries()
    if not options.task:
        raise OptionError(
            "task",
            "is not set: give the task's path in the DAG's options or in the run's conf, "
            'e.g. {"task": "path/to/task"}',
        )
    task = load_task(options.task)
    if profile is not None and task.fingerprint != profile.get("fingerprint"):
        raise MetapeftError(f"the data of {options.task} changed since it was profiled in this run; trigger a new run")
    return task


def _profile(options: TaskDagOptions) -> dict:
    from ..meta import MetaPEFT

    _search_config(options)  # every option is checked before any work
    task = _load(options)
    log.info("profiling %s (%d training examples)", task.name, len(task.train))
    return _plain(MetaPEFT(options.store, model=options.model).profile(task))


def _recommend(options: TaskDagOptions, profile: dict) -> list:
    from ..experience import ExperienceStore
    from ..meta import MetaPEFT
    from ..monitoring import record_prediction

    store = ExperienceStore(options.store)
    meta = MetaPEFT(store, model=options.model).fit()
    ranking = meta.recommend(
        profile, max_memory_mb=options.max_memory_mb, max_time_s=options.max_time_s, methods=_methods(options)
    )
    record_prediction(store, profile, ranking, source="airflow")
    log.info("ranking for %s: %s", profile["task_name"], ", ".join(f"{r.method} {r.confidence:.0%}" for r in ranking))
    return _plain(
        [
            {
                "method": r.method,
                "rank": r.rank,
                "confidence": r.confidence,
                "feasible": r.feasible,
                "hyperparameters": r.hyperparameters,
                "accuracy": r.expected_performance["accuracy"],
            }
            for r in ranking
        ]
    )


def _tune(options: TaskDagOptions, profile: dict, ranking: list) -> dict:
    from ..experience import ExperienceStore
    from ..meta import MetaPEFT
    from ..search import decision_tags, search_and_train

    task = _load(options, profile)
    config = _search_config(options)
    store = ExperienceStore(options.store)
    meta = MetaPEFT(store, model=options.model).fit()
    tracker = _tracker(options)

    def on_trial(t) -> None:
        log.info("trial %d: %s, %s, accuracy %s", t.number, t.method, t.state, t.metrics.get("accuracy"))

    with tracker.fluent():  # the search logs to MLFLOW_TRACKING_URI: this tracker's, for the block only
        search, final = search_and_train(
            task,
            config,
            meta=meta,
            profile=profile,
            store=store,
            tracker=tracker,
            final_steps=options.final_steps,
            on_trial=on_trial,
            on_stage=log.info,
        )
    tags = decision_tags(task, profile, meta, ranking, search, config, final)
    log.info("%s", tags["metapeft.decision"])
    names = ("method", "hyperparameters", "adapter_path", "experience_id", "mlflow_run_id", "trial")
    kept = {k: final.get(k) for k in names}
    kept["metrics"] = {
        k: v for k, v in final["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return _plain(
        {"task": task.name, "study": search.study, "trials": len(search.trials), "final": kept, "tags": tags}
    )


def _register(options: TaskDagOptions, chosen: dict) -> dict:
    import tempfile
    from pathlib import Path

    from ..search import register_decision

    final = chosen["final"]
    if not final.get("mlflow_run_id"):
        raise MetapeftError(
            f"the final run of {chosen['task']} was not logged to MLflow (the tune task's log says "
            "why): there is nothing to register"
        )
    tracker = _tracker(options)
    with tempfile.TemporaryDirectory() as tmp:
        folder = final.get("adapter_path")
        if not folder or not Path(folder).is_dir():  # trained on another worker: the copy logged with its MLflow run
            import mlflow.artifacts

            folder = mlflow.artifacts.download_artifacts(
                run_id=final["mlflow_run_id"], artifact_path="adapter", dst_path=tmp, tracking_uri=tracker.uri
            )
        registered = register_decision(
            chosen["task"], final, chosen["tags"], options.registered_name, folder=folder, tracker=tracker
        )
    log.info("registered %s version %d (%s)", registered["name"], registered["version"], final["method"])
    return {
        "name": registered["name"],
        "version": registered["version"],
        "method": final["method"],
        "accuracy": final["metrics"].get("accuracy"),
        "mlflow_run_id": final["mlflow_run_id"],
    }


def _monitor(options: TaskDagOptions) -> dict:
    from ..experience import ExperienceStore
    from ..monitoring import monitor

    report = monitor(ExperienceStore(options.store))
    if report.alerts:  # a warning, not a failure: the run itself went well
        log.warning("selector monitoring alert: %s; %s", "; ".join(report.alerts), report.suggestion)
    else:
        log.info(
            "selector monitoring: %d predictions, %d runs after them, no alert",
            report.predictions,
            report.matched_runs,
        )
    return _plain(report.as_dict())


# --- meta_dag's steps ------------------------------------------------------------------------------------------


def _bench_inputs(options: MetaDagOptions) -> tuple[str, str, str]:
    from .._environment import quiet_libraries
    from ..experience import ExperienceStore

    quiet_libraries()
    for name in ("suite", "design"):
        if not getattr(options, name):
            raise OptionError(
                name,
                "is not set: give it in the DAG's options or in the run's conf, "
                f'e.g. {{"{name}": "path/to/{name}"}}',
            )
    return options.suite, options.design, ExperienceStore(options.store).url


def _pending(options: MetaDagOptions) -> list:
    from ..bench import pending_keys

    keys = pending_keys(*_bench_inputs(options))
    log.info("%d run(s) of the design not done yet", len(keys))
    return keys


def _run(options: MetaDagOptions, key: str) -> dict:
    from ..bench import run_one

    outcome = run_one(*_bench_inputs(options), key)
    log.info("%s: %s", key, outcome)
    return {"key": key, "outcome": outcome}


def _retrain(options: MetaDagOptions) -> dict:
    from .._environment import quiet_libraries
    from ..serving import register_challenger

    quiet_libraries()
    return {"challenger": register_challenger(options.store, tracker=_tracker(options), progress=log.info)}


def _evaluate(options: MetaDagOptions, challenger: dict) -> dict:
    from ..serving import evaluate_challenger

    result = evaluate_challenger(
        challenger["challenger"],
        force=options.force,
        min_methods=options.min_methods,
        tracker=_tracker(options),
        progress=log.info,
    )
    log.info("%s", result.reason)
    return _plain(
        {
            "champion_version": result.champion_version,
            "challenger_version": result.challenger_version,
            "promote": result.promoted,
            "held_out_tasks": result.held_out_tasks,
            "reason": result.reason,
            "champion_regret": result.champion_regret,
            "challenger_regret": result.challenger_regret,
            "evaluation_run_id": result.evaluation_run_id,
        }
    )


def _promote(options: MetaDagOptions, evaluation: dict) -> dict:
    from ..serving import promote

    champion, challenger = evaluation["champion_version"], evaluation["challenger_version"]
    if not evaluation["promote"]:
        log.info("version %d stays @challenger, version %d @champion: %s", challenger, champion, evaluation["reason"])
        return {"promoted": False, "champion": champion, "challenger": challenger}
    version = promote(challenger, _tracker(options))
    log.info("version %d is the new @champion", version)
    return {"promoted": True, "champion": version, "challenger": version}


__all__ = ["MetaDagOptions", "TaskDagOptions", "meta_dag", "task_dag"]
