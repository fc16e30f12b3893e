"""Real training of every zoo method on real data with the real MiniLM weights."""

import numpy as np
import pytest
import torch
from test_methods import ZOO

from metapeft._backbone import backbone_info
from metapeft.methods import get_method
from metapeft.training import RunConfig, StopWhen, build_classifier, fit, load_classifier, train
from metapeft.training._engine import Batches, _seed_everything
from metapeft.training._model import save_classifier


def _loss(classifier, data: Batches) -> float:
    classifier.eval()
    with torch.inference_mode():
        logits = classifier(**data.collate(list(range(len(data))), torch.device("cpu")))
    return float(torch.nn.functional.cross_entropy(logits, data.labels))


@pytest.mark.parametrize("method", ZOO)
def test_every_method_learns(method, small_task, example_profile):
    """Training loss on the training set falls, and the method's own parameters (not only the head) move."""
    from metapeft._backbone import load_tokenizer

    spec = get_method(method)
    config = spec.make_config({"max_steps": 12, "batch_size": 16})
    backbone = backbone_info(None)
    data = Batches(load_tokenizer(None), small_task.train, 48)
    _seed_everything(0)
    before_model = build_classifier(spec, config, backbone, 2, None)
    before = _loss(before_model, data)
    initial = {n: p.detach().clone() for n, p in before_model.encoder.named_parameters() if p.requires_grad}

    result = fit(
        small_task,
        spec,
        config,
        backbone,
        RunConfig(eval_size=32, eval_points=2),
        max_length=48,
        device=torch.device("cpu"),
    )
    after = _loss(result.model, data)
    assert after < before, f"{method}: loss {before:.4f} -> {after:.4f}"
    trained = {n: p for n, p in result.model.encoder.named_parameters() if p.requires_grad}
    if spec.kind == "head":
        assert not trained
    else:
        assert trained and any(not torch.equal(initial[n], trained[n].detach()) for n in trained if n in initial)
    m = result.metrics
    assert m["steps"] == 12 and 0 <= m["accuracy"] <= 1
    assert 0.1 < m["cpu_share"] < 1.5  # a CPU run says how much of its cores it got (measured: StepClock)
    # tensor memory: fp32 weights, then each trainable parameter's gradient and AdamW's two moments, then activations
    weights_mb, optimiser_mb = 4 * m["total_params"] / 2**20, 12 * m["trainable_params"] / 2**20
    assert m["peak_memory_mb"] >= weights_mb - 0.1 and m["train_memory_mb"] >= optimiser_mb - 0.1
    assert spec.kind == "head" or m["train_memory_mb"] > optimiser_mb + 10  # activations saved through the encoder
    assert m["trainable_params"] < m["total_params"] or spec.kind == "full"
    assert [p["step"] for p in result.curve] == [6, 12]


def test_training_is_reproducible(small_task, example_profile):
    run = RunConfig(seed=3, record=False, track=False, save=False, eval_size=40)
    a = train(small_task, "lora", {"max_steps": 5}, run, profile=example_profile)
    b = train(small_task, "lora", {"max_steps": 5}, run, profile=example_profile)
    assert a.curve == [{**p, "train_time_s": q["train_time_s"]} for p, q in zip(b.curve, a.curve)]


