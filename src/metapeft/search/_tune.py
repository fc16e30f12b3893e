"""``tune``: multi-objective search over methods and hyperparameters with Optuna, warm-started by the meta-learner.

One Optuna study per search, in an RDB storage (SQLite in the data directory by default, PostgreSQL for a team):
several processes given the same ``storage`` and ``study_name`` share the search, and a killed process loses only
its trial in flight. Every trial is a real ``train`` run: it lands in the experience store and in MLflow, nested
under one parent run per search. Searching for accuracy alone, a median pruner reads the engine's learning curve
(accuracy) and stops bad trials early (Optuna does not prune multi-objective studies).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .._config import data_dir, redact_url, runs_dir
from .._errors import IncompatibleMethodError, MetapeftError, OptionError
from ..experience import ExperienceStore
from ..methods import get_method, list_methods
from ..tasks import Task, TaskProfile
from ._config import OBJECTIVES, PREFERENCES, SearchConfig
from ._sampler import MetaSampler
from ._space import joint_space, to_config, to_params


@dataclass
class TrialResult:
    number: int
    state: str
    method: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    experience_id: str | None = None
    adapter_path: str | None = None
    mlflow_run_id: str | None = None
    source: str | None = None  # why this trial was proposed: "surrogate", "similar task", or the sampler
    switches: list[dict[str, Any]] = field(
        default_factory=list
    )  # method switches the trial made (SearchConfig.switch)


@dataclass
class TuneResult:
    study: str
    storage: str
    objectives: list[str]
    sampler: str
    trials: list[TrialResult]
    pareto: list[TrialResult]
    pick: TrialResult | None
    parent_run_id: str | None = None
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tune(
    task: Task,
    config: SearchConfig | None = None,
    *,
    meta=None,
    store: ExperienceStore | None = None,
    on_trial: Callable[[TrialResult], None] | None = None,
) -> TuneResult:
    """Search methods and hyperparameters for ``task`` as ``config`` says (module docstring).

    Args:
        task: the task to search for.
        config: the search's options (default: ``SearchConfig()``, 10 trials for accuracy, warm-started).
        meta: a fitted or unfitted :class:`~metapeft.meta.MetaPEFT` to warm-start and guide the search (default: one
            over ``store`` and the prior, for ``config.run.model``).
        store: where the trials are recorded (default: the user's store).
        on_trial: called with each trial's result as it finishes (or fails, or is pruned).

    Returns:
        All trials, the Pareto set over ``config.objectives``, and the pick: the finished trial best on
        ``config.prefer`` within the limits (the pick is made among final accuracies, measured on up to
        ``config.run.final_eval_size`` examples).
    """
    import optuna

    from ..meta import MetaPEFT
    from ..tasks import CausalTask
    from ..training import StopWhen, backend_methods, train

    c = config or SearchConfig()
    objectives, trials, model, sampler, budget = (
        c.objectives,
        c.trials,
        c.run.model,
        c.sampler,
        ({"max_steps": c.max_steps} if c.max_steps else {}),
    )
    methods = _compatible(c.methods, model, backend_methods(c.run.backend) if isinstance(task, CausalTask) else None)
    if c.switch is not None and (len(methods) < 2 or not any(get_method(m).mergeable for m in methods)):
        raise OptionError(
            "switch",
            "needs two methods or more, one of whose learning can be merged into the weights, among those "
            f"searched ({', '.join(methods)}); prompt-learning methods cannot switch",
        )
    storage = c.storage or f"sqlite:///{data_dir() / 'optuna.db'}"
    shown = redact_url(storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = _open_storage(storage)  # a bad URL is refused before the profiling and the meta-learner's fit
    store = store or ExperienceStore()
    meta = meta or MetaPEFT(store, model=model)
    profile = {**meta.profile(task), "backend": c.run.backend}
    space = joint_space(methods)
    # the suffix keeps two searches of one task started in the same second from joining one study
    study_name = (
        c.study_name or f"{task.name}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    )

    if sampler == "meta":
        chosen = MetaSampler(
            meta.fit().surrogate,
            profile,
            methods,
            objectives,
            budget=budget,
            seed=c.seed,
            max_memory_mb=c.max_memory_mb,
            max_time_s=c.max_time_s,
        )
    else:
        chosen = {
            "gp": lambda: optuna.samplers.GPSampler(seed=c.seed, warn_independent_sampling=False),
            "tpe": lambda: optuna.samplers.TPESampler(seed=c.seed, multivariate=True, warn_independent_sampling=False),
            "random": lambda: optuna.samplers.RandomSampler(seed=c.seed),
        }[sampler]()
    # the pruner reads the accuracy curve, so it serves only a search for accuracy (Optuna would also take the
    # reported accuracy as a pruned trial's value of the study's objective)
    prune = c.prune and objectives == ("accuracy",)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if prune else optuna.pruners.NopPruner()
    directions = ["maximize" if o == "accuracy" else "minimize" for o in objectives]
    folder = Path(c.output_dir) if c.output_dir else runs_dir() / "tune" / study_name
    if folder.is_dir() and any(folder.iterdir()) and study_name not in optuna.study.get_all_study_names(rdb):
        raise MetapeftError(
            f"{folder} already holds files and study {study_name!r} is not in {shown}: its trials would mix "
            "with them; use another study name or output folder, or empty it"
        )
    setup = {
        "objectives": list(objectives),
        "methods": methods,
        "task_fingerprint": task.fingerprint,
        "budget": budget,
        **({"switch": asdict(c.switch)} if c.switch else {}),
    }
    # Optuna's storages have no compare-and-set, so the one process whose insert of the study wins (the name is unique
    # in the database) warm-starts it and opens its MLflow parent; a process that joins waits until that is done
    try:
        study = optuna.create_study(
            storage=rdb, study_name=study_name, sampler=chosen, pruner=pruner, directions=directions
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=rdb, study_name=study_name, sampler=chosen, pruner=pruner)
        created = False
        _wait_until_ready(study)
    for key, value in setup.items():  # a study resumed or shared must search the same problem
        found = study.user_attrs.get(key)
        if found is None:
            study.set_user_attr(key, value)
        elif found != value:
            raise MetapeftError(
                f"study {study_name!r} in {shown} was started with {key}={found}, not {value}; use the same "
                "settings or another study name"
            )
    if sampler == "meta" and created:
        start = warm_start_configs(
            meta,
            profile,
            methods,
            space,
            budget,
            min(c.warm_start, trials or c.warm_start),
            c.max_memory_mb,
            c.max_time_s,
            record_in=store,
        )
        for params, source in start:
            study.enqueue_trial(params, user_attrs={"source": source}, skip_if_exists=True)

    _fail_dead_trials(study)  # before counting: a resumed search redoes the trials of killed processes
    tracker = parent = None
    if c.run.track:
        from ..tracking import MLflowTracker

        tracker = MLflowTracker()
        tracker.close_dead_parents()
        parent = study.user_attrs.get("mlflow_parent_run_id")
        if parent is None:
            parent = tracker.start_parent(
                f"tune/{task.name}",
                {
                    "metapeft.study": study_name,
                    "metapeft.objectives": ",".join(objectives),
                    "metapeft.sampler": sampler,
                    "metapeft.task": task.name,
                },
            )
            study.set_user_attr("mlflow_parent_run_id", parent)
        else:
            tracker.reopen_parent(parent)  # resumed or joined: this process now keeps it open
    if created:
        study.set_user_attr("ready", True)
    task_profile = TaskProfile.from_dict(profile)
    switching = switch_callbacks(meta, profile, c.switch, methods)

    def objective(trial: optuna.Trial):
        if trials and _counted_before(study, trial.number) >= trials:
            # another process sharing the study started a trial at the same moment and the total is reached: this
            # one is not run (it is left failed, marked, and counted nowhere)
            trial.set_user_attr("over_total", True)
            return tuple(float("nan") for _ in objectives)
        trial.set_user_attr("host", socket.gethostname())  # lets a resumed search tell a killed trial from a live one
        trial.set_user_attr("pid", os.getpid())
        params = {name: _suggest(trial, name, dist) for name, dist in space.items()}
        method, hp = to_config(params)
        trial.set_user_attr("source", trial.user_attrs.get("source", sampler))

        reported: set[int] = set()

        def should_stop(step: int, curve: list[dict]) -> bool:
            # asked after every step; a curve point is appended after the step it was measured at, so it is reported
            # (once) at the step that follows
            if not prune or not curve or curve[-1]["step"] in reported:
                return False
            reported.add(curve[-1]["step"])
            trial.report(curve[-1]["accuracy"], curve[-1]["step"])
            return trial.should_prune()

        try:
            run = replace(
                c.run,
                output_dir=folder / f"trial-{trial.number}",
                tags={**c.run.tags, "study": study_name, "trial": trial.number, "sampler": sampler},
            )
            result = train(
                task,
                method,
                {**hp, **budget},
                run,
                profile=task_profile,
                store=store,
                tracker=tracker,
                parent_run_id=parent,
                callbacks=[StopWhen(should_stop), *switching(method)],
            )
        except MetapeftError as exc:  # e.g. a method the model cannot take: the trial fails, the search goes on
            trial.set_user_attr("error", str(exc))
            trial.set_user_attr("error_type", type(exc).__name__)
            if on_trial:
                on_trial(
                    TrialResult(
                        trial.number,
                        "FAIL",
                        method,
                        hp,
                        {},
                        getattr(exc, "experience_id", None),
                        source=trial.user_attrs["source"],
                    )
                )
            return tuple(float("nan") for _ in objectives)  # Optuna records the trial as failed
        m = result.metrics
        trial.set_user_attr("hyperparameters", result.hyperparameters)
        if m.get("switches"):
            trial.set_user_attr(
                "switches", [{k: w[k] for k in ("step", "from", "to", "p_better")} for w in m["switches"]]
            )
        trial.set_user_attr(
            "metrics",
            {
                k: m.get(k)
                for k in (
                    *OBJECTIVES,
                    "memory_measure",
                    "macro_f1",
                    "max_length",
                    "steps",
                    "trainable_params",
                    "eval_examples",
                )
            },
        )
        for key in ("experience_id", "adapter_path", "mlflow_run_id"):
            trial.set_user_attr(key, getattr(result, key))
        if on_trial:
            state = "PRUNED" if result.stopped_by == "should_stop" else "COMPLETE"
            on_trial(
                TrialResult(
                    trial.number,
                    state,
                    method,
                    result.hyperparameters,
                    trial.user_attrs["metrics"],
                    result.experience_id,
                    result.adapter_path,
                    result.mlflow_run_id,
                    trial.user_attrs["source"],
                    trial.user_attrs.get("switches") or [],
                )
            )
        if result.stopped_by == "should_stop":
            raise optuna.TrialPruned()
        return tuple(float(m[o]) for o in objectives)

    callbacks = [lambda study, _: study.stop() if _finished(study) >= trials else None] if trials else []
    started = time.monotonic()
    if not trials or _finished(study) < trials:
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are reported through on_trial, in one line
        try:
            study.optimize(objective, timeout=c.time_budget, callbacks=callbacks, gc_after_trial=True)
        except BaseException as exc:  # Ctrl-C, SIGTERM or a bug: the parent run must not stay RUNNING
            if tracker is not None and parent is not None and not _others_running(study):
                tracker.end_parent(parent, status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise

    all_trials = [_trial_result(t) for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("over_total")]
    pareto_numbers = {t.number for t in study.best_trials} if any(t.state == "COMPLETE" for t in all_trials) else set()
    pareto = [t for t in all_trials if t.number in pareto_numbers]
    pick = choose([t for t in all_trials if t.state == "COMPLETE"], c.prefer, c.max_memory_mb, c.max_time_s)
    result = TuneResult(study_name, shown, list(objectives), sampler, all_trials, pareto, pick, parent)
    if pareto:
        from ._plot import render_pareto

        result.files = [str(f) for f in render_pareto(result, folder)]
    if (
        tracker is not None
        and parent is not None
        and not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    ):
        best = max((t.metrics["accuracy"] for t in pareto if t.metrics.get("accuracy") is not None), default=None)
        metrics = {
            "trials": len(all_trials),
            "search_s": time.monotonic() - started,
            **({"best_accuracy": best} if best is not None else {}),
        }
        tracker.end_parent(parent, metrics=metrics, files=result.files)
    return result


def switch_callbacks(meta, profile: dict, policy, methods: list[str] | None = None) -> Callable[[str], list]:
    """The callbacks that let a run of a method switch under ``policy`` (none when it is None or the method's
    learning cannot be merged), to the policy's methods or else to ``methods`` (a search's); the learning-curve
    forecaster is the meta-learner's (fitted once on its experience)."""
    if policy is None:
        return lambda method: []
    if policy.methods is None and methods:
        policy = replace(policy, methods=list(methods))
    from ..training import SwitchController

    forecaster = meta.forecaster()
    return lambda method: [SwitchController(meta, profile, forecaster, policy)] if get_method(method).mergeable else []


