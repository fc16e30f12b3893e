"""Switching the method during a run (merge-and-continue), with the real MiniLM weights."""

import numpy as np
import pytest
import torch

from metapeft._backbone import backbone_info, load_tokenizer
from metapeft._errors import MetapeftError
from metapeft.methods import get_method
from metapeft.training import RunConfig, SwitchAt, TrainerCallback, fit, load_classifier, train
from metapeft.training._engine import Batches


class Watch(TrainerCallback):
    """Logits on a fixed batch at each curve point and right after each switch (before the next method's first
    step)."""

    def __init__(self, task, schedule: dict[int, str]):
        self.batch = Batches(load_tokenizer(None), task.test.select(np.arange(24)), 32).collate(
            list(range(24)), torch.device("cpu")
        )
        self.schedule, self.at_point, self.at_switch, self.events = schedule, {}, {}, []
        self.head_steps, self.fresh = {}, {}

    def _logits(self, state):
        state.model.eval()
        with torch.no_grad():
            return state.model(**self.batch).clone()

    def on_evaluate(self, state):
        self.at_point[state.step] = self._logits(state)

    def should_switch(self, state):
        from metapeft.training import Switch

        return Switch(self.schedule[state.step], reason="test") if state.step in self.schedule else None

    def on_switch(self, state):
        self.events.append((state.step, state.method, type(state.optimizer).__name__))
        self.at_switch[state.step] = self._logits(state)
        # the head keeps its optimiser state (its step count runs on from the start); the new method starts fresh
        head = list(state.model.head.parameters())
        self.head_steps[state.step] = {int(state.optimizer.state.get(p, {}).get("step", 0)) for p in head}
        self.fresh[state.step] = not any(
            state.optimizer.state.get(p) for p in state.model.encoder.parameters() if p.requires_grad
        )


def test_merge_and_continue_keeps_predictions_through_a_chain_of_switches_and_reloads(
    quick_task, example_profile, tmp_path
):
    small_task = quick_task
    # every method that changes weights, each merged before the next starts:
    # lora → ia3 → loha → adalora → dora → full → head
    chain = ["ia3", "loha", "adalora", "dora", "full_finetuning", "head_only"]
    steps = 2 * (len(chain) + 1)
    watch = Watch(small_task, {2 * (i + 1): m for i, m in enumerate(chain)})
    run = RunConfig(
        record=False,
        track=False,
        output_dir=tmp_path / "run",
        eval_size=16,
        eval_points=len(chain) + 1,
        final_eval_size=10_000,
    )
    result = train(
        small_task, "lora", {"max_steps": steps, "batch_size": 8}, run, profile=example_profile, callbacks=[watch]
    )
    switches = result.metrics["switches"]
    assert [(s["from"], s["to"], s["step"]) for s in switches] == list(
        zip(["lora", *chain[:-1]], chain, range(2, steps, 2))
    )
    for step in watch.at_switch:  # the next method starts as the identity: the model predicts exactly what it did
        torch.testing.assert_close(watch.at_switch[step], watch.at_point[step], atol=1e-4, rtol=1e-4)
    assert [e[1] for e in watch.events] == chain
    assert watch.head_steps == {step: {step} for step in watch.at_switch} and all(watch.fresh.values())
    assert all(s["accuracy_before"] is not None and s["accuracy_after"] is not None for s in switches)
    assert result.curve[-1]["method"] == "head_only" and result.metrics["steps"] == steps
    # saved as a whole encoder (what the merged methods learned is in its weights) and reloaded like any run
    reloaded = load_classifier(result.adapter_path)
    assert (
        reloaded.meta["kind"] == "full"
        and reloaded.meta["started_with"] == "lora"
        and len(reloaded.meta["switches"]) == len(chain)
    )
    test = small_task.test
    accuracy = np.mean(
        [p == small_task.label_names[y] for p, y in zip(reloaded.predict(test.texts, test.pairs), test.labels)]
    )
    assert accuracy == pytest.approx(result.metrics["accuracy"], abs=1e-5)  # the metric is rounded to 5 places