@pytest.mark.parametrize("method", ZOO)
def test_every_method_saved_through_train_reloads_and_reproduces_its_accuracy(
    method, quick_task, example_profile, tmp_path
):
    """The path users take: ``train`` writes the folder, ``load_classifier`` alone rebuilds it (label names and
    all)."""
    run = RunConfig(
        record=False, track=False, output_dir=tmp_path / "run", eval_size=16, eval_points=1, final_eval_size=10_000
    )
    result = train(quick_task, method, {"max_steps": 3}, run, profile=example_profile)
    reloaded = load_classifier(result.adapter_path)
    test = quick_task.test
    predicted = reloaded.predict(test.texts, test.pairs)
    assert set(predicted) <= set(quick_task.label_names)
    accuracy = np.mean([p == quick_task.label_names[y] for p, y in zip(predicted, test.labels)])
    assert result.metrics["eval_examples"] == len(test) and accuracy == pytest.approx(
        result.metrics["accuracy"], abs=1e-5
    )  # rounded to 5 places
    folder = tmp_path / "run"
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))  # safetensors only
    if get_method(method).kind == "peft":  # the adapter is standard peft format
        from peft import PeftModel
        from transformers import AutoModel

        from metapeft._backbone import resolve_model

        peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(resolve_model(None)[1]), folder)
        assert (
            peft_model.peft_config["default"].peft_type.value
            == get_method(method)
            .build(get_method(method).make_config({"max_steps": 3}), backbone_info(None))
            .peft_type.value
        )


def test_an_output_folder_that_cannot_be_used_is_refused_before_training(small_task, example_profile, tmp_path):
    from metapeft._errors import MetapeftError
    from metapeft.experience import ExperienceStore

    store = ExperienceStore(f"sqlite:///{tmp_path / 'x.db'}")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "adapter_model.safetensors").write_text("x")
    for out, why in ((tmp_path / "a_file", "not a folder"), (tmp_path / "used", "not empty")):
        with pytest.raises(MetapeftError, match=why):
            train(
                small_task,
                "head_only",
                {"max_steps": 1},
                RunConfig(track=False, output_dir=out, eval_size=16),
                profile=example_profile,
                store=store,
            )
    assert store.count() == 0  # refused before a run was recorded


def test_time_budget_stops_early(small_task, example_profile):
    run = RunConfig(time_budget=2.0, record=False, track=False, save=False, eval_size=16)
    result = train(small_task, "full_finetuning", {"max_steps": 1000}, run, profile=example_profile)
    assert result.stopped_by == "time_budget" and result.metrics["steps"] < 1000
    assert result.curve[-1]["step"] == result.metrics["steps"]


def test_the_final_evaluation_may_use_more_examples_than_the_curve(small_task, example_profile):
    """The learning curve is measured on eval_size examples, the run's accuracy on final_eval_size."""
    run = RunConfig(record=False, track=False, save=False, eval_size=16, eval_points=2, final_eval_size=64)
    result = train(small_task, "lora", {"max_steps": 4}, run, profile=example_profile)
    assert [p["eval_examples"] for p in result.curve] == [16, 64]
    assert result.metrics["eval_examples"] == 64 and result.metrics["accuracy"] == result.curve[-1]["accuracy"]


def test_the_final_evaluation_keeps_per_example_outcomes_and_scores_the_pool(
    example_task, small_task, example_profile
):
    """Which examples a run got right is kept (for paired comparisons), on the test sample and on an extra pool; the
    evaluation sample follows sample_seed, not the training seed."""
    from metapeft.experience import unpack_outcomes

    seen = set(small_task.train.texts)
    pool = example_task.train.select([i for i, t in enumerate(example_task.train.texts) if t not in seen][:70])
    kwargs = dict(record=False, track=False, save=False, eval_size=16, eval_points=1, final_eval_size=64)
    a = train(
        small_task,
        "lora",
        {"max_steps": 3},
        RunConfig(seed=1, sample_seed=0, **kwargs),
        profile=example_profile,
        pool=pool,
    )
    test, scored = unpack_outcomes(a.metrics["outcomes"]["test"]), unpack_outcomes(a.metrics["outcomes"]["pool"])
    assert len(test) == 64 and test.mean() == pytest.approx(a.metrics["accuracy"], abs=1e-5)
    assert len(scored) == a.metrics["pool_examples"] == 70 and scored.mean() == pytest.approx(
        a.metrics["pool_accuracy"], abs=1e-5
    )
    b = train(
        small_task, "head_only", {"max_steps": 1}, RunConfig(seed=2, sample_seed=0, **kwargs), profile=example_profile
    )
    c = train(
        small_task, "head_only", {"max_steps": 1}, RunConfig(seed=2, sample_seed=5, **kwargs), profile=example_profile
    )
    assert "pool" not in b.metrics["outcomes"]
    assert (
        b.metrics["outcomes"]["test_rows"] == a.metrics["outcomes"]["test_rows"] != c.metrics["outcomes"]["test_rows"]
    )


