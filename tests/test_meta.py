"""The meta-learners on real experience: the shipped prior (real runs of the reference suite), never invented
metrics."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli


@pytest.fixture(scope="module")
def prior_records():
    from metapeft.experience import usable
    from metapeft.prior import PriorExperience

    records = [r for r in PriorExperience().records() if usable(r)]
    if len({r.task_name for r in records}) < 5:
        pytest.skip("the shipped prior holds too few tasks")
    return records


@pytest.fixture(scope="module")
def held_out_groups(prior_records):
    """Eight tasks (every fifth) that the shared surrogate is not fitted on."""
    from metapeft.experience import task_group

    return set(sorted({task_group(r) for r in prior_records})[::5])


@pytest.fixture(scope="module")
def held_out(prior_records, held_out_groups):
    """The runs of the tasks kept out of fitting (the rest to fit on), and the runs of one instance of them."""
    from metapeft.experience import task_group

    task = sorted({r.task_name for r in prior_records})[0]
    assert task.split("@")[0] in held_out_groups
    return [r for r in prior_records if task_group(r) not in held_out_groups], [
        r for r in prior_records if r.task_name == task
    ]


@pytest.fixture(scope="module")
def surrogate(held_out):
    from metapeft.meta import Surrogate

    return Surrogate().fit(held_out[0])


def test_embedding_learns_the_performance_metric(prior_records):
    from scipy.stats import spearmanr

    from metapeft.meta import TaskEmbedder
    from metapeft.meta._embedding import cells_of, performance_distances

    cells = cells_of(prior_records)
    untrained = TaskEmbedder(epochs=1).fit(prior_records)
    trained = TaskEmbedder().fit(prior_records)
    target, valid = performance_distances(cells, trained.methods)

    def agreement(embedder):
        z = embedder.predict([c.profile for c in cells])
        return spearmanr(np.linalg.norm(z[:, None] - z[None], axis=-1)[valid], target[valid]).statistic

    assert agreement(trained) > 0.8 > agreement(untrained)
    # continual update: more training on (the same or grown) experience starts from the learned network
    before = trained.predict([cells[0].profile])
    trained.partial_fit(prior_records, epochs=5)
    assert np.abs(trained.predict([cells[0].profile]) - before).max() < 0.5


def test_surrogate_predicts_every_method_with_intervals_and_probabilities(surrogate, held_out):
    from metapeft.meta import Candidate

    profile = held_out[1][0].profile
    candidates = [Candidate(m) for m in surrogate.encoder.methods]
    pred = surrogate.predict(profile, candidates)
    assert pred.mean.shape == (len(candidates), 3)
    assert np.all(pred.low <= pred.mean) and np.all(pred.mean <= pred.high)
    assert np.all((pred.mean[:, 0] >= 0) & (pred.mean[:, 0] <= 1)) and np.all(pred.mean[:, 1:] > 0)
    p = pred.best_probability()
    assert p.sum() == pytest.approx(1.0) and np.all(p >= 0)
    assert surrogate.extra_var.min() > 0 and surrogate.task_var.min() > 0 and surrogate.noise_var.min() > 0


def test_missing_settings_are_the_defaults_and_far_tasks_do_not_extrapolate(surrogate, held_out):
    """A candidate without settings is its method's defaults (as Candidate promises), and a task far larger than any
    in the experience is predicted as the nearest seen, not by an unbounded extrapolation of the network."""
    from metapeft.meta import Candidate
    from metapeft.methods import get_method

    profile = held_out[1][0].profile
    bare = surrogate.predict(profile, [Candidate("lora")])
    explicit = surrogate.predict(profile, [Candidate("lora", get_method("lora").defaults().as_dict())])
    assert bare.mean == pytest.approx(explicit.mean)
    huge = [surrogate.predict({**profile, "dataset_size": n}, [Candidate("lora")]) for n in (10**6, 10**8)]
    assert huge[0].mean == pytest.approx(huge[1].mean)
    # unclamped, the members ran off to 0 and 1 and the 90% interval covered everything
    assert huge[0].high[0, 0] - huge[0].low[0, 0] < 0.9


def test_accuracy_is_learned_at_each_step_budget_and_time_scales_with_it(surrogate, held_out):
    """The prior has two budgets (80 steps; 320 on the learning-curve tasks at 1,024 examples): accuracy is learned at
    both and predicted beyond them as at the nearest, and time is steps × a learned cost per step (as a total it
    stayed at one budget's time for any budget)."""
    from metapeft.meta import Candidate

    profile = held_out[1][0].profile
    assert profile["dataset_size"] == 1024 and {r.hyperparameters["max_steps"] for r in held_out[1]} == {80, 320}
    candidates = [Candidate(m, {"max_steps": k}) for m in ("lora", "prompt_tuning") for k in (80, 320, 640)]
    pred = surrogate.predict(profile, [*candidates, Candidate("lora")])
    for i in (0, 3):  # each method: 80, 320 and 640 steps
        # the held-out task gains 0.3-1.6 points from 80 to 320 steps at defaults; the suite's tasks 2.4-7.8
        assert pred.mean[i + 1, 0] > pred.mean[i, 0] + 0.01
        assert pred.mean[i + 2, 0] == pytest.approx(pred.mean[i + 1, 0])  # beyond the experience: as at 320
        assert pred.mean[i + 2, 1] / pred.mean[i, 1] == pytest.approx(8.0, rel=0.02)
        assert pred.mean[i + 2, 2] == pytest.approx(pred.mean[i, 2])  # a step's memory does not depend on the steps
    # the default budget: about 5 epochs (320 steps at 1,024 examples, batch 16), as training resolves it
    assert pred.mean[6] == pytest.approx(pred.mean[1])
    actual = [
        r.metrics["train_time_s"] for r in held_out[1] if r.method == "lora" and r.hyperparameters["max_steps"] == 80
    ]
    assert min(actual) / 3 < pred.mean[0, 1] < 3 * max(actual)


def test_settings_that_do_not_change_a_steps_cost_do_not_change_predicted_time_or_memory(surrogate, held_out):
    """A learning rate or warm-up changes what training learns, not what a step costs: before time and memory were
    read without them, head-only runs were predicted at 73-83 MB by learning rate (all measure 87 MB)."""
    from metapeft.meta import Candidate

    profile = held_out[1][0].profile
    pred = surrogate.predict(
        profile,
        [
            Candidate("head_only", {"head_learning_rate": 0.003, "warmup_ratio": 0.0}),
            Candidate("head_only", {"head_learning_rate": 0.08, "warmup_ratio": 0.2}),
            Candidate("lora", {"learning_rate": 1e-4, "lora_alpha": 8}),
            Candidate("lora", {"learning_rate": 1e-2, "lora_alpha": 64}),
            Candidate("lora", {"learning_rate": 1e-4, "r": 64, "target_modules": "all-linear"}),
        ],
    )
    assert pred.mean[0, 1:] == pytest.approx(pred.mean[1, 1:]) and pred.mean[2, 1:] == pytest.approx(pred.mean[3, 1:])
    # what a run achieves still reads them: the collapse risk that ranks a method's settings, and the accuracy where
    # the fit keeps the network's task-specific correction (held-out selection may shrink it to 0: _selection_shrink)
    assert pred.fail[0] != pytest.approx(pred.fail[1], abs=1e-3)
    assert surrogate.shrink[0] == 0 or pred.mean[0, 0] != pytest.approx(pred.mean[1, 0], abs=1e-4)
    assert pred.mean[4, 2] > pred.mean[2, 2]  # a larger adapter on more modules does cost more memory


def test_memory_is_learned_only_when_the_run_says_how_it_was_measured(prior_records):
    """CPU runs before 2026-11-21 recorded process RSS (~2.3 GB for every method), not comparable with tensor
    memory."""
    import dataclasses

    from metapeft.meta._features import targets

    r = prior_records[0]
    measured = dataclasses.replace(r, metrics={**r.metrics, "peak_memory_mb": 300.0, "memory_measure": "tensors"})
    rss = dataclasses.replace(r, metrics={k: v for k, v in measured.metrics.items() if k != "memory_measure"})
    assert targets(measured)[2] == pytest.approx(np.log(300.0)) and np.isnan(targets(rss)[2])


def test_the_prior_measures_tensor_memory_that_tells_the_methods_apart(prior_records):
    memory = {
        m: np.median([r.metrics["peak_memory_mb"] for r in prior_records if r.method == m])
        for m in {r.method for r in prior_records}
    }
    assert all(r.metrics.get("memory_measure") == "tensors" for r in prior_records)
    # head-only keeps the fp32 weights (22.7 M parameters) only; full fine-tuning adds gradients and AdamW's moments
    assert memory["head_only"] == pytest.approx(4 * 22.7e6 / 2**20, rel=0.01)
    assert (
        memory["head_only"] < memory["lora"] < memory["full_finetuning"]
        and memory["full_finetuning"] > memory["head_only"] + 3 * 86
    )


def test_runs_outside_the_fit_call_for_a_full_refit(surrogate, held_out):
    """partial_fit keeps the fit's standardisation: runs under another step budget are not 'covered' and make
    MetaPEFT refit from scratch instead (a partial fit mistook such runs for a harder task)."""
    import dataclasses

    seen = held_out[0][:20]
    assert surrogate.covers(seen)
    short = dataclasses.replace(seen[0], hyperparameters={**seen[0].hyperparameters, "max_steps": 3})
    assert not surrogate.covers([short])


def test_similar_tasks_leave_out_the_task_itself(surrogate, prior_records):
    from metapeft.meta import MetaPEFT

    meta = MetaPEFT(surrogate=surrogate, experiences=prior_records, include_own=False)
    record = next(r for r in prior_records if r.task_name == "trec6@64")
    names = [s.task for s in meta.similar(record.profile)]
    assert len(names) == 5 and "trec6@64" not in names


def test_check_shows_the_past_runs_nearest_the_users_setting(surrogate, prior_records):
    """The prior's LoRA run at the highest learning rate among those that failed: checked on its own data at its
    learning rate and steps, that run leads the evidence (the user's chosen settings match it exactly), the rest
    come from the instance's own runs and then from other tasks that ``similar`` lists, each judged as the
    collapse-risk label judges it."""
    from metapeft.meta import MetaPEFT
    from metapeft.meta._risk import failures

    meta = MetaPEFT(surrogate=surrogate, experiences=prior_records, include_own=False)
    failed = failures(prior_records)
    run = max(
        (r for r, f in zip(prior_records, failed) if f and r.method == "lora"),
        key=lambda r: r.hyperparameters["learning_rate"],
    )
    chosen = {k: run.hyperparameters[k] for k in ("learning_rate", "max_steps")}
    evidence = meta.check(run.profile, "lora", chosen).evidence
    first = evidence[0]
    assert first["task"] == run.task_name and first["task_distance"] is None and first["failed"]
    assert first["accuracy"] == round(run.metrics["accuracy"], 4) and not set(chosen) & set(first["differs"])
    others = [e["task"] for e in evidence if e["task_distance"] is not None]
    similar = [s.task for s in meta.similar(run.profile, 3)]
    assert (
        others and set(others) <= set(similar) and run.task_name.split("@")[0] not in {t.split("@")[0] for t in others}
    )
    label = {
        (r.task_name, round(r.metrics["accuracy"], 4)): bool(f)
        for r, f in zip(prior_records, failed)
        if r.method == "lora"
    }
    assert all(label[(e["task"], e["accuracy"])] == e["failed"] for e in evidence)


def test_settings_are_suggested_only_where_the_experience_varied_them_at_a_like_budget(surrogate, prior_records):
    """The prior's 320-step runs are all at the defaults: at that budget every method's suggestion is its defaults,
    and the reasoning says why; at 80 steps, where settings were varied, tried settings and a random design are
    scored too."""
    from metapeft.experience import examples_seen
    from metapeft.meta import MetaPEFT
    from metapeft.meta._features import at_defaults

    long = [r for r in prior_records if examples_seen(r) == 320 * 16]
    assert long and all(at_defaults(r.method, r.hyperparameters) for r in long)
    meta = MetaPEFT(surrogate=surrogate, experiences=prior_records, include_own=False)
    assert all(at_defaults("lora", c) for c in meta.candidates("lora", seen=320 * 16))
    assert sum(not at_defaults("lora", c) for c in meta.candidates("lora", seen=80 * 16)) >= 10
    profile = next(r for r in prior_records if r.task_name.endswith("@1024")).profile
    ranked = meta.recommend(profile, methods=["lora", "dora", "ia3"], budget={"max_steps": 320})
    assert all(at_defaults(r.method, r.hyperparameters) for r in ranked)
    assert all("not varied its settings at a step budget like this one" in r.reasoning for r in ranked)


def test_observed_runs_condition_the_prediction(surrogate, held_out):
    from metapeft.meta import Candidate

    runs = held_out[1]
    cands = [Candidate(r.method, r.hyperparameters) for r in runs]
    truth = np.array([r.metrics["accuracy"] for r in runs])
    cold = surrogate.predict(runs[0].profile, cands)
    warm = surrogate.predict(runs[0].profile, cands, observed=runs[:3])
    assert not np.allclose(cold.mean, warm.mean)
    # the task's level moves towards what was observed (the conditioning is a shrunk estimate of the offset, so it
    # moves part of the way: strictly closer, never past)
    seen = slice(0, 3)
    before, after = cold.mean[seen, 0].mean() - truth[seen].mean(), warm.mean[seen, 0].mean() - truth[seen].mean()
    assert abs(after) < abs(before) and np.sign(after) in (0, np.sign(before))
    # runs of the task at another step budget say nothing of its accuracy at this one (they do of its time per step)
    other = [
        dataclasses.replace(r, hyperparameters={**r.hyperparameters, "max_steps": 16 * r.hyperparameters["max_steps"]})
        for r in runs[:3]
    ]
    assert np.allclose(surrogate.predict(runs[0].profile, cands, observed=other).mean[:, 0], cold.mean[:, 0])


def test_the_interval_after_runs_is_the_calibrated_one(surrogate, held_out):
    """After runs of the task, predict adds the conjugate update's variance times its size group's calibrated factor,
    capped at the zero-shot variance; a run at 1.5× the budget conditions accuracy, one at 16× does not."""
    import copy

    from metapeft.meta import Candidate
    from metapeft.meta._surrogate import _log_size

    steps = held_out[1][0].hyperparameters["max_steps"]
    runs = [r for r in held_out[1] if r.hyperparameters["max_steps"] == steps]
    cands, profile = [Candidate(r.method, r.hyperparameters) for r in runs], runs[0].profile
    size = _log_size(profile)
    zero_shot = float(surrogate._extra(np.array([size]))[0, 0])
    cold = surrogate.predict(profile, cands)
    members = cold.accuracy_sd**2 - zero_shot  # the ensemble's own spread: conditioning shifts it, never widens it
    t, n = surrogate.task_var[0], surrogate.noise_var[0]
    factor = np.interp(size, surrogate.extra_size, surrogate.cond_by_size)
    warm = surrogate.predict(profile, cands, observed=runs[:2])
    assert len(surrogate.cond_by_size) and np.allclose(
        warm.accuracy_sd**2 - members, min(factor * (t * n / (2 * t + n) + n), zero_shot), rtol=1e-3, atol=1e-7
    )
    capped = copy.copy(surrogate)
    capped.cond_by_size = np.full_like(surrogate.cond_by_size, 1e3)
    assert np.allclose(capped.predict(profile, cands, observed=runs[:2]).accuracy_sd, cold.accuracy_sd)

    def at(factor: float) -> list:
        return [
            dataclasses.replace(r, hyperparameters={**r.hyperparameters, "max_steps": int(factor * steps)})
            for r in runs[:2]
        ]

    assert not np.allclose(surrogate.predict(profile, cands, observed=at(1.5)).mean[:, 0], cold.mean[:, 0])
    assert np.allclose(surrogate.predict(profile, cands, observed=at(16)).mean[:, 0], cold.mean[:, 0])


def test_recommend_conditions_on_the_tasks_runs_at_its_step_budget_only(prior_records):
    """Your runs of a task correct its predicted level only at a like step budget: sst2's 80-step runs leave its
    320-step recommendation as it was (and the reasoning says so), its 320-step runs move it."""
    from metapeft.meta import MetaPEFT

    meta = MetaPEFT(include_own=False)  # the packaged model: no fit
    runs = [r for r in prior_records if r.task_name == "sst2@1024"]
    short = [r for r in runs if r.hyperparameters["max_steps"] == 80][:3]
    long = [r for r in runs if r.hyperparameters["max_steps"] == 320][:3]
    profile, budget = long[0].profile, {"max_steps": 320}

    def predicted(observed):
        ranking = meta.recommend(profile, budget=budget, observed=observed, methods=["lora", "ia3"])
        return {r.method: r.expected_performance["accuracy"]["mean"] for r in ranking}, ranking[0].reasoning

    cold, _ = predicted([])
    after_short, why = predicted(short)
    assert (
        after_short == pytest.approx(cold)
        and "3 run(s) of this task at other step budgets left out of its accuracy" in why
    )
    after_long, why = predicted(long)
    assert after_long != pytest.approx(cold) and "Conditioned on 3 run(s) of this task" in why
    # check reads the same runs as recommend (by default, the experience's runs of the task: sst2@1024's own)
    rated = meta.check(profile, "lora", budget).expected_accuracy["mean"]
    ranked = meta.recommend(profile, budget=budget, methods=["lora"])[0]
    assert "Conditioned on" in ranked.reasoning and rated == pytest.approx(
        ranked.expected_performance["accuracy"]["mean"], abs=1e-3
    )


def test_a_machines_runs_of_other_tasks_scale_its_train_times(surrogate, held_out):
    """A user whose machine runs 20x faster than the experience's: its runs of three other tasks (the experience's,
    timed as that machine would run them) bring a new task's predicted train times to about 1/20 — the interval
    around them, in log terms, widened by how unsure that factor is — and leave accuracy and memory as they were.
    The task's own runs made on the experience's machines read the task there (the factor does the rest), those made
    on this machine the task on it, those made on a third machine nothing of its time."""
    import os
    import platform
    import uuid
    from datetime import timedelta

    from metapeft._environment import machine_key, processor
    from metapeft.experience import task_group
    from metapeft.meta import MetaPEFT

    train, runs = held_out
    others = sorted({task_group(r) for r in train})[:3]
    fast = [
        dataclasses.replace(
            r,
            id=uuid.uuid4().hex,
            environment={"device": "cuda:0", "accelerator": "Fast GPU", "backend": "torch"},
            metrics={**r.metrics, "train_time_s": r.metrics["train_time_s"] / 20},
        )
        for r in train
        if task_group(r) in others
    ]
    here = machine_key(fast[0].environment)
    assert here == "torch|cuda|Fast GPU" and machine_key(train[0].environment) != here
    meta = MetaPEFT(surrogate=surrogate, experiences=train + fast, include_own=False)
    factor, tasks = meta.machine_speed(here)
    assert tasks == 3 and 0.035 < factor < 0.08, factor
    assert meta.machine_speed("torch|cuda|another GPU") == (1.0, 0)

    def predicted(observed, machine):
        ranked = meta.recommend(runs[0].profile, observed=observed, methods=["lora", "ia3"], machine=machine)
        return {r.method: r.expected_performance for r in sorted(ranked, key=lambda r: r.method)}

    plain, scaled = predicted([], None), predicted([], here)
    for method, e in plain.items():
        s = scaled[method]
        assert s["train_time_s"]["mean"] == pytest.approx(factor * e["train_time_s"]["mean"], rel=1e-2)
        assert (
            s["train_time_s"]["high"] / s["train_time_s"]["low"] > e["train_time_s"]["high"] / e["train_time_s"]["low"]
        )
        assert s["accuracy"] == pytest.approx(e["accuracy"]) and s["peak_memory_mb"] == pytest.approx(
            e["peak_memory_mb"]
        )
    cold = scaled
    own = runs[:2]  # made on the experience's machines: they say how the task runs there, the factor does the rest
    plain, scaled = predicted(own, None), predicted(own, here)
    for method, e in plain.items():
        assert scaled[method]["train_time_s"]["mean"] == pytest.approx(factor * e["train_time_s"]["mean"], rel=1e-2)
    # the same runs made on this machine, 20x faster, read the task on it; made on yet another, nothing of its time
    for env, speed in ((fast[0].environment, 20), ({"device": "cuda", "accelerator": "Other GPU"}, 7)):
        moved = [
            dataclasses.replace(
                r,
                source="metapeft",  # a user's run
                environment=env,
                metrics={**r.metrics, "train_time_s": r.metrics["train_time_s"] / speed},
            )
            for r in own
        ]
        after = predicted(moved, here)
        for method, e in plain.items():
            ratio = after[method]["train_time_s"]["mean"] / e["train_time_s"]["mean"]
            if speed == 20:
                assert 0.8 * factor < ratio < 1.25 * factor, (ratio, factor)
            else:
                assert after[method]["train_time_s"] == pytest.approx(cold[method]["train_time_s"], rel=1e-2)
    # the machine's first runs are of this task: they give its offset (the prior's runs of the task say τ alone)
    made_here = [
        dataclasses.replace(
            r,
            source="metapeft",
            environment=fast[0].environment,
            metrics={**r.metrics, "train_time_s": r.metrics["train_time_s"] / 20},
        )
        for r in own
    ]
    alone = MetaPEFT(surrogate=surrogate, experiences=train + made_here, include_own=False)
    with_runs = alone.recommend(runs[0].profile, observed=runs[2:6] + made_here, methods=["lora", "ia3"], machine=here)
    without = alone.recommend(runs[0].profile, observed=runs[2:6], methods=["lora", "ia3"])
    for a, b in zip(sorted(with_runs, key=lambda r: r.method), sorted(without, key=lambda r: r.method)):
        ratio = a.expected_performance["train_time_s"]["mean"] / b.expected_performance["train_time_s"]["mean"]
        assert 1 / 60 < ratio < 1 / 7, ratio  # blended with the prior's runs as one offset, they gave 0.29
    # `recommend` on the command line asks for this computer's machine: that of its newest run made here
    assert meta.local_machine() is None  # none of these runs was made on this computer
    local = {"machine": platform.machine(), "processor": processor(), "cpu_count": os.cpu_count()}
    newest = max(r.created_at for r in train)
    mine = [
        dataclasses.replace(r, id=uuid.uuid4().hex, created_at=newest + timedelta(seconds=k), environment=env)
        for k, (r, env) in enumerate(
            [
                (train[0], {**local, "device": "cuda", "accelerator": "Old GPU"}),
                (train[1], {**local, "device": "cpu", "torch_threads": 3}),
                (train[2], {**local, "device": "cpu", "torch_threads": 3, "backend": "mlx"}),
            ]
        )
    ]
    meta = MetaPEFT(surrogate=surrogate, experiences=train + fast + mine, include_own=False)
    assert meta.local_machine() == f"torch|cpu|{processor()}|3 threads"
    assert meta.local_machine("mlx") == f"mlx|cpu|{processor()}|3 threads"


def test_the_network_learns_time_on_the_experiences_reference_machines_only(prior_records):
    """A network fitted on a fast machine's runs too would absorb its speed into their tasks' features, and the shift
    read off that machine's residuals would come out small: the fit sees the times of the shipped prior's runs when
    it is in the experience, else of the machine with the most runs; the others' accuracies and memory stay."""
    from metapeft.meta._surrogate import _timed_on_reference

    gpu = {"device": "cuda", "accelerator": "Fast GPU", "backend": "torch"}
    own = [dataclasses.replace(r, source="metapeft", environment=gpu) for r in prior_records[:3]]
    kept = _timed_on_reference(prior_records[3:6] + own)
    assert [("train_time_s" in r.metrics) for r in kept] == [True] * 3 + [False] * 3
    assert [r.metrics["accuracy"] for r in kept] == [r.metrics["accuracy"] for r in prior_records[3:6] + own]
    assert all("train_time_s" in r.metrics for r in own)  # copies: the records themselves keep their times
    cpu = [dataclasses.replace(r, source="metapeft") for r in prior_records[3:8]]  # no machine recorded: one key
    kept = _timed_on_reference(cpu + own)
    assert [("train_time_s" in r.metrics) for r in kept] == [True] * 5 + [False] * 3
    # a calibration fold's fit sees a subset with the times already left out: it keeps the same reference
    again = _timed_on_reference(kept[3:])
    assert [("train_time_s" in r.metrics) for r in again] == [True] * 2 + [False] * 3


@pytest.mark.parametrize("true_scale", [1.0, 3.0])
def test_best_method_probabilities_are_calibrated_to_the_held_out_noise(true_scale):
    """The draws behind 'probability of being best' take the run noise the held-out tasks show: when runs
    scatter three times wider than the robust estimate says, the calibration finds a factor near 3."""
    from metapeft.meta._surrogate import _pick_scale

    rng = np.random.default_rng(0)
    cells = np.repeat(np.arange(150), 8)
    truth = rng.normal(0.7, 0.05, cells.size)
    members = truth[None] + rng.normal(0, 0.001, (5, cells.size))
    observed = truth + rng.normal(0, 0.01 * true_scale, cells.size)
    scale = _pick_scale(members, observed, cells, noise_sd=0.01, seed=0)
    assert true_scale / 1.6 <= scale <= true_scale * 1.6


def test_best_method_probabilities_lean_on_base_rates_only_when_the_draws_are_uninformative():
    """'Probability of being best' blends the surrogate's draws with how often each method has been best on past
    tasks, by how well each predicted held-out winners: draws unrelated to the outcome give way to the base rate
    (one method best on 60% of tasks gets ~0.6), draws that predict the winner keep their full weight."""
    from metapeft.meta._surrogate import _best_calibration, _calibrated, base_rates

    rng = np.random.default_rng(0)
    names = ["a", "b", "c", "d"]
    cells = np.repeat(np.arange(80), 4)
    methods = np.tile(names, 80)
    tasks = np.array([f"t{c}" for c in cells])
    observed = rng.normal(0.7, 0.02, cells.size)
    observed[methods == "a"] += np.where(rng.random(80) < 0.6, 0.1, -0.1)  # a is best on ~60% of the tasks
    noise = rng.normal(0, 0.05, (5, cells.size))

    sizes = np.full(cells.size, 8.0)
    (power, weight), won, ran, size = _best_calibration(
        0.7 + noise, observed, cells, methods, tasks, sizes, names, noise_sd=0.01, extra_var=1e-4, seed=0
    )
    assert power <= 0.3 and weight >= 0.7
    rate = base_rates(won, ran, size, 8.0)
    assert 0.5 <= rate[0] <= 0.7
    p = _calibrated(np.array([0.1, 0.5, 0.2, 0.2]), weight * np.log(rate), power)
    assert p.sum() == pytest.approx(1.0) and 0.45 <= p[0] <= 0.75

    (power, weight), *_ = _best_calibration(
        observed[None] + 0.1 * noise[:1] / 5,
        observed,
        cells,
        methods,
        tasks,
        sizes,
        names,
        noise_sd=0.001,
        extra_var=1e-6,
        seed=0,
    )
    assert power >= 1.0


def test_base_rates_follow_the_training_set_size():
    """Full fine-tuning wins more often with 1,024 examples than with 64: a new task's base rates come mostly from
    past instances of its own size."""
    from metapeft.meta._surrogate import base_rates

    won = np.array([[1.0, 0.0]] * 20 + [[0.0, 1.0]] * 20)  # method 0 best on the large instances, 1 on the small
    ran = np.ones_like(won)
    sizes = np.array([10.0] * 20 + [6.0] * 20)  # log2: 1,024 and 64 examples
    large, small, between = (
        base_rates(won, ran, sizes, 10.0),
        base_rates(won, ran, sizes, 6.0),
        base_rates(won, ran, sizes, 8.0),
    )
    assert large[0] > 0.75 > 0.25 > large[1] and small[1] > 0.75 > 0.25 > small[0]
    assert between[0] == pytest.approx(between[1])


def test_intervals_are_calibrated_within_each_training_set_size():
    """Errors shrink as data grows: the interval is calibrated per size group, so small tasks get wider intervals
    and large ones narrower, each covering 90% of its own held-out runs; so are the intervals after runs of the
    task; a size with too few tasks joins its neighbour."""
    from metapeft.meta._surrogate import (
        Z90,
        _cell_index,
        _conditioned_scale,
        _coverage_variance,
        _size_groups,
        _variance_parts,
    )

    rng = np.random.default_rng(0)
    sizes = np.repeat([6.0, 8.0, 10.0], 400)  # log2: 64, 256 and 1,024 examples
    tasks = np.array([f"t{i % 20}" for i in range(len(sizes))])
    cells = np.char.add(tasks, sizes.astype(str))
    scale = np.where(sizes == 6.0, 0.2, 0.08)
    offset = {c: rng.normal(0, 1) for c in set(cells)}
    resid = (np.array([offset[c] for c in cells]) + rng.normal(0, 1, len(sizes))) * scale
    ens_var = np.full(len(sizes), 1e-4)
    groups = _size_groups(sizes, tasks)
    assert [float(sizes[g][0]) for g in groups] == [6.0, 8.0, 10.0]
    variances = [_coverage_variance(resid[g], ens_var[g]) for g in groups]
    assert variances[0] > 4 * variances[2]
    for g, v in zip(groups, variances):
        inside = np.abs(resid[g]) <= Z90 * np.sqrt(ens_var[g] + v)
        assert inside.mean() == pytest.approx(0.9, abs=0.01)
    # after runs of the task: the pooled task and noise variances are too narrow at 64 examples and too wide at
    # 1,024; the factor per size corrects both, and covers 90% of the simulated others
    task, noise = _variance_parts(resid, cells)
    cap = np.full(len(resid), 1.0)
    scale = _conditioned_scale(resid, ens_var, cells, groups, task, noise, cap)
    assert scale[0] > 1.5 and scale[2] < 0.67, scale
    for g, factor in zip(groups, scale):
        inside = []
        for k in (1, 2, 3):  # the first k runs of each instance observed, the others predicted
            sd = np.sqrt(ens_var[g][0] + factor * (task * noise / (k * task + noise) + noise))
            for r in _cell_index(cells[g]):
                error = resid[g][r[k:]] - k * task / (k * task + noise) * resid[g][r[:k]].mean()
                inside += list(np.abs(error) <= Z90 * sd)
        assert np.mean(inside) == pytest.approx(0.9, abs=0.03)
    few = np.where(sizes == 8.0, "one", tasks)  # 256 examples seen on one task only: calibrated with 1,024
    assert [sorted(set(sizes[g])) for g in _size_groups(sizes, few)] == [[6.0], [8.0, 10.0]]


def test_numpy_forward_passes_match_the_trained_torch_networks():
    """The meta-learners train with torch and answer with numpy (no torch import in `recommend`)."""
    import torch

    from metapeft.meta import _nets

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((7, 11)).astype(np.float32)
    emb = _nets.embedding_net(11, 4)
    ens = _nets.ensemble_net(3, 11, 16, 4)
    with torch.no_grad():
        for net, numpy_forward in ((emb, _nets.embed), (ens, _nets.ensemble)):
            expected = net(torch.from_numpy(x)).numpy()
            assert np.allclose(numpy_forward(_nets.weights_of(net), x), expected, atol=1e-5)
    assert np.allclose(
        _nets.weights_of(_nets.embedding_net(11, 4, _nets.weights_of(emb)))["layers.0.weight"],
        emb.layers[0].weight.detach().numpy(),
    )


def test_recommending_does_not_import_torch():
    first = run_cli(
        "recommend", "example", "--json"
    )  # profiles the task (that loads the model, with torch) and caches it
    assert first.returncode == 0, first.stderr[-2000:]
    code = (
        "import sys; from metapeft.cli import run; sys.argv = ['metapeft', 'recommend', 'example', '--json']\n"
        "try:\n    run()\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch was imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["recommendations"][0]["method"]


def test_draws_of_some_candidates_are_those_columns_of_all_the_draws(surrogate, held_out):
    """Joint draws are made lazily for the candidates asked about; any subset, taken before or after, is the same."""
    from metapeft.meta import Candidate

    pred = surrogate.predict(
        held_out[1][0].profile, [Candidate(m) for m in ("lora", "ia3", "prefix_tuning", "full_finetuning")]
    )
    every = pred.joint_draws()
    assert every.shape == (2000, 4) and np.allclose(pred.joint_draws([3, 1]), every[:, [3, 1]])
    assert np.allclose(pred.take([1, 3]).joint_draws(), every[:, [1, 3]])
    assert abs(every.mean(0) - pred.mean[:, 0]).max() < 0.02  # draws centred on the prediction


def test_surrogate_round_trips_through_safetensors(surrogate, held_out, tmp_path):
    from metapeft.meta import Candidate, Surrogate
    from metapeft.meta._recommend import _load_cached, _save

    _save(tmp_path / "s.safetensors", surrogate, "key", 10)
    loaded, meta = _load_cached(tmp_path / "s.safetensors")
    assert meta["key"] == "key"
    cands = [Candidate("lora"), Candidate("prefix_tuning")]
    a, b = surrogate.predict(held_out[1][0].profile, cands), loaded.predict(held_out[1][0].profile, cands)
    assert (
        isinstance(loaded, Surrogate) and np.allclose(a.mean, b.mean) and np.allclose(a.joint_draws(), b.joint_draws())
    )
    assert np.allclose(a.best_probability(), b.best_probability()) and all(
        np.allclose(getattr(loaded, k), getattr(surrogate, k)) for k in ("best_won", "best_ran", "best_size")
    )
    # the collapse-risk forest travels as arrays and answers exactly as scikit-learn's fitted forest would
    assert a.fail is not None and np.array_equal(a.fail, b.fail) and 0 < a.fail.min() <= a.fail.max() < 1
    shifted = [Candidate("lora", {"learning_rate": lr}) for lr in (1e-5, 2e-4, 5e-3, 2e-2)]
    assert len(set(loaded.predict(held_out[1][0].profile, shifted).fail.round(6))) > 1  # the setting matters


def test_recommend_ranks_the_zoo_and_learns_from_a_new_run(held_out, tmp_path):
    from metapeft.experience import ExperienceStore
    from metapeft.meta import MetaPEFT
    from metapeft.methods import list_methods

    train, test = held_out
    store = ExperienceStore(f"sqlite:///{tmp_path / 'own.db'}")
    store.add_many(train)
    meta = MetaPEFT(store, include_prior=False, cache_dir=tmp_path / "meta")
    profile = test[0].profile
    ranking = meta.recommend(profile)
    assert {r.method for r in ranking} == {m.name for m in list_methods()}
    assert sum(r.confidence for r in ranking) == pytest.approx(1.0, abs=1e-6)
    assert [r.rank for r in ranking] == list(range(1, len(ranking) + 1))
    for r in ranking:
        e = r.expected_performance
        assert all(e[k]["low"] <= e[k]["mean"] <= e[k]["high"] for k in ("accuracy", "train_time_s", "peak_memory_mb"))
        assert r.reasoning and "learning_rate" in r.hyperparameters
        # no budget given: the steps training will make by default, ~5 epochs (1,024 examples, batch 16: 320)
        assert r.hyperparameters["max_steps"] == 320
    assert "Task traits" in ranking[0].reasoning and meta.similar(profile)
    # the prior's budgets are 80 and 320 steps: a prediction within them says nothing about budgets, one beyond does
    assert "steps" not in meta.recommend(profile, budget={"max_steps": 160})[0].reasoning
    assert "at 400 steps is predicted as at 320" in meta.recommend(profile, budget={"max_steps": 400})[0].reasoning
    assert "at 20 steps is predicted as at 80" in meta.recommend(profile, budget={"max_steps": 20})[0].reasoning

    run = test[0]
    meta.learn_from_experience(run)
    assert store.get(run.id).status == "finished"
    after = meta.recommend(profile)
    same = {r.method: r.expected_performance["accuracy"]["mean"] for r in ranking}
    assert any(abs(same[r.method] - r.expected_performance["accuracy"]["mean"]) > 1e-4 for r in after)
    assert "Conditioned on 1 run" in after[0].reasoning

    # memory limit below every prediction: nothing is feasible, every method says why
    blocked = meta.recommend(profile, max_memory_mb=1.0)
    assert not any(r.feasible for r in blocked) and all("memory" in r.reasoning for r in blocked)
    assert sum(r.confidence for r in blocked) == 0


def test_the_incumbent_stays_first_unless_surely_beaten():
    """A lead the surrogate is unsure of does not displace the experience's most reliable method; a sure one does."""
    from metapeft.meta._recommend import SURE, rank_methods
    from metapeft.meta._surrogate import Prediction

    rng = np.random.default_rng(0)
    draws = rng.normal(size=(4000, 1))

    def pred(lead: float, spread: float) -> Prediction:
        # candidate 0: the incumbent at 0.70; 1: a rival leading by ``lead``; 2: a poor third
        mean = np.array([[0.70, 1, 1], [0.70 + lead, 1, 1], [0.5, 1, 1]])
        samples = mean[:, 0] + np.hstack([np.zeros((4000, 1)), spread * draws, 0.01 * rng.normal(size=(4000, 1))])
        return Prediction(mean, mean - 0.1, mean + 0.1, samples)

    chosen = {"full_finetuning": 0, "ia3": 1, "head_only": 2}
    unsure = pred(0.002, 0.08)  # beats the incumbent in ~51% of the draws
    assert rank_methods(unsure, chosen, "full_finetuning") == ["full_finetuning", "ia3", "head_only"]
    assert rank_methods(unsure, chosen, None) == ["ia3", "full_finetuning", "head_only"]  # no incumbent: by mean
    sure = pred(0.05, 0.02)  # beats it in ~99%
    assert (sure.samples[:, 1] > sure.samples[:, 0]).mean() > SURE
    assert rank_methods(sure, chosen, "full_finetuning") == ["ia3", "full_finetuning", "head_only"]
    assert rank_methods(unsure, {"ia3": 1, "head_only": 2}, "full_finetuning") == [
        "ia3",
        "head_only",
    ]  # incumbent not feasible


def test_the_incumbent_is_the_most_reliable_allowed_method_at_the_tasks_size():
    """Full fine-tuning is the incumbent only where it may be chosen; among the rest, the method closest to the best
    on past instances of a similar training-set size."""
    from metapeft.meta import Cell
    from metapeft.meta._recommend import incumbent_method

    def cell(size: int, scores: dict) -> Cell:
        return Cell(f"t{size}", "f", f"t@{size}", "t", {"dataset_size": size}, scores)

    small = {"full_finetuning": 0.80, "lora": 0.79, "ia3": 0.70}  # LoRA near the best at 64 examples
    large = {"full_finetuning": 0.90, "lora": 0.70, "ia3": 0.88}  # IA3 near it at 1,024
    cells = [cell(64, small)] * 3 + [cell(1024, large)] * 3
    assert incumbent_method(cells) == "full_finetuning"
    assert incumbent_method(cells, ["lora", "ia3"], size=64) == "lora"
    assert incumbent_method(cells, ["lora", "ia3"], size=1000) == "ia3"
    assert incumbent_method(cells, ["prompt_tuning"]) is None


def test_the_incumbent_is_judged_on_past_runs_of_a_like_step_budget():
    """The methods that lead after 80 steps need not lead after 320: a task trained for 320 steps takes the incumbent
    of past 320-step instances, though 80-step instances of its size outnumber them; without a budget, all count."""
    from metapeft.meta import Cell
    from metapeft.meta._recommend import incumbent_method

    def cell(steps: int | None, scores: dict) -> Cell:
        return Cell(
            "k", "f", "t@1024", "t", {"dataset_size": 1024}, scores, budget=f"{steps}x16", seen=steps and steps * 16
        )

    short = {"lora": 0.80, "ia3": 0.86}  # IA3 learns fastest
    long = {"lora": 0.90, "ia3": 0.89}  # LoRA leads once both have converged
    cells = [cell(80, short)] * 6 + [cell(320, long)] * 2
    assert incumbent_method(cells, size=1024) == "ia3"
    assert incumbent_method(cells, size=1024, seen=80 * 16) == "ia3"
    assert incumbent_method(cells, size=1024, seen=320 * 16) == "lora"
    assert incumbent_method([cell(None, long)], size=1024, seen=320 * 16) == "lora"  # no budget: counts as near


def test_the_incumbent_is_judged_on_runs_of_the_kind_the_ranking_compares():
    """Where a chosen setting is not its method's defaults, the incumbent is the method most reliable over the past
    runs at other settings, though runs at defaults, where another method leads, outnumber them; where every chosen
    setting is its defaults, every past run counts."""
    from metapeft.meta import Candidate, Cell
    from metapeft.meta._recommend import Incumbents, incumbent_method

    def cell(defaults: dict, others: dict) -> Cell:
        scores = {m: max(defaults.get(m, 0.0), others.get(m, 0.0)) for m in {*defaults, *others}}
        return Cell("k", "f", "t@1024", "t", {"dataset_size": 1024}, scores, others=others)

    random = {"lora": 0.80, "ia3": 0.85, "dora": 0.78}  # at random settings IA3 holds up best
    at_defaults = {"lora": 0.90, "ia3": 0.80, "dora": 0.89}
    cells = [cell({}, random)] * 2 + [cell(at_defaults, {})] * 3
    incumbents = Incumbents.of(cells, ["lora", "ia3", "dora"], 1024)
    assert (incumbents.incumbent(defaults=True), incumbents.incumbent(defaults=False)) == ("lora", "ia3")
    defaults = [Candidate(m, {}) for m in ("lora", "ia3", "dora")]
    tuned = [Candidate("lora", {"learning_rate": 3e-2}), *defaults[1:]]
    assert incumbents.among(defaults, {"lora": 0, "ia3": 1, "dora": 2}) == "lora"
    assert incumbents.among(tuned, {"lora": 0, "ia3": 1, "dora": 2}) == "ia3"
    only_defaults = [cell(at_defaults, {})]  # no runs at other settings: every run counts
    assert incumbent_method(only_defaults, ["lora", "ia3"], 1024, runs="others") == "lora"


def test_a_setting_likely_to_collapse_loses_to_a_safe_one():
    """The rule weighs each setting's collapse risk: a slightly higher mean does not buy a setting that often ends
    at chance, within a method (``cautious_choice``) or between methods (``rank_methods``)."""
    from metapeft.meta._recommend import cautious_choice, rank_methods
    from metapeft.meta._surrogate import Prediction

    mean = np.array([[0.80, 1, 1], [0.78, 1, 1], [0.76, 1, 1]])
    methods = ["lora", "lora", "ia3"]
    plain = Prediction(mean, mean - 0.1, mean + 0.1)
    assert cautious_choice(plain, methods) == {"lora": 0, "ia3": 2}  # without the risk: the highest mean
    weighed = Prediction(mean, mean - 0.1, mean + 0.1, fail=np.array([0.4, 0.05, 0.02]), chance=0.5)
    np.testing.assert_allclose(weighed.expected_accuracy(), [0.68, 0.766, 0.7548])
    assert cautious_choice(weighed, methods) == {"lora": 1, "ia3": 2}
    assert rank_methods(weighed, {"lora": 0, "ia3": 2}) == ["ia3", "lora"]  # the risky LoRA setting ranks below IA3
    assert weighed.take([2, 0]).fail.tolist() == [0.02, 0.4] and weighed.take([0]).chance == 0.5


def test_empty_experience_is_a_clear_error(tmp_path):
    from metapeft import MetapeftError
    from metapeft.experience import ExperienceStore
    from metapeft.meta import MetaPEFT

    with pytest.raises(MetapeftError, match="not enough experience"):
        MetaPEFT(ExperienceStore(f"sqlite:///{tmp_path / 'e.db'}"), include_prior=False, cache_dir=tmp_path).fit()


def test_experience_without_a_comparison_of_three_methods_is_a_clear_error(prior_records, tmp_path):
    """Runs of two methods per task say nothing the surrogate can learn a ranking from: it would recommend from
    untrained networks."""
    from metapeft import MetapeftError
    from metapeft.experience import ExperienceStore, task_group
    from metapeft.meta import MetaPEFT

    groups = sorted({task_group(r) for r in prior_records})[:3]  # three different tasks, not three sizes of one
    two = [r for r in prior_records if task_group(r) in groups and r.method in ("lora", "ia3")]
    store = ExperienceStore(f"sqlite:///{tmp_path / 'e.db'}")
    store.add_many(two)
    with pytest.raises(MetapeftError, match="3 or more methods"):
        MetaPEFT(store, include_prior=False, cache_dir=tmp_path).fit()


def test_evaluate_scores_ours_and_every_baseline(prior_records):
    from metapeft.meta import Constraint, Surrogate, evaluate
    from metapeft.meta._evaluate import SELECTORS

    methods = {t: {r.method for r in prior_records if r.task_name == t} for t in {r.task_name for r in prior_records}}
    # five different tasks (one instance each) with >= 5 methods: evaluate scores only such instances
    tasks = sorted(t for t, m in methods.items() if len(m) >= 5 and t.endswith("@64"))[:5]
    records = [r for r in prior_records if r.task_name in tasks]
    selectors = {**SELECTORS, "metapeft": lambda: Surrogate(members=3, epochs=150, folds=2)}
    result = evaluate(records, selectors=selectors, random_repeats=5)
    assert result["tasks"] == 5 and set(result["selectors"]) == set(SELECTORS) and result["sizes"] == [64]
    for r in result["selectors"].values():
        assert (
            0 <= r["top1"] <= 1
            and r["mean_regret"] >= 0
            and 0 < r["ndcg"] <= 1
            and 0 <= r["regret_at_3"] <= r["worst_cell_regret"]
        )
        assert 0 <= r["disaster_rate"] <= 1 and r["by_size"]["64"]["cells"] == result["cells"]
        lora = r["paired"]["lora_defaults"]["all"]  # the prior ran every method at its defaults at 64 examples
        assert (
            lora["tasks"] == 5
            and lora["interval_90"][0] <= lora["mean_gain"] <= lora["interval_90"][1]
            and 0 <= lora["wilcoxon_p"] <= 1
        )
    ceiling = result["ceiling"]["lora_defaults"]["all"]["mean_gain"]  # the best run in hindsight beats every pick
    assert all(
        r["paired"]["lora_defaults"]["all"]["mean_gain"] <= ceiling + 1e-9 for r in result["selectors"].values()
    )
    always = result["selectors"]["always_lora"]["paired"]["lora_defaults"]["all"]
    assert (
        always["mean_gain"] == 0 and always["win_rate"] == 0.5
    )  # LoRA at its defaults against itself: every task a tie
    ours = result["selectors"]["metapeft"]
    assert 0 <= ours["ece"] <= 1 and all(0 <= ours[f"coverage_90{k}"] <= 1 for k in ("", "_time", "_memory"))
    assert 0 < ours["interval_width_90_median"] <= 100  # points of accuracy
    assert ours["intervals_by_size"]["64"] == {  # one size here: its figures are the whole's
        "coverage_90": ours["coverage_90"],
        "interval_width_90_median": ours["interval_width_90_median"],
    }
    assert set(result["per_task_regret"]) == {t.split("@")[0] for t in tasks}
    assert result["few_shot"]["cells"] > 0
    fs = result["few_shot"]  # observed runs of the task narrow the intervals
    assert 0 < fs["width_conditioned"] < fs["width_zero_shot"] <= 100
    assert fs["by_size"] == {"64": {k: v for k, v in fs.items() if k not in ("observed_runs", "by_size")}}
    assert result["winners_curse"]["mean_regret"] >= 0 and 0 <= result["winners_curse"]["top1"] <= 1

    # PEFT only: the baselines it rules out are not run; every pick is a PEFT method's
    peft = evaluate(
        records,
        constraint=Constraint(peft_only=True),
        selectors={k: v for k, v in SELECTORS.items() if k != "metapeft"},
        random_repeats=2,
        few_shot=0,
    )
    assert "always_full_ft" not in peft["selectors"] and peft["constraint"] == "PEFT methods only"
    full = peft["selectors"]["global_best"]["paired"]["full_finetuning"]["all"]
    assert full["tasks"] == 5  # full fine-tuning stays a reference even where it may not be chosen


def test_a_constraint_that_leaves_no_method_is_refused():
    from metapeft._errors import OptionError
    from metapeft.meta import Constraint

    with pytest.raises(OptionError, match="leaves no method") as caught:
        Constraint(methods=["full_finetuning", "head_only"], peft_only=True)
    assert caught.value.option == "peft_only"
    with pytest.raises(OptionError, match="positive"):
        Constraint(max_memory_mb=0)
    bad = run_cli("evaluate", "--peft-only", "--methods", "full_finetuning")
    assert bad.returncode == 2 and "leaves no method" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli("evaluate", "--steps", "7")
    assert bad.returncode == 2 and "no run was trained for 7 steps" in bad.stderr and "Traceback" not in bad.stderr


def test_cross_fitted_regret_is_unbiased_where_plain_regret_is_not(prior_records):
    """Ten configurations of equal true accuracy, measured on two seeds with noise: the truly best choice (any) has
    plain regret well above 0 (the winner's curse), and cross-fitted regret near 0; so is the ceiling of the gain
    over LoRA at its defaults when the best in hindsight is chosen on the other seed, where the same-seed ceiling
    shows a gain that is not there."""
    import dataclasses

    from metapeft.meta._evaluate import AlwaysMethod, _cross_fitted
    from metapeft.meta._features import at_defaults

    runs = [
        r
        for r in prior_records
        if r.task_name == sorted({r.task_name for r in prior_records if r.task_name.endswith("@64")})[0]
    ]
    lora_defaults = next(
        i for i, r in enumerate(runs) if r.method == "lora" and at_defaults("lora", r.hyperparameters)
    )
    rng = np.random.default_rng(0)
    crossed, plain, ceiling, hindsight = [], [], [], []
    for _ in range(200):
        noisy = rng.binomial(300, 0.8, size=(len(runs), 2)) / 300
        pairs = [
            (
                dataclasses.replace(r, metrics={**r.metrics, "accuracy": a}),
                dataclasses.replace(r, metrics={**r.metrics, "accuracy": b}),
            )
            for r, (a, b) in zip(runs, noisy)
        ]
        figures = _cross_fitted(AlwaysMethod("lora").fit([]), pairs, None, 1)
        crossed.append(figures["cross_fitted"])
        plain.append(100 * (noisy[:, 1].max() - noisy[[r.method for r in runs].index("lora"), 1]))
        ceiling.append(figures["other_seed_winner_gain_lora"])
        hindsight.append(100 * (noisy[:, 1].max() - noisy[lora_defaults, 1]))
    assert np.mean(plain) > 2 and abs(np.mean(crossed)) < 0.5
    assert np.mean(hindsight) > 2 and abs(np.mean(ceiling)) < 0.5


def test_winners_curse_is_zero_for_a_clear_winner_and_grows_with_ties(prior_records):
    """The regret a selector knowing the truth still shows, from the evaluation's sampling noise alone."""
    import dataclasses

    from metapeft.meta._evaluate import _winners_curse

    task = sorted({r.task_name for r in prior_records})[0]
    runs = [r for r in prior_records if r.task_name == task]

    def with_accuracy(accuracies, n=300):
        return [
            dataclasses.replace(r, metrics={**r.metrics, "accuracy": a, "eval_examples": n})
            for r, a in zip(runs, accuracies)
        ]

    clear = _winners_curse(with_accuracy([0.95] + [0.5] * (len(runs) - 1)), seed=0)
    assert clear["regret"] < 0.01 and clear["top1"] > 0.99
    tied = _winners_curse(with_accuracy([0.8] * len(runs)), seed=0)
    assert tied["regret"] > 2 and tied["top1"] < 0.5
    assert (
        _winners_curse(with_accuracy([0.8] * len(runs), n=3000), seed=0)["regret"] < tied["regret"] / 2
    )  # ~1/sqrt(n)


@pytest.fixture(scope="module")
def held_out_picks(surrogate, held_out, prior_records, held_out_groups):
    """The shared surrogate's pick on every instance of the held-out tasks, with every method allowed and PEFT only:
    per instance, the pick's gain over the median allowed run and over LoRA at its defaults (where it was run),
    and the coverage of the 90% accuracy intervals."""
    from metapeft.experience import task_group
    from metapeft.meta import Candidate, Constraint
    from metapeft.meta._embedding import cells_of
    from metapeft.meta._evaluate import _instances, select
    from metapeft.meta._recommend import Incumbents

    past = cells_of(held_out[0])  # what the surrogate was fitted on
    out = {}
    for name, constraint in (("all", Constraint()), ("peft", Constraint(peft_only=True))):
        rows = []
        for group in sorted(held_out_groups):
            for inst in _instances(group, [r for r in prior_records if task_group(r) == group], constraint, 5):
                cands = [Candidate(r.method, r.hyperparameters) for r in inst.allowed]
                pred = surrogate.predict(inst.allowed[0].profile, cands)
                ranking, chosen, _ = select(
                    pred, cands, Incumbents.of(past, sorted({r.method for r in inst.allowed}), inst.size)
                )
                acc = np.array([r.metrics["accuracy"] for r in inst.allowed])
                picked, lora = acc[chosen[ranking[0]]], inst.references["lora_defaults"]
                # after two of its runs (seeded), the intervals of the others
                seen = np.random.default_rng(len(rows)).permutation(len(acc))[:2]
                rest = np.setdiff1d(np.arange(len(acc)), seen)
                warm = surrogate.predict(
                    inst.allowed[0].profile, [cands[i] for i in rest], observed=[inst.allowed[i] for i in seen]
                )
                rows.append(
                    {
                        "median": 100 * (picked - inst.references["median"]),
                        "lora": None if lora is None else 100 * (picked - lora),
                        "coverage": float(np.mean((pred.low[:, 0] <= acc) & (acc <= pred.high[:, 0]))),
                        "width": float(np.median(pred.high[:, 0] - pred.low[:, 0])),
                        "conditioned_coverage": float(
                            np.mean((warm.low[:, 0] <= acc[rest]) & (acc[rest] <= warm.high[:, 0]))
                        ),
                        "conditioned_width": float(np.median(warm.high[:, 0] - warm.low[:, 0])),
                    }
                )
        out[name] = rows
    return out


@pytest.mark.parametrize("constraint", ["all", "peft"])
def test_on_held_out_tasks_the_pick_beats_the_median_choice_and_the_intervals_cover(held_out_picks, constraint):
    """Fails when the selector gets worse: on 22 instances of 8 tasks it never saw (seeded fit), its pick beats the
    median allowed configuration on the mean (+1.96 points with every method, +1.09 PEFT only, when written) and
    in most instances, and its 90% intervals cover 80–95% of the runs."""
    rows = held_out_picks[constraint]
    gains = np.array([r["median"] for r in rows])
    assert len(rows) >= 20 and gains.mean() > 0.5 and (gains > 0).mean() >= 0.5, (gains.mean(), (gains > 0).mean())
    assert 0.8 <= np.mean([r["coverage"] for r in rows]) <= 0.95


def test_on_held_out_tasks_two_runs_of_the_task_narrow_the_intervals_and_they_still_cover(held_out_picks):
    """Conditioning on two runs of a task it never saw narrows the intervals of its other runs and they keep covering
    about 90% of them (on these 27 instances when written: narrower by a fifth or more on 96%, median width 32 → 18
    points, coverage 88%)."""
    rows = held_out_picks["all"]
    narrower = np.array([r["conditioned_width"] < 0.8 * r["width"] for r in rows])
    assert narrower.mean() >= 0.8 and 0.8 <= np.mean([r["conditioned_coverage"] for r in rows]) <= 0.97


@pytest.mark.xfail(
    strict=True,
    reason="issue 22 target not met yet: on the held-out instances with LoRA at its defaults (64 examples), the pick "
    "trails it by 0.24 points with every method (PEFT only it leads by 0.13); this test passes, and so fails as "
    "xfail, once neither trails",
)
def test_on_held_out_tasks_the_pick_beats_lora_at_its_defaults(held_out_picks):
    for rows in held_out_picks.values():
        gains = np.array([r["lora"] for r in rows if r["lora"] is not None])
        assert len(gains) >= 10 and gains.mean() > 0


def test_every_selector_follows_the_protocol(prior_records):
    """One conformance check (as scikit-learn's check_estimator) over the meta-learner and every baseline."""
    from metapeft.experience import task_group
    from metapeft.meta import Candidate, Surrogate, check_selector
    from metapeft.meta._evaluate import SELECTORS

    groups = sorted({task_group(r) for r in prior_records})[:6]
    records = [r for r in prior_records if task_group(r) in groups[:5] and r.task_name.endswith("@64")]
    new = next(r for r in prior_records if task_group(r) == groups[5])
    candidates = [Candidate(m, {}) for m in ("lora", "ia3", "prompt_tuning", "full_finetuning")]
    for name, make in {**SELECTORS, "metapeft": lambda: Surrogate(members=2, epochs=60, folds=2)}.items():
        check_selector(make, records, new.profile, candidates)


def test_cli_recommend_similar_map_and_errors(tmp_path):
    proc = run_cli("recommend", "example", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert sum(r["confidence"] for r in result["recommendations"]) == pytest.approx(1.0, abs=1e-3)
    assert result["similar_tasks"] and result["experience"]["runs"] > 0
    table = run_cli("recommend", "example", env={"COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    head_only = next(line for line in table.stdout.splitlines() if " head_only " in line)
    assert "head_lr=" in head_only and " lr=" not in head_only  # its encoder's lr is fixed at 0: not a suggestion
    peft = run_cli("recommend", "example", "--peft-only", "--json")
    assert peft.returncode == 0, peft.stderr
    ranked = [r["method"] for r in json.loads(peft.stdout)["recommendations"]]
    assert len(ranked) == 8 and not {"full_finetuning", "head_only"} & set(ranked)
    assert all(0 <= r["collapse_risk"] <= 1 for r in json.loads(peft.stdout)["recommendations"])
    none = run_cli("recommend", "example", "--peft-only", "--methods", "full_finetuning,head_only")
    assert none.returncode == 2 and "leaves no method" in none.stderr and len(none.stderr.strip().splitlines()) == 1

    proc = run_cli("similar", "example", "-k", "2", "--json")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 2

    proc = run_cli("map", "--output", str(tmp_path / "map"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "map" / "map.png").stat().st_size > 1000 and "<img" in (
        tmp_path / "map" / "index.html"
    ).read_text()
    points = json.loads(proc.stdout)[
        "points"
    ]  # the prior holds two samples (seeds) of some task@size: labels tell them apart
    assert len({p["label"] for p in points}) > len({p["task"] for p in points})

    bad = run_cli("recommend", "example", "--model", str(tmp_path / "no-such-model"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    empty = run_cli("recommend", "example", "--no-prior", "--store", f"sqlite:///{tmp_path / 'empty.db'}")
    assert empty.returncode == 2 and "not enough experience" in empty.stderr


def test_packaged_model_is_the_fit_of_the_shipped_prior():
    """The package ships the meta-learner fitted on its prior (fast first use); it must be regenerated with the
    prior (``write_packaged_model``), or this fails."""
    from safetensors import safe_open

    from metapeft.experience import usable
    from metapeft.meta._recommend import PACKAGED_MODEL, _experience_key
    from metapeft.prior import PriorExperience

    if not PACKAGED_MODEL.exists():
        pytest.skip("no packaged model")
    with safe_open(str(PACKAGED_MODEL), framework="np") as f:
        meta = json.loads(f.metadata()["meta"])
    records = [r for r in PriorExperience().records() if usable(r)]
    assert meta["key"] == _experience_key(records) and meta["n_records"] == len(records)


def test_task_features_of_few_tasks_keep_only_directions_with_variance(prior_records):
    """n task profiles span n - 1 domain directions; scaling a direction without variance to unit variance would
    turn rounding noise into a large feature."""
    from metapeft.meta._embedding import TaskFeaturizer

    profiles = list({r.task_name.split("@")[0]: r.profile for r in prior_records}.values())[:4]
    featurizer = TaskFeaturizer().fit(profiles)
    assert featurizer.domain_components.shape[0] <= 3
    seen = featurizer.transform(profiles)
    assert np.abs(seen).max() < 5  # the training tasks themselves sit within a few standard deviations


def test_collapse_risk_separates_failures_on_held_out_tasks(prior_records):
    """Failures (near chance, or > 10 points below the best run) get higher risk on tasks the model never saw: five
    folds by task, over three seeded task splits as in benchmarks/collapse_risk.py (which task shares a fold moves one
    split's AUC by several points: 0.66-0.77 over ten). Mean AUC 0.737 on the shipped prior when written."""
    from sklearn.metrics import roc_auc_score

    from metapeft.experience import task_group
    from metapeft.meta._risk import CollapseRisk, failures

    y = failures(prior_records)
    groups = np.array([task_group(r) for r in prior_records])
    names = sorted(set(groups))
    aucs = []
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(names))
        fold = np.array([dict(zip([names[j] for j in order], np.arange(len(names)) % 5))[g] for g in groups])
        p = np.zeros(len(y))
        for k in range(5):
            risk = CollapseRisk().fit([r for r, f in zip(prior_records, fold) if f != k])
            for i in np.flatnonzero(fold == k):
                r = prior_records[i]
                p[i] = risk.predict(r.profile, [(r.method, r.hyperparameters)])[0]
        aucs.append(roc_auc_score(y, p))
        assert abs(p.mean() - y.mean()) < 0.05  # calibrated in the large
    assert 0.1 < y.mean() < 0.5 and np.mean(aucs) >= 0.70, aucs


def test_collapse_risk_walks_its_saved_trees_as_scikit_learn_does(prior_records):
    """The forest kept as arrays (what the surrogate saves) gives predict_proba's answer to the last bit."""
    from sklearn.ensemble import RandomForestClassifier

    from metapeft.meta._features import steps_of
    from metapeft.meta._risk import CollapseRisk, failures

    train, test = prior_records[::3], prior_records[1::7]
    risk = CollapseRisk.from_state(CollapseRisk(seed=1).fit(train).state())
    x = np.stack(
        [risk._features(r.profile, r.method, r.hyperparameters, steps_of(r.hyperparameters, r.metrics)) for r in train]
    )
    forest = RandomForestClassifier(150, min_samples_leaf=5, max_features=0.3, random_state=1, n_jobs=1)
    forest.fit(x, failures(train))
    expected = forest.predict_proba(
        np.stack(
            [risk._features(r.profile, r.method, r.hyperparameters, r.hyperparameters["max_steps"]) for r in test]
        )
    )[:, list(forest.classes_).index(True)]
    ours = np.concatenate([risk.predict(r.profile, [(r.method, r.hyperparameters)]) for r in test])
    assert np.abs(ours - expected).max() < 1e-12 and expected.std() > 0.05


def test_check_rates_a_setting_and_refuses_one_outside_its_range():
    result = run_cli("check", "example", "--method", "prompt_tuning", "--set", "learning_rate=1e-4", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout)
    assert (
        found["method"] == "prompt_tuning"
        and found["hyperparameters"]["learning_rate"] == 1e-4
        and 0 <= found["collapse_risk"] <= 1
    )
    assert (
        found["verdict"] in ("low", "moderate", "high")
        and found["expected_accuracy"]["low"] <= found["expected_accuracy"]["mean"]
    )
    for s in found["suggestions"]:  # each lowers the risk by 5 points or more
        assert s["collapse_risk"] < found["collapse_risk"] - 0.05 and s["change"]
    for args, said in (
        (("lora", "--set", "learning_rate=5"), "learning_rate"),
        (
            ("adalora", "--set", "init_r=8", "--set", "target_r=64"),
            "target_r=64 exceeds init_r=8",
        ),  # a rule between two
    ):
        bad = run_cli("check", "example", "--method", *args)
        assert (
            bad.returncode == 2
            and said in bad.stderr
            and "Traceback" not in bad.stderr
            and len(bad.stderr.strip().splitlines()) == 1
        )


def test_check_says_where_a_setting_lies_outside_what_the_experience_measured():
    """A low risk at a setting no past run came near is an absence of evidence: check says so, for a setting beyond
    every value the experience tried, for a step budget it never ran, and for non-default settings at a budget it ran
    only at the defaults."""
    from metapeft.experience import LIKE_BUDGET, examples_seen
    from metapeft.meta import MetaPEFT
    from metapeft.meta._features import at_defaults

    lora = [r for r in MetaPEFT().experiences() if r.method == "lora"]  # what the CLI below reads
    highest = max(r.hyperparameters["learning_rate"] for r in lora)

    def notes(*sets: str) -> list[str]:
        result = run_cli("check", "example", "--method", "lora", *(a for s in sets for a in ("--set", s)), "--json")
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)["notes"]

    outside, inside, unseen = (
        notes(f"learning_rate={2 * highest}", "max_steps=80"),
        notes(f"learning_rate={highest / 2}", "max_steps=320"),
        notes("max_steps=100000"),
    )
    assert any(n.startswith(f"learning_rate={2 * highest:.2g} lies above every lora run") for n in outside), outside
    assert not any("lies above" in n or "lies below" in n for n in inside), inside
    varied = any(  # a LoRA run at other settings than the defaults that fed about as many examples (320 steps x 16)
        not at_defaults("lora", r.hyperparameters) and 1 / LIKE_BUDGET <= (examples_seen(r) or 0) / 5120 <= LIKE_BUDGET
        for r in lora
    )
    assert any("only at its defaults" in n for n in inside) != varied, inside
    assert any(n.startswith("the experience never ran lora at a step budget like this one") for n in unseen), unseen


def test_the_prior_does_not_import_the_meta_learners():
    """Data flows one way: the prior is experience; the meta-learners read it (``ship_prior`` packages both)."""
    code = (
        "import sys, metapeft.prior; assert not any(m.startswith('metapeft.meta') for m in sys.modules), "
        "sorted(m for m in sys.modules if m.startswith('metapeft'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import metapeft.prior

    source = open(metapeft.prior.__file__).read()
    assert (
        "from ..meta" not in source and "import metapeft.meta" not in source and "from metapeft.meta" not in source
    )  # not even lazily
