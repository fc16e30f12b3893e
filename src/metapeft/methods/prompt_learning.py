"""Prompt-learning methods: learned virtual tokens instead of weight updates.

Prompt tuning (Lester et al., 2021) learns input embeddings; P-tuning (Liu et al., 2021) produces them with a
small encoder; prefix tuning (Li & Liang, 2021) learns key/value prefixes for every layer.
"""

from dataclasses import dataclass

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from .._errors import IncompatibleMethodError
from ._base import Method, MethodConfig, check_prompt_room, hp, register_method

_TOKENS = IntDistribution(4, 64, log=True)
_TOKEN_BOUNDS = (1, 512)


@dataclass
class PromptTuningConfig(MethodConfig):
    learning_rate: float = hp(
        2e-2,
        FloatDistribution(1e-3, 1e-1, log=True),
        "Peak AdamW learning rate of the prompt embeddings.",
        bounds=(1e-7, 10.0),
    )
    num_virtual_tokens: int = hp(
        16, _TOKENS, "Number of learned virtual tokens prepended to the input.", bounds=_TOKEN_BOUNDS
    )
    prompt_init: str = hp(
        "sample_vocab",
        CategoricalDistribution(["random", "sample_vocab"]),
        "Initialise the prompt randomly or from embeddings of random vocabulary tokens.",
    )


@dataclass
class PrefixTuningConfig(MethodConfig):
    learning_rate: float = hp(
        1e-2, FloatDistribution(1e-3, 5e-2, log=True), "Peak AdamW learning rate of the prefixes.", bounds=(1e-7, 10.0)
    )
    num_virtual_tokens: int = hp(16, _TOKENS, "Length of the key/value prefix at every layer.", bounds=_TOKEN_BOUNDS)
    prefix_projection: bool = hp(
        False,
        CategoricalDistribution([False, True]),
        "Produce prefixes through a two-layer MLP (reparameterisation) instead of learning them directly.",
    )
    encoder_hidden_size: int = hp(
        256,
        IntDistribution(64, 512, log=True),
        "Hidden size of the projection MLP (used when prefix_projection is true).",
        bounds=(8, 8192),
    )


@dataclass
class PTuningConfig(MethodConfig):
    learning_rate: float = hp(
        1e-2,
        FloatDistribution(1e-3, 5e-2, log=True),
        "Peak AdamW learning rate of the prompt encoder.",
        bounds=(1e-7, 10.0),
    )
    num_virtual_tokens: int = hp(
        16, _TOKENS, "Number of virtual tokens produced by the prompt encoder.", bounds=_TOKEN_BOUNDS
    )
    encoder_reparameterization_type: str = hp(
        "MLP", CategoricalDistribution(["MLP", "LSTM"]), "Architecture of the prompt encoder."
    )
    encoder_hidden_size: int = hp(
        128, IntDistribution(32, 512, log=True), "Hidden size of the prompt encoder.", bounds=(8, 8192)
    )
    encoder_dropout: float = hp(
        0.0, FloatDistribution(0.0, 0.2), "Dropout inside the prompt encoder.", bounds=(0.0, 0.9)
    )


def _prompt_tuning(config: PromptTuningConfig, backbone):
    import peft

    init = peft.PromptTuningInit.SAMPLE_VOCAB if config.prompt_init == "sample_vocab" else peft.PromptTuningInit.RANDOM
    return peft.PromptTuningConfig(num_virtual_tokens=config.num_virtual_tokens, prompt_tuning_init=init)


def _prefix_tuning(config: PrefixTuningConfig, backbone):
    import peft

    return peft.PrefixTuningConfig(
        num_virtual_tokens=config.num_virtual_tokens,
        prefix_projection=config.prefix_projection,
        encoder_hidden_size=config.encoder_hidden_size,
    )


def _p_tuning(config: PTuningConfig, backbone):
    import peft

    return peft.PromptEncoderConfig(
        num_virtual_tokens=config.num_virtual_tokens,
        encoder_reparameterization_type=config.encoder_reparameterization_type,
        encoder_hidden_size=config.encoder_hidden_size,
        encoder_dropout=config.encoder_dropout,
    )


def _check_prefix(config: PrefixTuningConfig, backbone) -> None:
    if not backbone.supports_past_key_values:
        raise IncompatibleMethodError(
            f"prefix_tuning: {backbone.name} ({backbone.architecture}) does not accept past_key_values, which "
            "prefix tuning feeds its prefixes through"
        )


register_method(
    Method(
        "prompt_tuning",
        PromptTuningConfig,
        "Learned soft-prompt embeddings prepended to the input (peft.PromptTuningConfig).",
        build=_prompt_tuning,
        check=lambda c, b: check_prompt_room(c, b, "prompt_tuning"),
        prompt_learning=True,
    )
)
register_method(
    Method(
        "prefix_tuning",
        PrefixTuningConfig,
        "Learned key/value prefixes at every attention layer (peft.PrefixTuningConfig).",
        build=_prefix_tuning,
        check=_check_prefix,
        prompt_learning=True,
    )
)
register_method(
    Method(
        "p_tuning",
        PTuningConfig,
        "Virtual tokens produced by a small MLP/LSTM prompt encoder (peft.PromptEncoderConfig).",
        build=_p_tuning,
        check=lambda c, b: check_prompt_room(c, b, "p_tuning"),
        prompt_learning=True,
    )
)