def test_a_switch_to_virtual_tokens_saves_them_over_the_merged_encoder(quick_task, example_profile, tmp_path):
    small_task = quick_task
    run = RunConfig(
        record=False, track=False, output_dir=tmp_path / "run", eval_size=16, eval_points=2, final_eval_size=10_000
    )
    result = train(
        small_task,
        "lora",
        {"max_steps": 4},
        run,
        profile=example_profile,
        callbacks=[SwitchAt(2, "prompt_tuning", {"learning_rate": 3e-2})],
    )
    assert [s["to"] for s in result.metrics["switches"]] == ["prompt_tuning"]
    reloaded = load_classifier(result.adapter_path)
    assert (
        reloaded.meta["kind"] == "peft"
        and reloaded.meta["prompt_learning"]
        and (tmp_path / "run" / "encoder" / "model.safetensors").exists()
    )
    test = small_task.test
    accuracy = np.mean(
        [p == small_task.label_names[y] for p, y in zip(reloaded.predict(test.texts, test.pairs), test.labels)]
    )
    assert accuracy == pytest.approx(result.metrics["accuracy"], abs=1e-5)  # the metric is rounded to 5 places


def test_virtual_tokens_cannot_be_switched_from(small_task):
    spec = get_method("prompt_tuning")
    with pytest.raises(MetapeftError, match="cannot switch from prompt_tuning: its virtual tokens cannot be merged"):
        fit(
            small_task,
            spec,
            spec.make_config({"max_steps": 4}),
            backbone_info(None),
            RunConfig(eval_size=16, eval_points=2),
            max_length=32,
            device=torch.device("cpu"),
            callbacks=[SwitchAt(2, "lora")],
        )


@pytest.fixture(scope="module")
def controller_parts():
    from metapeft.meta import MetaPEFT
    from metapeft.prior import PriorExperience

    records = PriorExperience().records()
    meta = MetaPEFT(include_own=False)
    meta.fit()
    profile = next(r.profile for r in records if r.task_name == "sst2@1024")
    return meta, profile, meta.forecaster()  # what `train --switch` uses: with the shipped surrogate predictions


def test_the_forecaster_reads_the_surrogates_out_of_task_predictions(controller_parts):
    """The prior ships the surrogate's out-of-task prediction of each of its runs (``write_packaged_model``); the
    forecaster `train --switch` uses is fitted with them, and early in a run its forecast moves with the
    surrogate's expectation."""
    from metapeft.experience import usable
    from metapeft.prior import PriorExperience, expected_accuracies

    shipped = expected_accuracies()
    assert set(shipped) == {r.id for r in PriorExperience().records() if usable(r)}
    assert all(0 <= v <= 1 for v in shipped.values())
    meta, _, forecaster = controller_parts
    assert forecaster.reads_expected
    curve = [{"step": 20, "accuracy": 0.6}]
    low, high = (forecaster.predict("lora", 2, curve, 80, expected).mean for expected in (0.55, 0.9))
    assert high > low + 0.01


def test_the_controller_switches_on_a_failing_curve_and_holds_on_a_healthy_one(controller_parts):
    from metapeft.training import SwitchController, SwitchPolicy, TrainerState

    meta, profile, forecaster = controller_parts

    def decide(accuracies, policy=None):
        controller = SwitchController(meta, profile, forecaster, policy or SwitchPolicy())  # the shipped threshold
        state = TrainerState(
            max_steps=80,
            step=20 * len(accuracies),
            method="lora",
            curve=[{"step": 20 * (i + 1), "accuracy": a} for i, a in enumerate(accuracies)],
        )
        return controller.should_switch(state), (controller.decisions or [None])[-1]

    failing, why = decide([0.50, 0.51])  # stuck at chance on sst2, where every method reaches ~0.85 in 40 steps
    threshold = SwitchPolicy().threshold
    assert failing is not None and failing.method != "lora" and failing.p_better >= threshold and why["switched"]
    assert "max_steps" not in failing.hyperparameters  # the engine gives it the steps left
    default = get_method(failing.method).make_config({}).learning_rate
    suggested = why["suggested_learning_rate"]
    assert failing.hyperparameters["learning_rate"] == min(suggested, default)  # never above the default
    healthy, why = decide([0.86, 0.89])
    assert healthy is None and why["p_better"] < threshold and not why["switched"]
    late, _ = decide([0.50, 0.50, 0.50, 0.50])  # past the last point a switch is considered at, nothing is switched
    assert late is None


