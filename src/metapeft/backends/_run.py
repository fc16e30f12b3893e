"""What a command needs before a causal-LM run: is the model a causal LM, and the data as a causal-LM task (the run
itself is :func:`metapeft.training.train`, whose records, tracking and callbacks are those of every run)."""

from __future__ import annotations

import json
from pathlib import Path

from .._errors import TaskError


def is_causal_model(model: str | None) -> bool:
    """Whether ``model`` (a local folder) is a causal LM (its config's architecture ends in ``ForCausalLM``)."""
    if not model or not (Path(model).expanduser() / "config.json").is_file():
        return False
    config = json.loads((Path(model).expanduser() / "config.json").read_text())
    return any(str(a).endswith("ForCausalLM") for a in config.get("architectures") or [])


def load_for_causal(data: str | Path, seed: int = 0):
    """``data`` as a causal-LM task: prompt/completion (or text) rows as they are, labelled rows verbalised."""
    from ..tasks import load_causal_task, load_task, verbalise

    try:
        return verbalise(load_task(data, seed=seed))
    except TaskError:  # no text or no label column: prompt/completion or text rows (else their one-line error)
        return load_causal_task(data, seed=seed)
