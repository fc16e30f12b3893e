"""The experience store: every fine-tuning run, ours or imported, as a record the meta-learner learns from."""

from ._peft_results import read_peft_results
from ._record import Experience
from ._store import ExperienceStore

__all__ = ["Experience", "ExperienceStore", "read_peft_results"]
