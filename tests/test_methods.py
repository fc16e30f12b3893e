import json
from dataclasses import dataclass

import pytest
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from metapeft._backbone import backbone_info
from metapeft._errors import IncompatibleMethodError, MethodError
from metapeft.methods import Method, MethodConfig, get_method, hp, list_methods, register_method, target_modules

ZOO = [
    "lora",
    "dora",
    "adalora",
    "prompt_tuning",
    "prefix_tuning",
    "p_tuning",
    "ia3",
    "loha",
    "full_finetuning",
    "head_only",
]


def test_zoo_has_every_method_with_a_search_space():
    assert [m.name for m in list_methods()][: len(ZOO)] == ZOO
    for m in list_methods():
        space = m.search_space()
        assert "learning_rate" in space or m.name == "head_only"
        assert all(isinstance(d, BaseDistribution) for d in space.values())
        described = m.describe()
        json.dumps(described)
        assert all(p["help"] for p in described["hyperparameters"].values())  # every field carries help text


def test_defaults_sit_inside_their_bounds_and_build_on_minilm():
    from metapeft.methods import with_default_steps

    backbone = backbone_info(None)
    for m in list_methods():
        config = m.defaults()
        assert m.make_config(config.as_dict()) == config  # defaults pass validation
        m.check_compatible(config, backbone)
        if m.kind == "peft":  # built as training builds it: with its step budget resolved (AdaLoRA schedules by it)
            assert m.build(with_default_steps(config, 1024), backbone) is not None


def test_the_default_budget_is_about_five_epochs_within_the_experiences_budgets():
    """max_steps=0 (the default) resolves to ~5 epochs, 80..320 steps: the budgets the selector has seen."""
    from metapeft.methods import default_steps, get_method, with_default_steps

    assert [default_steps(n, 16) for n in (10, 64, 256, 500, 1024, 100_000)] == [80, 80, 80, 156, 320, 320]
    assert default_steps(1024, 32) == 160
    lora = get_method("lora")
    assert lora.defaults().max_steps == 0
    assert with_default_steps(lora.make_config({"batch_size": 8}), 300).max_steps == 188
    assert with_default_steps(lora.make_config({"max_steps": 12}), 300).max_steps == 12  # a budget given is kept
    adalora = get_method("adalora")
    adalora.check_compatible(adalora.defaults(), backbone_info(None))  # 0 is no step count to check


def test_every_point_of_every_search_space_is_a_valid_configuration():
    # a sampler that can draw a configuration the method refuses wastes trials and leaves failed runs in the prior
    import optuna

    backbone = backbone_info(None)
    for m in list_methods():
        space = m.search_space()
        sampler = optuna.samplers.RandomSampler(seed=0)
        study = optuna.create_study(sampler=sampler)
        corners = [
            {k: getattr(d, "low", None) if i == 0 else getattr(d, "high", None) for k, d in space.items()}
            for i in (0, 1)
        ]
        draws = [study.ask(space).params for _ in range(200)] + [
            {k: v for k, v in c.items() if v is not None} for c in corners
        ]
        for params in draws:
            m.check_compatible(m.make_config({**params, "max_length": 128}), backbone)


def test_config_parsing_and_errors():
    lora = get_method("LoRA")
    assert lora.make_config({"r": "16", "learning_rate": "1e-3", "target_modules": "all-linear"}).r == 16
    with pytest.raises(MethodError, match="no hyperparameter 'rank'"):
        lora.make_config({"rank": 4})
    with pytest.raises(MethodError, match=r"r=0 is out of range; must be in \[1, 1024\]"):
        lora.make_config({"r": "0"})
    with pytest.raises(MethodError, match="not a valid int"):
        lora.make_config({"r": "2.5"})
    with pytest.raises(MethodError, match="choose one of"):
        lora.make_config({"target_modules": "everything"})
    assert lora.make_config({"max_steps": 100.0}).max_steps == 100 and isinstance(
        lora.make_config({"max_steps": 100.0}).max_steps, int
    )
    with pytest.raises(MethodError, match="not a valid int"):
        lora.make_config({"max_steps": 2.5})
    with pytest.raises(MethodError, match="not a boolean"):
        lora.make_config({"r": True})
    with pytest.raises(MethodError, match="unknown method 'lorax'"):
        get_method("lorax")