def warm_start_configs(
    meta,
    profile: dict,
    methods: list[str],
    space: dict,
    budget: dict,
    k: int,
    max_memory_mb: float | None = None,
    max_time_s: float | None = None,
    record_in=None,
) -> list[tuple[dict, str]]:
    """The first trials: the surrogate's best-predicted configurations within the limits (its pick first), then the
    best run of the most similar past task. ``record_in`` (the store the trials go to) records the ranking for
    monitoring."""
    if k < 1:
        return []
    from ..monitoring import record_prediction

    full = meta.recommend(profile, methods=methods, budget=budget, max_memory_mb=max_memory_mb, max_time_s=max_time_s)
    if record_in is not None:
        record_prediction(record_in, profile, full, source="tune")
    ranking = [r for r in full if r.feasible]
    out = [(to_params(r.method, r.hyperparameters, space), "surrogate") for r in ranking[: max(1, k - 1)]]
    for near in meta.similar(profile, 1):
        runs = [r for r in meta.experiences() if r.task_name == near.task and r.method in methods]
        if runs:
            best = max(runs, key=lambda r: r.metrics["accuracy"])
            params = to_params(best.method, best.hyperparameters, space)
            if params not in [p for p, _ in out]:
                out.append((params, f"similar task {near.task}"))
    for r in ranking[max(1, k - 1) :]:
        if len(out) >= k:
            break
        out.append((to_params(r.method, r.hyperparameters, space), "surrogate"))
    return out[:k]


