"""LoRA (Hu et al., 2021) and DoRA (Liu et al., 2024): low-rank updates of frozen weight matrices."""

from dataclasses import dataclass

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from ._base import TARGET_PRESETS, Method, MethodConfig, check_targets, hp, register_method, target_modules


@dataclass
class LoraConfig(MethodConfig):
    learning_rate: float = hp(
        2e-3,
        FloatDistribution(1e-4, 1e-2, log=True),
        "Peak AdamW learning rate of the LoRA matrices.",
        bounds=(1e-7, 1.0),
    )
    r: int = hp(8, IntDistribution(2, 64, log=True), "Rank of the update matrices.", bounds=(1, 1024))
    lora_alpha: int = hp(
        16,
        IntDistribution(4, 128, log=True),
        "Scaling numerator: updates are scaled by lora_alpha / r.",
        bounds=(1, 4096),
    )
    lora_dropout: float = hp(0.05, FloatDistribution(0.0, 0.2), "Dropout on the LoRA branch input.", bounds=(0.0, 0.9))
    target_modules: str = hp(
        "qv",
        CategoricalDistribution(TARGET_PRESETS),
        "Which linear layers get adapters: query+value, query+key+value, all attention projections, or every "
        "linear layer.",
    )


def _build(config: LoraConfig, backbone, *, use_dora: bool = False):
    import peft  # imported when used: the zoo's descriptions load without transformers

    return peft.LoraConfig(
        r=config.r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=target_modules(config.target_modules, backbone, "dora" if use_dora else "lora"),
        use_dora=use_dora,
    )


@dataclass
class DoraConfig(LoraConfig):
    """DoRA shares LoRA's hyperparameters; it adds a learned magnitude vector per adapted weight."""


register_method(
    Method(
        "lora",
        LoraConfig,
        "Low-rank adaptation of attention/linear weights (peft.LoraConfig).",
        build=_build,
        check=lambda c, b: check_targets(c, b, "lora"),
    )
)
register_method(
    Method(
        "dora",
        DoraConfig,
        "Weight-decomposed LoRA: direction by LoRA, magnitude learned separately (peft.LoraConfig(use_dora=True)).",
        build=lambda c, b: _build(c, b, use_dora=True),
        check=lambda c, b: check_targets(c, b, "dora"),
    )
)