def test_eval_uses_a_stratified_sample_not_the_head(example_task, example_profile):
    """Evaluation draws across the whole held-out split: not simply its first rows."""
    from metapeft.tasks import stratified_indices

    idx = np.sort(stratified_indices(example_task.test.labels, 50, 0))
    assert idx.max() > 100
    assert abs(np.mean([example_task.test.labels[i] for i in idx]) - np.mean(example_task.test.labels)) < 0.05


def test_adalora_stopped_mid_budget_saves_what_it_evaluated(small_task, tmp_path):
    """Between rank re-allocations pruned ranks regrow; an early stop must apply the pattern before evaluating."""
    spec = get_method("adalora")
    config = spec.make_config({"max_steps": 400, "batch_size": 8, "tinit_ratio": 0.0, "tfinal_ratio": 0.05})
    # deltaT = (400 - 0 - 20) // 10 = 38: ranks are re-allocated at step 38; stop at 45, after regrowth began.
    result = fit(
        small_task,
        spec,
        config,
        backbone_info(None),
        RunConfig(eval_size=16),
        max_length=32,
        device=torch.device("cpu"),
        callbacks=[StopWhen(lambda step, curve: step == 45)],
    )
    assert result.stopped_by == "should_stop" and result.metrics["steps"] == 45 and result.curve[-1]["step"] == 45
    assert result.model.encoder.peft_config["default"].rank_pattern
    meta = {"method": "adalora", "base_model": None, "label_names": small_task.label_names, "max_length": 32}
    save_classifier(result.model, tmp_path, kind="peft", meta=meta)
    texts = small_task.test.texts[:24]
    reloaded = load_classifier(tmp_path)
    from metapeft.training._model import SavedClassifier

    torch.testing.assert_close(
        reloaded.predict_logits(texts),
        SavedClassifier(result.model, reloaded.tokenizer, small_task.label_names, 32, meta).predict_logits(texts),
    )


def test_max_length_beyond_the_model_is_refused(small_task, example_profile):
    from metapeft._errors import MethodError

    with pytest.raises(MethodError, match="exceeds all-MiniLM-L6-v2's 512 positions"):
        train(small_task, "lora", {"max_length": 1000}, RunConfig(record=False, track=False), profile=example_profile)


def test_adalora_with_equal_ranks_trains(small_task):
    """init_r = target_r is a point of the search space (the ranges meet at 8): nothing to re-allocate, and peft
    would fail asking torch.kthvalue for the 0th score."""
    spec = get_method("adalora")
    config = spec.make_config({"max_steps": 12, "init_r": 8, "target_r": 8, "tinit_ratio": 0.0, "tfinal_ratio": 0.2})
    result = fit(
        small_task,
        spec,
        config,
        backbone_info(None),
        RunConfig(eval_size=16),
        max_length=32,
        device=torch.device("cpu"),
    )
    assert result.metrics["steps"] == 12 and result.stopped_by == "max_steps"


def test_a_run_config_checks_itself_and_names_the_field():
    from metapeft._errors import OptionError

    for kwargs, name in (
        ({"eval_size": -1}, "eval_size"),
        ({"time_budget": 0}, "time_budget"),
        ({"eval_points": 0}, "eval_points"),
        ({"seed": 1.5}, "seed"),
        ({"final_eval_size": -2}, "final_eval_size"),
        ({"tags": ["x"]}, "tags"),
    ):
        with pytest.raises(OptionError) as raised:
            RunConfig(**kwargs)
        assert raised.value.option == name and str(raised.value).startswith(f"{name} ")
    assert set(RunConfig.help()) == set(RunConfig().as_dict()) and all(RunConfig.help().values())