def choose(
    complete: list[TrialResult], prefer: str, max_memory_mb: float | None, max_time_s: float | None
) -> TrialResult | None:
    """The finished trial within the limits best on the preferred objective (more accurate on ties). It lies on the
    Pareto set of the trials within the limits, not necessarily on the whole search's: a trial over a limit may
    dominate it."""
    key = PREFERENCES[prefer]

    def within(t: TrialResult) -> bool:
        m = t.metrics
        return (max_memory_mb is None or (m.get("peak_memory_mb") or 0) <= max_memory_mb) and (
            max_time_s is None or (m.get("train_time_s") or 0) <= max_time_s
        )

    ok = [t for t in complete if within(t) and t.metrics.get(key) is not None]
    sign = -1 if key == "accuracy" else 1
    return min(ok, key=lambda t: (sign * t.metrics[key], -(t.metrics.get("accuracy") or 0)), default=None)


def _compatible(methods: list[str] | None, model: str | None, allowed: tuple[str, ...] | None = None) -> list[str]:
    """The methods to search: those named (each must take ``model``), or the whole zoo less the methods that cannot
    take it at their defaults (e.g. prefix tuning on a model without ``past_key_values``); only ``allowed`` ones
    when given (a backend's, for a causal-LM task)."""
    from .._backbone import backbone_info

    named = bool(methods)
    specs = [get_method(m) for m in methods] if named else list_methods()
    if allowed is not None:
        if named and (missing := [s.name for s in specs if s.name not in allowed]):
            raise OptionError(
                "methods", f"includes {', '.join(missing)}, which the backend lacks; it has: {', '.join(allowed)}"
            )
        specs = [s for s in specs if s.name in allowed]
    backbone = backbone_info(model)
    out = []
    for spec in specs:
        try:
            spec.check_compatible(spec.make_config({}), backbone)
            out.append(spec.name)
        except IncompatibleMethodError as exc:
            if named:
                raise OptionError("methods", f"includes {exc}") from None
    if not out:
        raise MetapeftError(f"no method of the zoo can take the model {backbone.name}; see `metapeft methods`")
    return out


