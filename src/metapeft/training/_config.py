"""How a training run is carried out and recorded, as one validated object (what is trained is the method's config)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .._errors import OptionError


@dataclass
class RunConfig:
    """The options of one training run, checked on construction (``OptionError`` names the field).

    >>> train(task, "lora", {"r": 16}, RunConfig(seed=1, eval_size=300, track=False))   # doctest: +SKIP
    """

    model: str | None = field(
        default=None, metadata={"help": "Base model: a hub id or a local folder (default: all-MiniLM-L6-v2, bundled)."}
    )
    seed: int = field(default=0, metadata={"help": "Initialisation, data order and dropout."})
    sample_seed: int | None = field(
        default=None,
        metadata={"help": "Draws the evaluation sample (default: seed); runs of two seeds share rows with one."},
    )
    time_budget: float | None = field(
        default=None,
        metadata={"help": "Seconds of training (evaluation excluded) after which the run stops and is evaluated."},
    )
    eval_size: int = field(
        default=500,
        metadata={"help": "Held-out examples each learning-curve point is evaluated on (stratified sample; 0 = all)."},
    )
    eval_points: int = field(default=4, metadata={"help": "Learning-curve points, evenly spaced over the steps."})
    final_eval_size: int | None = field(
        default=None,
        metadata={"help": "Held-out examples of the final evaluation when more than eval_size (0 = all)."},
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda or mps (default: the best available)."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow model code from the hub (only for models you trust)."}
    )
    output_dir: str | Path | None = field(
        default=None,
        metadata={"help": "New folder for the adapter and head (default: runs/<run id> in the data directory)."},
    )
    save: bool = field(default=True, metadata={"help": "Save the trained adapter and head."})
    record: bool = field(
        default=True, metadata={"help": "Record the run in the experience store (before training, completed after)."}
    )
    track: bool = field(default=True, metadata={"help": "Log the run to MLflow."})
    tags: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Extra tags for the experience record and the MLflow run."}
    )
    backend: str = field(
        default="torch",
        metadata={"help": "torch (transformers + peft), or mlx (mlx-lm; causal-LM tasks only, needs metapeft[mlx])."},
    )

    def __post_init__(self) -> None:
        for name in ("seed", "eval_size", "eval_points"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise OptionError(name, f"must be a whole number, got {getattr(self, name)!r}")
        for name in ("sample_seed", "final_eval_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise OptionError(name, f"must be a whole number, got {value!r}")
        if self.time_budget is not None and not (isinstance(self.time_budget, (int, float)) and self.time_budget > 0):
            raise OptionError("time_budget", f"must be a positive number of seconds, got {self.time_budget!r}")
        if self.eval_size < 0:
            raise OptionError("eval_size", f"must be 0 (all) or positive, got {self.eval_size}")
        if self.final_eval_size is not None and self.final_eval_size < 0:
            raise OptionError("final_eval_size", f"must be 0 (all) or positive, got {self.final_eval_size}")
        if self.eval_points < 1:
            raise OptionError("eval_points", f"must be at least 1, got {self.eval_points}")
        from ..backends import BACKENDS

        if self.backend not in BACKENDS:
            raise OptionError("backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not isinstance(self.tags, dict):
            raise OptionError("tags", f"must be a mapping, got {type(self.tags).__name__}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "output_dir": None if self.output_dir is None else str(self.output_dir)}

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each field's help text, by field name."""
        return {f.name: f.metadata["help"] for f in fields(cls)}
