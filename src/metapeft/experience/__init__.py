"""The experience store: every fine-tuning run, ours or imported, as a record the meta-learner learns from."""

from ._groups import (
    LIKE_BUDGET,
    budget_key,
    cell_key,
    examples_fed,
    examples_seen,
    fingerprint_of,
    like_budget,
    task_group,
    usable,
)
from ._peft_results import read_peft_results
from ._record import (
    CONTENDED_SHARE,
    STATUSES,
    Experience,
    measured_memory,
    measured_time,
    pack_outcomes,
    paired_outcomes,
    unpack_outcomes,
    without_suspensions,
)
from ._store import ExperienceStore, process_gone, read_jsonl

__all__ = [
    "CONTENDED_SHARE",
    "LIKE_BUDGET",
    "STATUSES",
    "Experience",
    "ExperienceStore",
    "budget_key",
    "cell_key",
    "examples_fed",
    "examples_seen",
    "fingerprint_of",
    "like_budget",
    "measured_memory",
    "measured_time",
    "pack_outcomes",
    "paired_outcomes",
    "process_gone",
    "read_jsonl",
    "read_peft_results",
    "task_group",
    "unpack_outcomes",
    "usable",
    "without_suspensions",
]
