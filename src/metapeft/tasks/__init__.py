"""Tasks: loading labelled text data, suites of tasks, and the task profile the meta-learner reads."""

from ._causal import CausalTask, load_causal_task, verbalise
from ._data import DataSource, dataset_md5, dvc_root, track
from ._loading import example_names, load_task, task_from_rows
from ._profile import TaskProfile, cached_profile, embed_texts, profile_task
from ._suite import SuiteEntry, load_suite
from ._task import Split, Task, stratified_indices

__all__ = [
    "CausalTask",
    "DataSource",
    "Split",
    "SuiteEntry",
    "Task",
    "TaskProfile",
    "cached_profile",
    "dataset_md5",
    "dvc_root",
    "embed_texts",
    "example_names",
    "load_causal_task",
    "load_suite",
    "load_task",
    "task_from_rows",
    "profile_task",
    "stratified_indices",
    "track",
    "verbalise",
]