def _suggest(trial, name: str, dist):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_int(name, dist.low, dist.high, log=dist.log)


def _open_storage(storage: str):
    """Optuna's RDB storage for ``storage``, with heartbeats: a live process marks the trial of a killed one as
    failed instead of leaving it running forever."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    warnings.filterwarnings(
        "ignore", category=optuna.exceptions.ExperimentalWarning
    )  # heartbeats are marked experimental
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                storage,
                heartbeat_interval=30,
                grace_period=120,
                failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=2),
                engine_kwargs={"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {},
            )
        except Exception as exc:  # bad URL, missing driver, unreachable server; or another process creating the schema
            if attempt == 4 or not isinstance(exc, (OperationalError, IntegrityError)):
                reason = str(exc).splitlines()[0].replace(storage, redact_url(storage))
                raise MetapeftError(
                    f"cannot open the Optuna storage {redact_url(storage)!r}: {type(exc).__name__}: {reason} "
                    "(fix --storage)"
                ) from None
            time.sleep(0.5 + attempt)  # processes started together race to create the tables of a new database


def _wait_until_ready(study, timeout: float = 120.0) -> None:
    """Wait for the process that created a shared study to warm-start it; go on after ``timeout`` if it died."""
    deadline = time.monotonic() + timeout
    while not study.user_attrs.get("ready") and time.monotonic() < deadline:
        time.sleep(0.5)


def _fail_dead_trials(study) -> None:
    """Fail the running trials whose process is gone, and queue each again (the storage's retry callback).

    On this host a trial is dead as soon as its process is; on another host (a shared PostgreSQL storage) when its
    heartbeat is older than the grace period (Optuna's stale-trial check). Without this, a trial of a SIGKILLed
    process stayed RUNNING for ever and counted towards ``trials``: the resumed search "finished" short."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from ..experience import process_gone

    storage, host = study._storage, socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and pid is not None and process_gone(pid):
            try:
                if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(t._trial_id))
            except UpdateFinishedTrialError:
                pass  # another process failed it first
    optuna.storages.fail_stale_trials(study)


def _others_running(study) -> bool:
    """Whether a process other than this one still runs a trial of the study (it will close the parent run)."""
    from optuna.trial import TrialState

    me = (socket.gethostname(), os.getpid())
    return any(
        (t.user_attrs.get("host"), t.user_attrs.get("pid")) != me
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    )


def _counted(study) -> list:
    """The trials that count towards ``trials``: running ones too, so that processes sharing a study stop at the
    total; not waiting (enqueued) ones, nor those left unrun because the total was reached, nor those of a killed
    process that were queued again (their retry counts instead)."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    found = study.get_trials(deepcopy=False)
    retried = {n for t in found for n in t.system_attrs.get("retry_history", ())}
    return [t for t in found if t.state in states and not t.user_attrs.get("over_total") and t.number not in retried]


def _finished(study) -> int:
    return len(_counted(study))


def _counted_before(study, number: int) -> int:
    """Counted trials numbered below ``number``. The storage numbers trials in the order they start, so of two
    processes that each saw room for one more trial, only the first to start has room."""
    return sum(t.number < number for t in _counted(study))


def _trial_result(t) -> TrialResult:
    method = t.params.get("method")
    return TrialResult(
        number=t.number,
        state=t.state.name,
        method=method,
        hyperparameters=t.user_attrs.get("hyperparameters") or ({} if method is None else to_config(t.params)[1]),
        metrics=t.user_attrs.get("metrics") or {},
        experience_id=t.user_attrs.get("experience_id"),
        adapter_path=t.user_attrs.get("adapter_path"),
        mlflow_run_id=t.user_attrs.get("mlflow_run_id"),
        source=t.user_attrs.get("source"),
        switches=t.user_attrs.get("switches") or [],
    )


__all__ = ["TrialResult", "TuneResult", "choose", "switch_callbacks", "tune", "warm_start_configs"]
