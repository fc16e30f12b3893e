"""The meta-initialisation on disk: the PEFT parameters and the scale in safetensors, and a JSON card.

Files: ``init.safetensors`` (the PEFT state dict as ``get_peft_model_state_dict`` gives it, plus ``log_scale``) and
``card.json`` (base model, method and its settings, the inner loop adaptation must use, the meta-training tasks
and options, the validation curve). Only safetensors is read: nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._errors import MetapeftError
from ._learner import FewShotModel, InnerLoop

WEIGHTS = "init.safetensors"
CARD = "card.json"
FORMAT = 1


def default_init() -> Path:
    """The meta-initialisation shipped for all-MiniLM-L6-v2 (see ``docs/few-shot.md`` for the command behind it)."""
    return Path(__file__).parent / "default"


def save_init(model: FewShotModel, folder: str | Path, card: dict) -> Path:
    """Write ``model``'s meta-parameters and ``card`` to ``folder`` (each file replaced atomically)."""
    from peft import get_peft_model_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model.classifier.encoder).items()}
    state["log_scale"] = model.log_scale.detach().cpu().reshape(1)
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS)
    tmp = folder / (CARD + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, **card}, indent=2, default=str))
    tmp.replace(folder / CARD)
    return folder


def read_card(folder: str | Path) -> dict:
    """The card of the meta-initialisation in ``folder``, checked; one-line errors name the file."""
    folder = Path(folder)
    path = folder / CARD
    if not path.is_file():
        raise MetapeftError(
            f"{folder} is not a meta-initialisation (no {CARD}); give a folder `metapeft meta-train` wrote"
        )
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MetapeftError(f"{path} is not valid JSON ({exc}); meta-train again or restore the folder") from None
    if not isinstance(card, dict) or not all(
        isinstance(card.get(k), t)
        for k, t in (("method", str), ("base_model", str), ("settings", dict), ("inner", dict))
    ):
        raise MetapeftError(
            f"{path} lacks method, base_model, settings or inner loop; meta-train again or restore the folder"
        )
    if card.get("format", 0) > FORMAT:
        raise MetapeftError(f"{path} was written by a newer metapeft (format {card['format']}); upgrade metapeft")
    return card


def load_init(folder: str | Path, method: str | None = None, model: str | None = None) -> tuple[FewShotModel, dict]:
    """A :class:`FewShotModel` starting from the meta-initialisation in ``folder``, and its card. ``method`` and
    ``model``, when given, must be what it was made for."""
    from peft import set_peft_model_state_dict

    from .._backbone import resolve_model

    folder = Path(folder)
    card = read_card(folder)
    wanted = resolve_model(model)[0]  # the user's base model: the default when none is named
    if wanted != card["base_model"]:
        raise MetapeftError(
            f"{folder} was meta-trained for base model {card['base_model']}, not {wanted}; use --model "
            f"{card['base_model']} or another --init"
        )
    if method and method != card["method"]:
        raise MetapeftError(
            f"{folder} was meta-trained for method {card['method']}, not {method}; use --method "
            f"{card['method']} or another --init"
        )
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MetapeftError(
            f"{folder / WEIGHTS} is not a readable safetensors file ({str(exc).splitlines()[0]}); meta-train "
            "again or restore the folder"
        ) from None
    fsm = FewShotModel.build(card["method"], card["settings"], model)
    scale = state.pop("log_scale", None)
    expected = set(fsm_state_keys(fsm))
    if scale is None or set(state) != expected:
        raise MetapeftError(
            f"{folder / WEIGHTS} does not hold the {card['method']} parameters its card describes (a foreign "
            "or mixed file); meta-train again"
        )
    for key, value in state.items():
        if value.shape != fsm_state_keys(fsm)[key]:
            raise MetapeftError(
                f"{folder / WEIGHTS}: {key} has shape {tuple(value.shape)}, expected "
                f"{tuple(fsm_state_keys(fsm)[key])}; a foreign or mixed file"
            )
    set_peft_model_state_dict(fsm.classifier.encoder, state)
    with torch.no_grad():
        fsm.log_scale.copy_(scale.reshape(()))
    return fsm, card


def fsm_state_keys(model: FewShotModel) -> dict[str, torch.Size]:
    from peft import get_peft_model_state_dict

    return {k: v.shape for k, v in get_peft_model_state_dict(model.classifier.encoder).items()}


def inner_loop_of(card: dict) -> InnerLoop:
    return InnerLoop(**card["inner"])


def card_for(model: FewShotModel, method: str, settings: dict, base_model: str, inner: InnerLoop, **extra) -> dict:
    return {
        "method": method,
        "settings": settings,
        "base_model": base_model,
        "inner": asdict(inner),
        "scale": float(model.log_scale.exp()),
        **extra,
    }
