"""How runs group: which runs a learner may read, the task instance a run belongs to, and its task.

These are concepts of the experience itself, shared by the meta-learners, the evaluation, the report, the bench and
the server: one definition each, here.
"""

from __future__ import annotations

from ._record import Experience


def usable(record: Experience) -> bool:
    """Finished runs of a known method whose task profile the meta-learners can read (runs a pruner stopped
    early and runs that switched method are left out: their metrics are not what their settings achieve)."""
    from ..methods import list_methods

    p = record.profile or {}
    return (
        record.status == "finished"
        and record.tags.get("stopped_by") != "should_stop"
        and not record.tags.get("switched")  # its metrics are several methods' together, not its own method's
        and record.metrics.get("accuracy") is not None
        and bool(p.get("domain_vector"))
        and p.get("dataset_size") is not None
        and record.method in {m.name for m in list_methods()}
    )


def fingerprint_of(record: Experience) -> str:
    """The data a run trained on: the task at its train size and sample seed (its profile's fingerprint)."""
    return record.task_fingerprint or record.profile.get("fingerprint") or record.task_name


def budget_key(record: Experience) -> str:
    """What a run trained under apart from its data: its step budget (steps × batch size) and, when it is not
    torch, its framework (another framework's runs are another instance)."""
    hp = record.hyperparameters
    backend = (record.profile or {}).get("backend", "torch")
    return f"{hp.get('max_steps')}x{hp.get('batch_size')}" + ("" if backend == "torch" else f"|{backend}")


def examples_seen(record: Experience) -> float | None:
    """The training examples a run's step budget feeds (steps × batch size); None where it does not say both."""
    steps, batch = record.hyperparameters.get("max_steps"), record.hyperparameters.get("batch_size")
    return float(steps) * float(batch) if steps and batch else None


LIKE_BUDGET = 2.0  # a run's step budget is like another's when it fed within this factor as many examples


def examples_fed(hyperparameters: dict) -> float | None:
    """The training examples a step budget feeds: ``max_steps`` × batch size (the default batch size where the
    settings name none); None without ``max_steps``."""
    from ..methods import MethodConfig

    steps = hyperparameters.get("max_steps")
    return float(steps) * float(hyperparameters.get("batch_size") or MethodConfig.batch_size) if steps else None


def like_budget(record: Experience, seen: float) -> bool:
    """Whether a run fed within a factor :data:`LIKE_BUDGET` of ``seen`` training examples (:func:`examples_fed`).
    The experience's budgets lie 4× apart (80 and 320 steps), so the factor is a choice between them, not a measured
    tolerance: two runs at the same budget took a held-out task's error from 5.1 points to 2.3, two at a 4× smaller
    one to 8.5 (``benchmarks/conditioned_intervals.py``); interpolated in log budget, they stop helping at ~1.9×."""
    fed = examples_fed(record.hyperparameters)
    return fed is not None and 1 / LIKE_BUDGET <= fed / seen <= LIKE_BUDGET


def cell_key(record: Experience) -> str:
    """The task instance a run belongs to: its data under one step budget (``budget_key``). Runs of 3 steps
    and runs of 80 do not share a level: four own runs of 3 steps on sst2-mini (48%) once took the prediction for
    sst2 from 75% to 49%."""
    return f"{fingerprint_of(record)}|{budget_key(record)}"


def task_group(record: Experience) -> str:
    """The task a run belongs to, whatever its size: leave-one-task-out holds out whole groups."""
    return record.tags.get("suite_task") or record.task_name.split("@")[0]
