"""One fine-tuning run as the meta-learner sees it."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

Status = Literal["running", "finished", "failed", "interrupted"]


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Experience:
    """A run: on which task and model, which method and hyperparameters, and what it achieved.

    ``metrics`` holds the final numbers (accuracy, macro_f1, train_time_s, eval_time_s, peak_memory_mb — peak tensor
    memory — and train_memory_mb — its part above the loaded model —, trainable_params, total_params,
    adapter_size_bytes, steps, tokens_per_s); ``curve`` the evaluations during
    training (step, fraction, train_loss, accuracy, macro_f1, train_time_s). ``source`` says where the record
    came from: ``metapeft`` for our own runs, ``hf-peft-method-comparison`` for imported results, ….
    """

    task_name: str
    method: str
    model: str
    task_fingerprint: str = ""
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    status: Status = "running"
    error: str | None = None
    source: str = "metapeft"
    seed: int | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get("accuracy")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        out["updated_at"] = self.updated_at.isoformat()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Experience:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        for key in ("created_at", "updated_at"):
            if isinstance(values.get(key), str):
                values[key] = datetime.fromisoformat(values[key])
        return cls(**values)
