"""LoHa (Hyeon-Woo et al., 2022): low-rank Hadamard-product updates (higher effective rank per parameter)."""

from dataclasses import dataclass

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from ._base import TARGET_PRESETS, Method, MethodConfig, check_targets, hp, register_method, target_modules


@dataclass
class LoHaConfig(MethodConfig):
    learning_rate: float = hp(
        2e-3, FloatDistribution(1e-4, 1e-2, log=True), "Peak AdamW learning rate of the adapters.", bounds=(1e-7, 1.0)
    )
    r: int = hp(8, IntDistribution(2, 32, log=True), "Rank of each Hadamard factor.", bounds=(1, 512))
    alpha: int = hp(
        16, IntDistribution(4, 64, log=True), "Scaling numerator: updates are scaled by alpha / r.", bounds=(1, 4096)
    )
    rank_dropout: float = hp(
        0.0, FloatDistribution(0.0, 0.2), "Dropout over rank dimensions during training.", bounds=(0.0, 0.9)
    )
    module_dropout: float = hp(
        0.0,
        FloatDistribution(0.0, 0.2),
        "Probability of disabling a whole adapted module for a step.",
        bounds=(0.0, 0.9),
    )
    target_modules: str = hp(
        "qv", CategoricalDistribution(TARGET_PRESETS), "Which linear layers get adapters (as for LoRA)."
    )


def _build(config: LoHaConfig, backbone):
    import peft

    return peft.LoHaConfig(
        r=config.r,
        alpha=config.alpha,
        rank_dropout=config.rank_dropout,
        module_dropout=config.module_dropout,
        target_modules=target_modules(config.target_modules, backbone, "loha"),
    )


register_method(
    Method(
        "loha",
        LoHaConfig,
        "Low-rank Hadamard product adaptation (peft.LoHaConfig).",
        build=_build,
        check=lambda c, b: check_targets(c, b, "loha"),
    )
)
