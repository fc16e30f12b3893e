"""``retrain``: refit the selector on all experience, hold it against the champion, promote it only if not worse.

The comparison is on the tasks the champion never saw (the task groups of the experience that its own experience
file does not hold): the champion is scored on them as it is, the challenger left-one-task-out (refitted without
each of them), both by ``evaluate``'s regret on the same task instances. A challenger whose mean regret is not above
the champion's becomes ``@champion``; otherwise it stays ``@challenger``. With no new task to score on, there is
no evidence either way: the challenger is registered but not promoted unless ``force``. Each step is an MLflow run
(the challenger's logging, and an evaluation run with both figures).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

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
    from ..experience import task_group
    from ..meta import MetaPEFT, Surrogate, evaluate
    from ..tracking import MLflowTracker
    from ._selector import CHALLENGER, CHAMPION, SELECTOR_NAME, ensure_champion, load_selector, log_selector

    def say(text: str) -> None:
        if progress:
            progress(text)

    tracker = tracker or MLflowTracker()
    champion_version = ensure_champion(tracker)
    champion = load_selector(champion_version, tracker)
    say("fitting the selector on all experience")
    meta = MetaPEFT(store).fit()  # its cache is keyed by the exact experience: a cached fit is a fit on all of it
    records = meta.experiences()
    seen = {task_group(r) for r in champion.experiences()}
    new = sorted({task_group(r) for r in records} - seen)
    champion_regret = challenger_regret = None
    details: dict[str, Any] = {}
    if new:
        say(f"scoring champion and challenger on {len(new)} task(s) the champion never saw: {', '.join(new)}")
        try:
            details = evaluate(records, selectors={"champion": lambda: _Fixed(champion.surrogate), "challenger": Surrogate}, few_shot=0,
                               min_methods=min_methods, held_out=new)  # fmt: skip
        except ValueError as exc:  # e.g. no new task instance has enough methods run to score a choice
            details = {"not_scored": str(exc)}
    if "selectors" in details:
        champion_regret = details["selectors"]["champion"]["mean_regret"]
        challenger_regret = details["selectors"]["challenger"]["mean_regret"]
        better = challenger_regret <= champion_regret
        reason = f"mean regret on {details['tasks']} new task(s): challenger {challenger_regret:.2f} vs champion {champion_regret:.2f} points"
    else:
        better = False
        reason = ("no new task with runs of enough methods to score the challenger on" if new else "no task the champion has not seen") + ": nothing shows it is better"
    promote = better or force
    if force and not better:
        reason += "; promoted by --force"
    tags = {"metapeft.retrain.reason": reason, "metapeft.retrain.held_out": ",".join(new)[:4000], "metapeft.origin": "retrain"}
    if challenger_regret is not None:
        tags.update({"metapeft.offline.regret": challenger_regret, "metapeft.retrain.champion_regret": champion_regret})
        coverage = details["selectors"]["challenger"].get("coverage_90")
        if coverage is not None:
            tags["metapeft.offline.coverage"] = coverage
    say("registering the challenger")
    version = log_selector(meta, tags=tags, alias=CHALLENGER, tracker=tracker)
    run_id = tracker.start_parent("retrain", {"metapeft.kind": "retrain", "metapeft.champion": champion_version, "metapeft.challenger": version, "metapeft.reason": reason})
    metrics = {k: v for k, v in (("champion_mean_regret", champion_regret), ("challenger_mean_regret", challenger_regret), ("held_out_tasks", len(new)),
                                  ("promoted", float(promote))) if v is not None}  # fmt: skip
    tracker.end_parent(run_id, metrics=metrics)
    if promote:
        tracker.client.set_registered_model_alias(SELECTOR_NAME, CHAMPION, version)
        say(f"version {version} is the new champion")
    return RetrainResult(champion_version, version, promote, new, champion_regret, challenger_regret, reason, run_id, details)
