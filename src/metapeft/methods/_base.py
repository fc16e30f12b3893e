"""The method zoo's building blocks.

A method is a :class:`Method`: a name, a hyperparameter dataclass (every field carries help text, its
default, its Optuna search distribution and its valid range), a function that turns hyperparameters into a
``peft`` config, and a compatibility check. Adding a PEFT type is one :func:`register_method` call in a small
module of its own (see ``lora.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from .._backbone import BackboneInfo
from .._errors import IncompatibleMethodError, MethodError


def hp(default: Any, search: BaseDistribution, help: str, *, bounds: tuple[float, float] | None = None) -> Any:
    """A hyperparameter field. ``search`` is the Optuna distribution searched by default; ``bounds`` the range a
    user may set by hand (defaults to the search range; categorical values must be among the choices)."""
    return field(default=default, metadata={"help": help, "search": search, "bounds": bounds})


@dataclass
class MethodConfig:
    """Hyperparameters every method shares. Methods subclass this and add (or re-default) fields."""

    learning_rate: float = hp(
        2e-3,
        FloatDistribution(1e-4, 1e-2, log=True),
        "Peak AdamW learning rate of the method's parameters.",
        bounds=(1e-7, 1.0),
    )
    head_learning_rate: float = hp(
        3e-3,
        FloatDistribution(3e-4, 3e-2, log=True),
        "Learning rate of the classification head (trained by every method).",
        bounds=(1e-7, 1.0),
    )
    batch_size: int = hp(
        16, CategoricalDistribution([8, 16, 32]), "Training examples per optimisation step.", bounds=(1, 4096)
    )
    max_steps: int = hp(
        0,
        IntDistribution(25, 400, log=True),
        "Optimisation steps (the run's budget; --time-budget may stop it earlier); 0 = about 5 epochs of the "
        "training set, within 80..320 steps (default_steps).",
        bounds=(0, 1_000_000),
    )
    warmup_ratio: float = hp(
        0.1,
        FloatDistribution(0.0, 0.2),
        "Fraction of steps of linear learning-rate warm-up (then linear decay to 0).",
        bounds=(0.0, 0.5),
    )
    weight_decay: float = hp(0.01, FloatDistribution(0.0, 0.1), "AdamW weight decay.", bounds=(0.0, 1.0))
    max_length: int = hp(
        0,
        CategoricalDistribution([0]),
        "Tokens per example after truncation; 0 = from the task profile (95th percentile, within 16..256).",
        bounds=(0, 8192),
    )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Kind = Literal["peft", "full", "head"]

DEFAULT_EPOCHS = 5
DEFAULT_STEPS = (80, 320)


def default_steps(train_size: int, batch_size: int) -> int:
    """The steps a run makes when it names none (``max_steps=0``): about :data:`DEFAULT_EPOCHS` passes over the
    training set, at least 80 and at most 320 steps.

    Why: on the curves bench (12 tasks at 1,024 examples, every method at its defaults; BENCHMARKS.md "Step budget")
    every method gains 2.4–7.8 points on average from 80 steps to 320 (5 epochs), and −0.3 to +1.1 in the last 80 of
    them: five epochs is near convergence, and a fixed 100 steps stopped most methods far from it. The bounds are
    the experience's budgets: the selector has seen 80 and 320 steps, so a default outside them would be predicted
    from nothing (a user with more data or time sets ``max_steps``).

    Args:
        train_size: Training examples.
        batch_size: Examples per step.

    Returns:
        The number of optimisation steps.
    """
    low, high = DEFAULT_STEPS
    return int(min(high, max(low, round(DEFAULT_EPOCHS * train_size / max(1, batch_size)))))


def with_default_steps(config: MethodConfig, train_size: int) -> MethodConfig:
    """``config`` with its step budget resolved (:func:`default_steps` where ``max_steps`` is 0)."""
    if config.max_steps:
        return config
    return dataclasses.replace(config, max_steps=default_steps(train_size, config.batch_size))


# The shared fields that are the user's budget (how long, how much per step, how long a text), not a choice a
# search or a recommendation makes for them.
BUDGET_FIELDS = ("batch_size", "max_steps", "max_length")


@dataclass(frozen=True)
class Method:
    """One entry of the zoo.

    ``build`` turns a config and the backbone's traits into a ``peft.PeftConfig`` (``None`` for the two
    reference points, full fine-tuning and head-only). ``check`` raises :class:`IncompatibleMethodError` with
    the reason a method cannot run on a model. ``on_step`` is called after every optimiser step (AdaLoRA's
    rank re-allocation needs it), ``on_end`` once after the last one, before the final evaluation.
    """

    name: str
    config_class: type[MethodConfig]
    summary: str
    kind: Kind = "peft"
    build: Callable[[Any, BackboneInfo], Any] | None = None
    check: Callable[[Any, BackboneInfo], None] | None = None
    on_step: Callable[[Any, int], None] | None = None
    on_end: Callable[[Any], None] | None = None  # once after the last step (also when a time budget stops early)
    prompt_learning: bool = False  # virtual tokens: token_type_ids are dropped and the mask is extended

    @property
    def mergeable(self) -> bool:
        """Whether what the method learns can be folded into the encoder's weights, so that another method can be
        trained on top (a switch): peft's adapters that change weights can (``merge_and_unload``), full
        fine-tuning and head-only change the weights or nothing; prompt, prefix and P-tuning add virtual tokens."""
        return not self.prompt_learning

    # --- hyperparameters -------------------------------------------------------------------------------------
    def fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.config_class))

    def search_space(self) -> dict[str, BaseDistribution]:
        """Optuna distributions over this method's searchable hyperparameters (single-valued ones left out)."""
        space = {}
        for f in self.fields():
            dist = f.metadata["search"]
            if isinstance(dist, CategoricalDistribution) and len(dist.choices) == 1:
                continue
            space[f.name] = dist
        return space

    def defaults(self) -> MethodConfig:
        return self.config_class()

    def make_config(self, values: dict[str, Any] | None = None, *, overrides_from: str = "--set") -> MethodConfig:
        """Validated config from ``values`` (strings are parsed by field type). Unknown keys and values out of
        range raise :class:`MethodError` naming the key, the allowed range and the flag to fix."""
        values = dict(values or {})
        by_name = {f.name: f for f in self.fields()}
        kwargs = {}
        for key, raw in values.items():
            if key not in by_name:
                raise MethodError(
                    f"{self.name} has no hyperparameter {key!r}; valid: {', '.join(by_name)} (fix {overrides_from})"
                )
            kwargs[key] = _check_value(
                self.name, by_name[key], _parse(self.name, by_name[key], raw, self.config_class)
            )
        return self.config_class(**kwargs)

    def check_compatible(self, config: MethodConfig, backbone: BackboneInfo) -> None:
        if self.check is not None:
            self.check(config, backbone)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description: summary and, per hyperparameter, default, help and search space."""
        params = {}
        for f in self.fields():
            dist, bounds = f.metadata["search"], f.metadata["bounds"]
            params[f.name] = {"default": f.default, "help": f.metadata["help"], "search": _describe_dist(dist)}
            if bounds is not None:
                params[f.name]["bounds"] = list(bounds)
        return {"name": self.name, "kind": self.kind, "summary": self.summary, "hyperparameters": params}

    _registry: ClassVar[dict[str, Method]] = {}


def _field_type(f: dataclasses.Field, cls: type) -> type:
    hint = _type_hints(cls)[f.name]
    return hint if isinstance(hint, type) else str


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    # resolving string annotations is slow (~0.1 ms a field): recommend builds hundreds of configs a call (it was
    # 0.66 s of a 0.93 s warm call before this cache)
    return typing.get_type_hints(cls)


def _parse(method: str, f: dataclasses.Field, raw: Any, cls: type) -> Any:
    kind = _field_type(f, cls)
    if not isinstance(raw, str):
        if kind in (int, float) and isinstance(raw, bool):
            raise MethodError(f"{method}: {f.name}={raw!r} must be a number, not a boolean")
        if kind is int and isinstance(raw, float):  # JSON and YAML readers turn 100 into 100.0
            if not raw.is_integer():
                raise MethodError(f"{method}: {f.name}={raw!r} is not a valid int")
            return int(raw)
        if kind is float and isinstance(raw, int):
            return float(raw)
        return raw
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            as_float = float(raw)
            if not as_float.is_integer():
                raise ValueError
            return int(as_float)
        return kind(raw)
    except ValueError:
        raise MethodError(f"{method}: {f.name}={raw!r} is not a valid {kind.__name__}") from None


def _check_value(method: str, f: dataclasses.Field, value: Any) -> Any:
    dist, bounds = f.metadata["search"], f.metadata["bounds"]
    if isinstance(dist, CategoricalDistribution) and bounds is None:
        if value not in dist.choices:
            raise MethodError(
                f"{method}: {f.name}={value!r} is not allowed; choose one of {', '.join(map(str, dist.choices))}"
            )
        return value
    low, high = bounds if bounds is not None else (dist.low, dist.high)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MethodError(f"{method}: {f.name}={value!r} must be a number in [{low}, {high}]")
    if not low <= value <= high:
        raise MethodError(f"{method}: {f.name}={value} is out of range; must be in [{low}, {high}]")
    return value


def _describe_dist(dist: BaseDistribution) -> dict[str, Any]:
    if isinstance(dist, CategoricalDistribution):
        return {"type": "categorical", "choices": list(dist.choices)}
    kind = "int" if isinstance(dist, IntDistribution) else "float"
    return {"type": kind, "low": dist.low, "high": dist.high, "log": dist.log}


# ----- registry ---------------------------------------------------------------------------------------------


def register_method(method: Method) -> Method:
    """Add ``method`` to the zoo (names are unique)."""
    if method.name in Method._registry:
        raise ValueError(f"method {method.name!r} is already registered")
    Method._registry[method.name] = method
    return method


def get_method(name: str) -> Method:
    key = name.strip().lower().replace("-", "_")
    try:
        return Method._registry[key]
    except KeyError:
        raise MethodError(
            f"unknown method {name!r}; choose one of: {', '.join(Method._registry)} (see `metapeft methods`)"
        ) from None


def list_methods() -> list[Method]:
    return list(Method._registry.values())


# ----- helpers shared by several methods ----------------------------------------------------------------------

# Projection names per architecture family: (query, key, value, attention output).
_ATTENTION_FAMILIES = (
    ("self.query", "self.key", "self.value", "attention.output.dense"),  # BERT, RoBERTa, MiniLM…
    ("q_proj", "k_proj", "v_proj", "o_proj"),  # Llama, Mistral, OPT…
    ("q_lin", "k_lin", "v_lin", "out_lin"),  # DistilBERT
    ("SelfAttention.q", "SelfAttention.k", "SelfAttention.v", "SelfAttention.o"),  # T5
)
TARGET_PRESETS = ("qv", "qkv", "attention", "all-linear")


def target_modules(preset: str, backbone: BackboneInfo, method: str) -> list[str]:
    """Module-name suffixes for a target preset on this backbone; raises when the architecture has none."""
    modules = set(backbone.linear_modules)
    if not modules:
        raise IncompatibleMethodError(
            f"{method}: {backbone.name} ({backbone.architecture}) has no torch.nn.Linear layers in its blocks "
            "to adapt (e.g. GPT-2's Conv1D); choose another method"
        )
    if preset == "all-linear":
        return sorted(modules)
    for family in _ATTENTION_FAMILIES:
        found = [next((m for m in sorted(modules) if m == name or m.endswith("." + name)), None) for name in family]
        q, k, v, o = found
        if q and v:
            chosen = {"qv": [q, v], "qkv": [q, k, v], "attention": [q, k, v, o]}[preset]
            return [m for m in chosen if m]
    raise IncompatibleMethodError(
        f"{method}: cannot find query/value projections in {backbone.name} ({backbone.architecture}); use "
        "target_modules=all-linear"
    )


def check_targets(config: Any, backbone: BackboneInfo, method: str) -> None:
    target_modules(config.target_modules, backbone, method)


def check_prompt_room(config: Any, backbone: BackboneInfo, method: str) -> None:
    """Prompt tuning and P-tuning prepend virtual tokens, which must fit into the model's position table."""
    room = backbone.max_positions - config.num_virtual_tokens
    if backbone.max_positions and room < 16:
        raise IncompatibleMethodError(
            f"{method}: {config.num_virtual_tokens} virtual tokens leave {room} of {backbone.name}'s "
            f"{backbone.max_positions} positions for text; lower num_virtual_tokens"
        )