def test_a_switch_trains_the_next_method_at_no_more_than_its_default_learning_rate(controller_parts):
    """After a merge, a learning rate above the next method's default overwrites what the encoder knew (the forgetting
    benchmark): the switch caps it there unless the policy says not to. The meta-learner here is the shipped one with
    its suggested learning rates raised to 4× each method's default, the case the cap is for."""
    from dataclasses import replace

    from metapeft.training import SwitchController, SwitchPolicy, TrainerState

    meta, profile, forecaster = controller_parts

    class Eager:  # the shipped meta-learner, suggesting 4× each method's default learning rate
        def __getattr__(self, name):
            return getattr(meta, name)

        def recommend(self, *args, **kwargs):
            return [
                replace(r, hyperparameters={**r.hyperparameters, "learning_rate": 4 * default(r.method)})
                for r in meta.recommend(*args, **kwargs)
            ]

    def default(method):
        return get_method(method).make_config({}).learning_rate

    def switch(policy):
        state = TrainerState(
            max_steps=80,
            step=40,
            method="lora",
            curve=[{"step": 20, "accuracy": 0.50}, {"step": 40, "accuracy": 0.51}],
        )
        return SwitchController(Eager(), profile, forecaster, policy).should_switch(state)

    capped, uncapped = switch(SwitchPolicy()), switch(SwitchPolicy(cap_learning_rate=False))
    assert capped is not None and capped.method == uncapped.method
    assert capped.hyperparameters["learning_rate"] == default(capped.method)
    assert uncapped.hyperparameters["learning_rate"] == 4 * default(capped.method)


def test_a_search_switches_only_to_the_methods_it_searches(controller_parts, small_task):
    from metapeft._errors import OptionError
    from metapeft.search import SearchConfig, switch_callbacks, tune
    from metapeft.training import SwitchController, SwitchPolicy

    meta, profile, _ = controller_parts
    callbacks = switch_callbacks(meta, profile, SwitchPolicy(threshold=0.7), ["lora", "ia3"])
    (controller,) = callbacks("lora")
    assert (
        isinstance(controller, SwitchController)
        and controller.policy.methods == ["lora", "ia3"]
        and controller.policy.threshold == 0.7
    )
    assert callbacks("prompt_tuning") == []  # virtual tokens cannot be merged: such a trial runs as it is
    assert switch_callbacks(meta, profile, None)("lora") == []
    with pytest.raises(
        OptionError, match="needs two methods or more"
    ) as caught:  # refused before anything is profiled or trained
        tune(small_task, SearchConfig(methods=["prompt_tuning", "prefix_tuning"], switch=SwitchPolicy()), meta=meta)
    assert caught.value.option == "switch"
    with pytest.raises(OptionError, match="SwitchPolicy"):
        SearchConfig(switch=0.8)


def test_the_linear_probe_reads_the_base_encoder_before_training_and_the_trained_one_after(
    quick_task, example_profile
):
    from metapeft.training import LinearProbe

    run = RunConfig(record=False, track=False, save=False, eval_size=16, eval_points=1)
    probes = {}
    for method, hp in (("head_only", {}), ("lora", {"learning_rate": 1e-2}), ("prompt_tuning", {})):
        probes[method] = LinearProbe([quick_task], n_train=64, n_test=64)
        result = train(
            quick_task,
            method,
            {"max_steps": 4, "batch_size": 8, **hp},
            run,
            profile=example_profile,
            callbacks=[probes[method]],
        )
        figures = result.metrics["forgetting"]
        assert set(figures["probe"]) == {quick_task.name} and figures["drop"] == pytest.approx(
            100 * (probes[method].before[quick_task.name] - probes[method].after[quick_task.name]), abs=0.01
        )
    # with its adapter disabled or its virtual tokens bypassed, the encoder a PEFT run starts from is the pretrained
    # one
    assert probes["head_only"].before == probes["lora"].before == probes["prompt_tuning"].before
    assert probes["head_only"].after == probes["head_only"].before  # head-only leaves the encoder as it was


