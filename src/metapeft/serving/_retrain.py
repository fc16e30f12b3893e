"""``retrain``: refit the selector on all experience, hold it against the champion, promote it only if not worse.

The comparison is on the tasks the champion never saw (the task groups of the experience that its own experience
file does not hold): the champion is scored on them as it is, the challenger left-one-task-out (refitted without
each of them), both by ``evaluate``'s regret on the same task instances. A challenger whose mean regret is not above
the champion's becomes ``@champion``; otherwise it stays ``@challenger``. With no new task to score on, there is
no evidence either way: the challenger is registered but not promoted unless ``force``. Each step is an MLflow run
(the challenger's logging, and an evaluation run with both figures).

The three steps are public too, for a scheduler that runs them as separate tasks (an Airflow DAG):
:func:`register_challenger`, :func:`evaluate_challenger` and :func:`promote`; ``retrain`` is the three in turn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .._errors import MetapeftError
from ..meta import Selector


@dataclass
class RetrainResult:
    champion_version: int  # before retraining
    challenger_version: int
    promoted: bool
    held_out_tasks: list[str]
    champion_regret: float | None
    challenger_regret: float | None
    reason: str
    evaluation_run_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Fixed(Selector):
    """The champion as ``evaluate`` takes a selector: ``fit`` leaves it as it is (it was fitted before)."""

    def __init__(self, surrogate):
        self.surrogate = surrogate
        self.embedder = surrogate.embedder

    def fit(self, records):
        return self

    def predict(self, profile, candidates, **kwargs):
        return self.surrogate.predict(profile, candidates, **kwargs)


def retrain(store=None, *, force: bool = False, min_methods: int = 5, progress=None, tracker=None) -> RetrainResult:
    """Refit, evaluate against ``@champion`` and register (see the module docstring).

    Args:
        store: The user's experience store (URL or :class:`~metapeft.experience.ExperienceStore`; default: theirs).
        force: Promote the challenger whatever the comparison says.
        min_methods: Methods a task instance needs run to be scored.
        progress: Called with a line per stage.
        tracker: The MLflow tracker (default: the user's tracking store).

    Returns:
        A :class:`RetrainResult`.
    """
    from ..tracking import MLflowTracker

    tracker = tracker or MLflowTracker()
    champion_version, version, meta = _register(store, tracker, progress)
    result = _evaluate(
        champion_version,
        version,
        meta.experiences(),
        force=force,
        min_methods=min_methods,
        progress=progress,
        tracker=tracker,
    )
    if result.promoted:
        promote(version, tracker)
        _say(progress, f"version {version} is the new champion")
    return result


def register_challenger(store=None, *, tracker=None, progress=None) -> int:
    """Refit the selector on all experience and register it as a new ``@challenger`` version (the first step of
    :func:`retrain`; a registry without a champion gets the packaged one first).

    Args:
        store: The user's experience store (URL or :class:`~metapeft.experience.ExperienceStore`; default: theirs).
        tracker: The MLflow tracker (default: the user's tracking store).
        progress: Called with a line per stage.

    Returns:
        The challenger's version number.
    """
    return _register(store, tracker, progress)[1]


def evaluate_challenger(
    challenger: int | str = "challenger", *, force: bool = False, min_methods: int = 5, progress=None, tracker=None
) -> RetrainResult:
    """Score a registered selector version against ``@champion`` on the tasks the champion never saw, tag the version
    with the figures and log the evaluation run (the second step of :func:`retrain`). Nothing is promoted here.

    Args:
        challenger: The version to score (a number or an alias; default: ``@challenger``).
        force: Decide to promote whatever the comparison says.
        min_methods: Methods a task instance needs run to be scored.
        progress: Called with a line per stage.
        tracker: The MLflow tracker (default: the user's tracking store).

    Returns:
        A :class:`RetrainResult` whose ``promoted`` is the decision (not worse than the champion, or ``force``);
        :func:`promote` carries it out.

    Raises:
        MetapeftError: the version does not exist or is the champion itself.
    """
    from ..tracking import MLflowTracker
    from ._selector import SELECTOR_NAME, ensure_champion, load_selector

    tracker = tracker or MLflowTracker()
    champion_version = ensure_champion(tracker)
    version = _number(challenger, tracker, "; register one with register_challenger or `metapeft retrain`")
    if version == champion_version:
        raise MetapeftError(
            f"version {version} of {SELECTOR_NAME} is @champion already: there is nothing to compare it with"
        )
    records = load_selector(version, tracker).experiences()
    return _evaluate(
        champion_version, version, records, force=force, min_methods=min_methods, progress=progress, tracker=tracker
    )


def promote(version: int | str, tracker=None) -> int:
    """Make a registered selector version ``@champion`` (the last step of :func:`retrain`; the server picks it up
    without a restart).

    Args:
        version: The version (a number or an alias such as ``challenger``).
        tracker: The MLflow tracker (default: the user's tracking store).

    Returns:
        The version number now ``@champion``.

    Raises:
        MetapeftError: there is no such version.
    """
    from ..tracking import MLflowTracker
    from ._selector import CHAMPION, SELECTOR_NAME

    tracker = tracker or MLflowTracker()
    number = _number(version, tracker, " to promote")
    tracker.client.set_registered_model_alias(SELECTOR_NAME, CHAMPION, number)
    return number


def _number(version: int | str, tracker, hint: str) -> int:
    """A selector version's number from a number or an alias; a one-line error when the registry lacks it."""
    from mlflow.exceptions import MlflowException

    from ._selector import SELECTOR_NAME

    try:
        if str(version).isdigit():
            return int(tracker.client.get_model_version(SELECTOR_NAME, str(version)).version)
        return int(tracker.client.get_model_version_by_alias(SELECTOR_NAME, str(version)).version)
    except MlflowException:
        raise MetapeftError(f"{SELECTOR_NAME} has no version {version!r}{hint}") from None


def _say(progress, text: str) -> None:
    if progress:
        progress(text)


def _register(store, tracker, progress):
    """Champion version (the packaged one on a new registry), challenger version, and the fitted meta-learner."""
    from ..meta import MetaPEFT
    from ..tracking import MLflowTracker
    from ._selector import CHALLENGER, ensure_champion, log_selector

    tracker = tracker or MLflowTracker()
    champion_version = ensure_champion(tracker)
    _say(progress, "fitting the selector on all experience")
    meta = MetaPEFT(store).fit()  # its cache is keyed by the exact experience: a cached fit is a fit on all of it
    _say(progress, "registering the challenger")
    version = log_selector(meta, tags={"metapeft.origin": "retrain"}, alias=CHALLENGER, tracker=tracker)
    return champion_version, version, meta


def _evaluate(
    champion_version: int, version: int, records: list, *, force: bool, min_methods: int, progress, tracker
) -> RetrainResult:
    from ..experience import task_group
    from ..meta import Surrogate, evaluate
    from ._selector import SELECTOR_NAME, load_selector

    champion = load_selector(champion_version, tracker)
    seen = {task_group(r) for r in champion.experiences()}
    new = sorted({task_group(r) for r in records} - seen)
    champion_regret = challenger_regret = None
    details: dict[str, Any] = {}
    if new:
        _say(
            progress, f"scoring champion and challenger on {len(new)} task(s) the champion never saw: {', '.join(new)}"
        )
        try:
            details = evaluate(
                records,
                selectors={"champion": lambda: _Fixed(champion.surrogate), "challenger": Surrogate},
                few_shot=0,
                min_methods=min_methods,
                held_out=new,
            )
        except ValueError as exc:  # e.g. no new task instance has enough methods run to score a choice
            details = {"not_scored": str(exc)}
    if "selectors" in details:
        champion_regret = details["selectors"]["champion"]["mean_regret"]
        challenger_regret = details["selectors"]["challenger"]["mean_regret"]
        better = challenger_regret <= champion_regret
        reason = (
            f"mean regret on {details['tasks']} new task(s): challenger {challenger_regret:.2f} vs champion "
            f"{champion_regret:.2f} points"
        )
    else:
        better = False
        reason = (
            "no new task with runs of enough methods to score the challenger on"
            if new
            else "no task the champion has not seen"
        ) + ": nothing shows it is better"
    decision = better or force
    if force and not better:
        reason += "; promoted by --force"
    tags = {
        "metapeft.retrain.reason": reason,
        "metapeft.retrain.held_out": ",".join(new)[:4000],
        "metapeft.origin": "retrain",
    }
    if challenger_regret is not None:
        tags.update(
            {"metapeft.offline.regret": challenger_regret, "metapeft.retrain.champion_regret": champion_regret}
        )
        coverage = details["selectors"]["challenger"].get("coverage_90")
        if coverage is not None:
            tags["metapeft.offline.coverage"] = coverage
    for key, value in tags.items():
        tracker.client.set_model_version_tag(SELECTOR_NAME, str(version), key, str(value)[:5000])
    run_id = tracker.start_parent(
        "retrain",
        {
            "metapeft.kind": "retrain",
            "metapeft.champion": champion_version,
            "metapeft.challenger": version,
            "metapeft.reason": reason,
        },
    )
    metrics = {
        k: v
        for k, v in (
            ("champion_mean_regret", champion_regret),
            ("challenger_mean_regret", challenger_regret),
            ("held_out_tasks", len(new)),
            ("promoted", float(decision)),
        )
        if v is not None
    }
    tracker.end_parent(run_id, metrics=metrics)
    return RetrainResult(
        champion_version, version, decision, new, champion_regret, challenger_regret, reason, run_id, details
    )
