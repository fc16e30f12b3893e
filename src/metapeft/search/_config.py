"""What a search does, as one validated object: which problem (objectives, methods, budget), how it samples, where it
is stored, and how each trial is run (a :class:`~metapeft.training.RunConfig` every trial starts from)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import OptionError

if TYPE_CHECKING:
    from ..training import RunConfig, SwitchPolicy

OBJECTIVES = ("accuracy", "train_time_s", "peak_memory_mb")
SAMPLERS = ("meta", "gp", "tpe", "random")
PREFERENCES = {"accuracy": "accuracy", "time": "train_time_s", "memory": "peak_memory_mb"}


@dataclass
class SearchConfig:
    """The options of one search (``tune``; ``autotune`` searches with one too), checked on construction
    (``OptionError`` names the field).

    >>> tune(  # doctest: +SKIP
    ...     task, SearchConfig(trials=20, objectives=("accuracy", "peak_memory_mb"), max_memory_mb=2000)
    ... )
    """

    trials: int | None = field(
        default=None,
        metadata={
            "help": "Trials in total, over every process sharing the study (default: 10 unless time_budget is set)."
        },
    )
    time_budget: float | None = field(default=None, metadata={"help": "Seconds after which no new trial starts."})
    objectives: tuple[str, ...] = field(
        default=("accuracy",),
        metadata={"help": f"What the Pareto set is over: distinct names among {', '.join(OBJECTIVES)}."},
    )
    methods: list[str] | None = field(
        default=None, metadata={"help": "Methods to search (default: every method that can take the model)."}
    )
    max_steps: int | None = field(
        default=None,
        metadata={"help": "Training steps of each trial (default: about 5 epochs, 80..320 steps: default_steps)."},
    )
    sampler: str = field(
        default="meta",
        metadata={
            "help": (
                f"{' | '.join(SAMPLERS)}: meta is warm-started and guided by the meta-learner; the others are "
                "Optuna's, cold."
            )
        },
    )
    storage: str | None = field(
        default=None,
        metadata={
            "help": "Optuna RDB storage URL shared by cooperating processes (default: SQLite in the data directory)."
        },
    )
    study_name: str | None = field(
        default=None,
        metadata={"help": "Processes with the same storage and study name share one search (default: a new name)."},
    )
    prune: bool = field(
        default=True,
        metadata={"help": "Stop bad trials early from their learning curves (for a search for accuracy alone)."},
    )
    seed: int | None = field(default=None, metadata={"help": "Sampler seed."})
    prefer: str = field(
        default="accuracy",
        metadata={
            "help": f"Which finished trial is the pick: the best on {' | '.join(PREFERENCES)}, within the limits."
        },
    )
    max_memory_mb: float | None = field(
        default=None,
        metadata={
            "help": "Pick (and propose, with the meta sampler) only configurations within this peak memory (MB)."
        },
    )
    max_time_s: float | None = field(
        default=None,
        metadata={
            "help": "Pick (and propose, with the meta sampler) only configurations within this training time (s)."
        },
    )
    warm_start: int = field(
        default=3,
        metadata={
            "help": "First trials taken from the meta-learner's ranking and the most similar past task (meta sampler)."
        },
    )
    output_dir: str | Path | None = field(
        default=None,
        metadata={
            "help": (
                "Folder of the trials' adapters and the Pareto plot (default: runs/tune/<study> in the data "
                "directory)."
            )
        },
    )
    run: RunConfig = field(
        default_factory=lambda: SearchConfig.trial_run(),
        metadata={
            "help": "How every trial is run (model, evaluation sizes, tracking); its output_dir is set per trial."
        },
    )
    switch: SwitchPolicy | None = field(
        default=None,
        metadata={
            "help": (
                "Let each trial whose learning can be merged switch method mid-run when its learning curve says "
                "another will finish better (autotune's final run too)."
            )
        },
    )

    def __post_init__(self) -> None:
        self.objectives = tuple(self.objectives) if isinstance(self.objectives, (list, tuple)) else self.objectives
        if (
            not isinstance(self.objectives, tuple)
            or not self.objectives
            or len(set(self.objectives)) != len(self.objectives)
            or any(o not in OBJECTIVES for o in self.objectives)
        ):
            raise OptionError(
                "objectives", f"must be distinct names among {', '.join(OBJECTIVES)}, got {self.objectives!r}"
            )
        if self.sampler not in SAMPLERS:
            raise OptionError("sampler", f"must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.prefer not in PREFERENCES:
            raise OptionError("prefer", f"must be one of {', '.join(PREFERENCES)}, got {self.prefer!r}")
        if (
            PREFERENCES[self.prefer] not in self.objectives
        ):  # with one objective the Pareto set is just the most accurate trials
            raise OptionError(
                "prefer",
                f"{self.prefer} picks within the Pareto set of the objectives, which lack "
                f"{PREFERENCES[self.prefer]}; add it to the objectives or prefer accuracy",
            )
        for name, least in (("trials", 1), ("max_steps", 1), ("warm_start", 0)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise OptionError(name, f"must be a whole number of at least {least}, got {value!r}")
        for name in ("time_budget", "max_memory_mb", "max_time_s"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0):
                raise OptionError(name, f"must be a positive number, got {value!r}")
        if self.study_name is not None and (
            not self.study_name.strip()
            or any(c in self.study_name for c in "/\\\0")
            or self.study_name.startswith(".")
        ):
            # a study name becomes a folder under runs/tune: it may not lead out of it
            raise OptionError(
                "study_name",
                f"{self.study_name!r} names a folder, so it may not be empty, start with '.' or hold '/' or "
                "'\\'; choose a plain name such as 'sst2-search'",
            )
        if self.methods is not None:
            from ..methods import get_method

            if isinstance(self.methods, str) or not self.methods:
                raise OptionError("methods", f"must be a non-empty list of method names, got {self.methods!r}")
            for name in self.methods:
                get_method(name)  # an unknown name is refused with the list of known ones
        from ..training import RunConfig, SwitchPolicy

        if self.switch is not None and not isinstance(self.switch, SwitchPolicy):
            raise OptionError("switch", f"must be a SwitchPolicy or None, got {type(self.switch).__name__}")
        if not isinstance(self.run, RunConfig):
            raise OptionError("run", f"must be a RunConfig, got {type(self.run).__name__}")
        if self.run.output_dir is not None:
            raise OptionError(
                "run", "sets output_dir, which the search sets per trial; give the search's output_dir instead"
            )
        if self.trials is None and self.time_budget is None:
            self.trials = 10

    @staticmethod
    def trial_run(**changes) -> RunConfig:
        """The default ``run``, with ``changes``: each trial's curve (what the pruner reads) on 300 held-out examples,
        its final accuracy, which the pick compares, on up to 1,000 (on 300 their sampling noise alone, ~2.3 points,
        would often decide the pick)."""
        from ..training import RunConfig  # torch loads with the training package: not on `import metapeft.search`

        return RunConfig(**{"eval_size": 300, "final_eval_size": 1000, **changes})

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "output_dir": None if self.output_dir is None else str(self.output_dir),
            "run": self.run.as_dict(),
        }

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each field's help text, by field name."""
        return {f.name: f.metadata["help"] for f in fields(cls)}
