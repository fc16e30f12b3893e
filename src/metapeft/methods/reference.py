"""Reference points that are not PEFT methods: full fine-tuning (every weight) and head-only (frozen encoder)."""

from dataclasses import dataclass

from optuna.distributions import CategoricalDistribution, FloatDistribution

from ._base import Method, MethodConfig, hp, register_method


@dataclass
class FullFinetuningConfig(MethodConfig):
    learning_rate: float = hp(
        1e-4,
        FloatDistribution(1e-5, 5e-4, log=True),
        "Peak AdamW learning rate of all encoder weights.",
        bounds=(1e-8, 1.0),
    )


@dataclass
class HeadOnlyConfig(MethodConfig):
    learning_rate: float = hp(
        0.0, CategoricalDistribution([0.0]), "Unused: the encoder stays frozen.", bounds=(0.0, 0.0)
    )
    head_learning_rate: float = hp(
        1e-2, FloatDistribution(1e-3, 1e-1, log=True), "Learning rate of the classification head.", bounds=(1e-7, 10.0)
    )


register_method(
    Method(
        "full_finetuning",
        FullFinetuningConfig,
        "Every weight of the encoder is trained (reference point).",
        kind="full",
    )
)
register_method(
    Method(
        "head_only",
        HeadOnlyConfig,
        "Frozen encoder, only the mean-pooled linear head is trained (reference point).",
        kind="head",
    )
)
