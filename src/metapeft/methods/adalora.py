"""AdaLoRA (Zhang et al., 2023): LoRA whose rank budget is re-allocated across layers during training.

Rank re-allocation runs after every optimiser step (``update_and_allocate``). peft adds AdaLoRA's orthogonal
regulariser only to a loss returned by the wrapped model; our loss is computed after the mean-pooling head, outside
it, so that regulariser is not applied here.
"""

from dataclasses import dataclass

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from .._errors import MethodError
from ._base import TARGET_PRESETS, Method, MethodConfig, check_targets, hp, register_method, target_modules


@dataclass
class AdaLoraConfig(MethodConfig):
    learning_rate: float = hp(
        2e-3, FloatDistribution(1e-4, 1e-2, log=True), "Peak AdamW learning rate of the adapters.", bounds=(1e-7, 1.0)
    )
    # the two search ranges meet at 8, so that every point of the search space keeps target_r <= init_r
    init_r: int = hp(12, IntDistribution(8, 48, log=True), "Initial rank of every adapted matrix.", bounds=(1, 1024))
    target_r: int = hp(
        6,
        IntDistribution(2, 8, log=True),
        "Average rank left after budget re-allocation (<= init_r).",
        bounds=(1, 1024),
    )
    lora_alpha: int = hp(16, IntDistribution(4, 128, log=True), "Scaling numerator of the updates.", bounds=(1, 4096))
    lora_dropout: float = hp(0.05, FloatDistribution(0.0, 0.2), "Dropout on the adapter input.", bounds=(0.0, 0.9))
    tinit_ratio: float = hp(
        0.1, FloatDistribution(0.0, 0.3), "Fraction of steps of warm-up before ranks are pruned.", bounds=(0.0, 0.8)
    )
    tfinal_ratio: float = hp(
        0.2, FloatDistribution(0.05, 0.4), "Fraction of final steps trained with the ranks fixed.", bounds=(0.0, 0.8)
    )
    target_modules: str = hp(
        "qv", CategoricalDistribution(TARGET_PRESETS), "Which linear layers get adapters (as for LoRA)."
    )

    def __post_init__(self) -> None:
        # rules between settings: refused wherever a config is made (train, check, recommend's budget), before anything
        # loads; the rules that need the model or the resolved step budget are in _check
        if self.target_r > self.init_r:
            raise MethodError(
                f"adalora: target_r={self.target_r} exceeds init_r={self.init_r}; the budget can only shrink ranks"
            )
        if self.tinit_ratio + self.tfinal_ratio >= 0.95:
            raise MethodError(
                "adalora: tinit_ratio + tfinal_ratio must leave steps for budget re-allocation (keep their sum below "
                "0.95)"
            )


def _check(config: AdaLoraConfig, backbone) -> None:
    if (
        config.max_steps and config.max_steps - int(config.max_steps * config.tfinal_ratio) < 2
    ):  # peft scores ranks on a step before it prunes them (0: the default budget, at least 80 steps)
        raise MethodError(
            f"adalora: max_steps={config.max_steps} leaves no step to score ranks before the final phase; use "
            "max_steps >= 2 (and tfinal_ratio below 0.5)"
        )
    check_targets(config, backbone, "adalora")


def _build(config: AdaLoraConfig, backbone):
    import peft

    steps = config.max_steps
    if not steps:
        raise MethodError(
            "adalora schedules its rank budget over max_steps: give the run's steps (training resolves 0 with "
            "metapeft.methods.with_default_steps before it builds the method)"
        )
    tinit, tfinal = int(steps * config.tinit_ratio), int(steps * config.tfinal_ratio)
    return peft.AdaLoraConfig(
        init_r=config.init_r,
        target_r=config.target_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=max(1, (steps - tinit - tfinal) // 10),
        total_step=steps,
        target_modules=target_modules(config.target_modules, backbone, "adalora"),
    )


def _reallocate(model, step: int) -> None:
    # AdaLoRA re-distributes rank from importance scores computed on the current gradients. With target_r = init_r
    # (the search ranges meet at 8) there is no rank to take away, and peft would ask torch.kthvalue for the 0th score.
    adalora = model.base_model
    config = adalora.peft_config[adalora.trainable_adapter_name]
    if config.target_r < config.init_r:
        adalora.update_and_allocate(step)


def _apply_rank_pattern(model) -> None:
    # Between re-allocations the optimiser regrows pruned ranks; peft prunes them at save time. A run stopped
    # early (time budget) must be evaluated as it will be saved, so apply the current pattern now.
    adalora = model.base_model
    pattern = adalora.peft_config[adalora.trainable_adapter_name].rank_pattern
    if pattern:
        adalora.rankallocator.mask_using_rank_pattern(adalora.model, pattern)


register_method(
    Method(
        "adalora",
        AdaLoraConfig,
        "LoRA with adaptive rank allocation across layers (peft.AdaLoraConfig).",
        build=_build,
        check=_check,
        on_step=_reallocate,
        on_end=_apply_rank_pattern,
    )
)