def test_target_presets_resolve_on_bert():
    b = backbone_info(None)
    assert target_modules("qv", b, "lora") == ["attention.self.query", "attention.self.value"]
    assert len(target_modules("attention", b, "lora")) == 4
    assert "intermediate.dense" in target_modules("all-linear", b, "lora")


def test_adalora_rejects_settings_peft_cannot_run():
    m = get_method("adalora")
    with pytest.raises(MethodError, match="target_r=8 exceeds init_r=4"):
        m.check_compatible(m.make_config({"init_r": 4, "target_r": 8}), backbone_info(None))
    for steps, tfinal in ((1, 0.2), (2, 0.5)):  # peft would prune ranks it never scored (KeyError inside peft)
        with pytest.raises(MethodError, match=f"max_steps={steps} leaves no step to score ranks"):
            m.check_compatible(m.make_config({"max_steps": steps, "tfinal_ratio": tfinal}), backbone_info(None))
    m.check_compatible(m.make_config({"max_steps": 2}), backbone_info(None))


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A small randomly initialised GPT-2 saved locally: its attention uses Conv1D, not nn.Linear."""
    from transformers import GPT2Config, GPT2Model

    from metapeft._backbone import load_tokenizer

    path = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=30522, n_positions=64)).save_pretrained(path)
    load_tokenizer(None).save_pretrained(path)
    return str(path)


def test_incompatible_methods_say_why(tiny_gpt2):
    b = backbone_info(tiny_gpt2)
    with pytest.raises(IncompatibleMethodError, match="no torch.nn.Linear layers"):
        get_method("lora").check_compatible(get_method("lora").defaults(), b)
    pt = get_method("prompt_tuning")
    with pytest.raises(IncompatibleMethodError, match="virtual tokens leave"):
        pt.check_compatible(pt.make_config({"num_virtual_tokens": 60}), b)
    get_method("ia3").check_compatible(get_method("ia3").defaults(), b)  # peft maps (IA)^3 for gpt2


def test_search_leaves_out_methods_the_model_cannot_take(tiny_gpt2):
    from metapeft._errors import MetapeftError
    from metapeft.search._tune import _compatible

    zoo = _compatible(None, tiny_gpt2)  # the whole zoo: methods that cannot take GPT-2's Conv1D layers are left out
    assert "ia3" in zoo and "full_finetuning" in zoo and not {"lora", "dora", "adalora", "loha"} & set(zoo)
    with pytest.raises(
        MetapeftError, match="methods includes lora: .*no torch.nn.Linear layers"
    ):  # named by the user: refused
        _compatible(["ia3", "lora"], tiny_gpt2)


def test_adding_a_peft_type_is_one_registration(small_task, example_profile):
    """VeRA is not in the zoo; one dataclass and one register_method call make it trainable."""
    import peft

    from metapeft.training import RunConfig, train

    @dataclass
    class VeraConfig(MethodConfig):
        r: int = hp(64, IntDistribution(16, 256, log=True), "Rank of the shared random projections.", bounds=(1, 4096))
        learning_rate: float = hp(1e-2, FloatDistribution(1e-3, 5e-2, log=True), "Learning rate.", bounds=(1e-7, 1.0))

    register_method(
        Method(
            "vera_test",
            VeraConfig,
            "VeRA (test registration).",
            build=lambda c, b: peft.VeraConfig(r=c.r, target_modules=target_modules("qv", b, "vera")),
        )
    )
    try:
        result = train(
            small_task,
            "vera_test",
            {"max_steps": 4},
            RunConfig(record=False, track=False, save=False, eval_size=32),
            profile=example_profile,
        )
        assert result.metrics["trainable_params"] > 0 and result.metrics["steps"] == 4
    finally:
        Method._registry.pop("vera_test")