def test_the_forecaster_intervals_cover_held_out_tasks():
    """80% intervals fitted on 30 tasks' curves, checked on the other tasks' runs (the benchmark does it by folds)."""
    from metapeft.experience import task_group, usable
    from metapeft.meta import CurveForecaster
    from metapeft.meta._forecast import curve_rows
    from metapeft.prior import PriorExperience

    records = [r for r in PriorExperience().records() if usable(r)]
    groups = sorted({task_group(r) for r in records})
    held = set(groups[::4])
    forecaster = CurveForecaster().fit([r for r in records if task_group(r) not in held])
    hits = [
        f.low <= final <= f.high
        for r in records
        if task_group(r) in held
        for seen, final in curve_rows(r)
        for f in [forecaster.predict(r.method, r.profile["num_classes"], seen, 80)]
    ]
    assert len(hits) > 300 and 0.7 <= np.mean(hits) <= 0.9


def test_switch_bad_input_is_one_line(tmp_path):
    from conftest import run_cli

    bad = run_cli("train", "example", "--switch", "--method", "prompt_tuning", "--max-steps", "40")
    assert bad.returncode == 2 and "--switch needs a first method whose learning can be merged" in bad.stderr
    bad = run_cli("train", "example", "--switch", "--max-steps", "4")
    assert bad.returncode == 2 and "--switch needs at least 8 steps" in bad.stderr
    bad = run_cli("train", "example", "--switch", "--switch-threshold", "1.5", "--max-steps", "40")
    assert bad.returncode == 2 and "--switch-threshold must be in [0.5, 1)" in bad.stderr
    bad = run_cli("train", "example", "--switch", "--peft-only", "--method", "full_finetuning", "--max-steps", "40")
    assert bad.returncode == 2 and "--peft-only: full_finetuning is not a PEFT method" in bad.stderr
    bad = run_cli("train", "example", "--peft-only", "--method", "lora", "--max-steps", "40")
    assert bad.returncode == 2 and "--peft-only restricts the methods --switch starts with" in bad.stderr
    bad = run_cli("train", "example", "--method", "auto")
    assert bad.returncode == 2 and "--method auto picks the recommended method for --switch" in bad.stderr


@pytest.mark.slow
def test_train_switch_peft_only_starts_and_switches_among_peft_methods_and_reloads(tmp_path):
    """The issue's check with the PEFT-only constraint: `train example --switch --peft-only` (~1.5 min)."""
    import json

    from conftest import run_cli

    from metapeft.tasks import load_task

    done = run_cli(
        "train",
        "example",
        "--switch",
        "--peft-only",
        "--max-steps",
        "40",
        "--json",
        "--no-track",
        "-o",
        str(tmp_path / "out"),
        env={"OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    peft = {"lora", "dora", "adalora", "ia3", "loha", "prompt_tuning", "prefix_tuning", "p_tuning"}
    assert result["method"] in peft and result["switch_decisions"]
    assert all(d["alternative"] in peft for d in result["switch_decisions"] if "alternative" in d)
    assert all(s["to"] in peft for s in result["switches"])
    classifier = load_classifier(result["adapter_path"])
    task = load_task("example")
    predicted = classifier.predict(task.test.texts)
    accuracy = float(np.mean([p == task.label_names[y] for p, y in zip(predicted, task.test.labels)]))
    assert accuracy == pytest.approx(result["metrics"]["accuracy"], abs=0.02)
