"""(IA)^3 (Liu et al., 2022): learned rescaling vectors on keys, values and feed-forward activations."""

from dataclasses import dataclass

from optuna.distributions import CategoricalDistribution, FloatDistribution

from .._errors import IncompatibleMethodError
from ._base import Method, MethodConfig, hp, register_method


@dataclass
class IA3Config(MethodConfig):
    learning_rate: float = hp(
        1e-2,
        FloatDistribution(1e-3, 1e-1, log=True),
        "Peak AdamW learning rate of the scaling vectors.",
        bounds=(1e-7, 1.0),
    )
    init_ia3_weights: bool = hp(True, CategoricalDistribution([True]), "Start the scaling vectors at one (identity).")


def _check(config: IA3Config, backbone) -> None:
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGET_MAP

    if backbone.model_type not in TARGET_MAP:
        raise IncompatibleMethodError(
            f"ia3: peft has no (IA)^3 module mapping for model type {backbone.model_type!r} ({backbone.name})"
        )


def _build(config: IA3Config, backbone):
    import peft
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF_MAP
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGET_MAP

    return peft.IA3Config(
        target_modules=TARGET_MAP[backbone.model_type],
        feedforward_modules=FF_MAP[backbone.model_type],
        init_ia3_weights=config.init_ia3_weights,
    )


register_method(
    Method(
        "ia3",
        IA3Config,
        "Learned rescaling of keys, values and feed-forward activations (peft.IA3Config).",
        build=_build,
        check=_check,
    )
)