def test_callbacks_follow_the_lifecycle_and_can_end_a_run_as_a_result(small_task):
    from metapeft.training import Stop, TrainerCallback

    class Spy(TrainerCallback):
        def __init__(self):
            self.seen = []

        def on_train_begin(self, state):
            self.seen.append("begin")

        def on_optimizer_step(self, state):  # gradients still there (memory counting relies on it)
            self.seen.append(("step", state.step, all(p.grad is not None for p in state.model.head.parameters())))

        def should_stop(self, state):
            return Stop("enough", final=True) if state.step == 3 else None

        def on_evaluate(self, state):
            self.seen.append(("evaluate", state.curve[-1]["step"]))

        def on_step_end(self, state):
            self.seen.append(("end", state.step))

        def on_train_end(self, state):
            self.seen.append("finish")

    spy, spec = Spy(), get_method("lora")
    result = fit(
        small_task,
        spec,
        spec.make_config({"max_steps": 10}),
        backbone_info(None),
        RunConfig(eval_size=16, eval_points=2, final_eval_size=40),
        max_length=32,
        device=torch.device("cpu"),
        callbacks=[spy],
    )
    assert result.stopped_by == "enough" and result.metrics["steps"] == 3
    assert (
        "test" in result.metrics["outcomes"] and result.metrics["eval_examples"] == 40
    )  # a final stop is scored as a result
    assert spy.seen == [
        "begin",
        ("step", 1, True),
        ("end", 1),
        ("step", 2, True),
        ("end", 2),
        ("step", 3, True),
        ("evaluate", 3),
        ("end", 3),
        "finish",
    ]


def test_a_suspended_step_is_counted_at_the_median_not_the_wall_clock():
    """A worker paused with SIGSTOP resumes mid-step: the pause is not the method's training time (29 runs of the
    prior had it counted); a slow step under contention (a few times the median) still counts in full."""
    from metapeft.training import StepClock

    clock = StepClock()
    counted = [clock.add(s) for s in [2.0, 2.1, 1.9, 2.0, 2.2, 6.0, 2.0, 900.0, 2.1]]
    assert counted[5] == 6.0  # 3x the median: contention, counted
    assert counted[7] == 2.0 and clock.suspended_s == 898.0  # the median of the steps before it
    early = StepClock()
    assert early.add(40.0) == 40.0  # the first steps are not judged (allocation, caches)


def test_the_clock_measures_the_share_of_its_cores_a_run_got():
    """A step that computes gets CPU time for its wall time; one that waits (as a process does while others hold the
    cores) gets none: the share tells a run timed alone from one timed under contention, whose time the meta-learner
    must not learn as the method's cost."""
    import time

    from metapeft.training import StepClock

    def step(work):
        started, cpu = time.perf_counter(), time.process_time()
        work()
        return time.perf_counter() - started, time.process_time() - cpu

    def busy():
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            pass

    computing, waiting = StepClock(), StepClock()
    for _ in range(3):
        computing.add(*step(busy))
        waiting.add(*step(lambda: time.sleep(0.2)))
    assert computing.cpu_share(1) > 0.3 and waiting.cpu_share(1) < 0.1
    assert StepClock().cpu_share(1) is None  # nothing measured yet


def test_time_is_learned_only_from_runs_that_had_their_cores_to_themselves():
    from metapeft.experience import Experience, measured_time
    from metapeft.meta._features import targets

    def run(**extra):
        tags = extra.pop("tags", {})
        metrics = {"accuracy": 0.8, "train_time_s": 100.0, "steps": 80, **extra}
        return Experience("t", "lora", "m", metrics=metrics, tags=tags)

    assert measured_time(run()) == 100.0  # before the engine measured the share: taken as it is
    assert measured_time(run(cpu_share=0.97)) == 100.0
    assert measured_time(run(cpu_share=0.6)) is None
    assert measured_time(run(tags={"timing": "contended"})) is None
    assert np.isnan(targets(run(cpu_share=0.6))[1]) and targets(run(cpu_share=0.6))[0] == pytest.approx(0.8)
