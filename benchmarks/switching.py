"""Dynamic method switching against static methods (issue 21), on tasks the meta-learner and the forecaster \
did not see.

Protocol: the curves bench's first pass (``benchmarks/designs/curves-v1.json``: 1,024 training examples, each method
at its defaults, 80 steps, curve points every 20 steps on 300 held-out examples, final accuracy on 1,000, seed 0),
so that its static runs are the baselines and each switching run differs from one of them only by the switch. A
task is planned once all ten of its static runs are in the bench's store.

For each task, with the meta-learner and the learning-curve forecaster fitted on the shipped prior without the task
(the forecaster with the surrogate's out-of-task predictions, as ``train --switch`` fits it):
1. the recommended static method is the ranking's first at 80 steps; the switching run starts with the first one
   whose learning can be merged (the same one unless the first is prompt, prefix or P-tuning), or with LoRA at its
   defaults (what a user picks unaided); a PEFT-only variant recommends and switches among PEFT methods only;
2. the controller is run on the prior's curve of that start method (the switching run's curve up to its switch is
   that curve: same data, seed and settings), which gives, for every threshold, where it would switch and to what;
3. each distinct switch is trained for real (merge-and-continue, the target at the settings the controller gives
   it), with the linear probe of the forgetting benchmark (``forgetting.py``) and the accuracy evaluated 1–12 steps
   after the switch (``dense_recovery``); a threshold that never switches ends with the static run itself.
Baselines from the static runs: the recommended static method, the best static method in hindsight, and successive
halving (every method's curve at a quarter of the budget, the best one kept: its 80-step run; it costs 10 × 20 + 60 =
260 steps of training against 80).

    uv run python benchmarks/switching.py                   # plans, then trains the switches; resumable
    uv run python benchmarks/switching.py --summary         # the tables (benchmarks/results/switching.md)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np

TASKS = (
    "sst2,sst5,trec6,banking77,clinc150,ag_news,mrpc,sick_entailment,tweet_irony,financial_phrasebank,cola,yelp_stars"
)
THRESHOLDS = (0.6, 0.7, 0.8, 0.9)
PROBES = "dbpedia14,dair_emotion"  # the linear probe of every switching run (forgetting); no task here trains on them
OUT = Path(__file__).parent / "results" / "switching.jsonl"


def static_runs(store, task: str) -> dict:
    """The curves bench's runs of ``task`` at 1,024 examples, each method at its defaults for 80 steps, by method."""
    return {
        r.method: r
        for r in store.iter(status="finished")
        if r.task_name == f"{task}@1024"
        and r.tags.get("config_id") == "default"
        and int(r.metrics.get("steps") or 0) == 80
    }


def plan(task: str, records, static: dict, variants: list[str], expected: dict[str, float]) -> list[dict]:
    """Steps 1–2 of the protocol for one task, for each variant (``recommended``, a method name, either with
    ``:peft``: recommend and switch among PEFT methods only); one meta-learner and forecaster fit serves them all."""
    from metapeft.experience import task_group
    from metapeft.meta import CurveForecaster, MetaPEFT
    from metapeft.methods import get_method
    from metapeft.training import SwitchController, SwitchPolicy, TrainerState

    own = next(iter(static.values()))
    train = [r for r in records if task_group(r) != task_group(own)]
    started = time.monotonic()
    meta = MetaPEFT(experiences=train, include_own=False, include_prior=False)
    meta.fit()
    forecaster = CurveForecaster().fit(train, {r.id: expected[r.id] for r in train if r.id in expected})
    fit_s = round(time.monotonic() - started, 1)
    profile = own.profile
    plans = []
    for variant in variants:
        first, peft_only = variant.removesuffix(":peft"), variant.endswith(":peft")
        allowed = [m for m in static if not peft_only or get_method(m).kind == "peft"]
        ranking = meta.recommend(profile, methods=allowed, budget={"max_steps": 80})
        recommended = ranking[0].method
        start = next(r.method for r in ranking if get_method(r.method).mergeable) if first == "recommended" else first
        curve = [p for p in static[start].curve]
        policy = SwitchPolicy(threshold=0.5, max_switches=1, methods=allowed)
        controller = SwitchController(meta, profile, forecaster, policy)
        for i, point in enumerate(curve[:-1]):
            state = TrainerState(max_steps=80, step=point["step"], method=start, curve=curve[: i + 1])
            switch = controller.should_switch(state)  # at 0.5: every decision a threshold of the table could take
            if switch is not None:
                controller.decisions[-1]["hyperparameters"] = switch.hyperparameters
        plans.append(
            {
                "task": task,
                "kind": "plan",
                "first": first,
                "peft_only": peft_only,
                "recommended": recommended,
                "start": start,
                "decisions": controller.decisions,
                "static": {m: r.metrics["accuracy"] for m, r in static.items() if m in allowed},
                "quarter": {
                    m: next((p["accuracy"] for p in r.curve if p["step"] == 20), None)
                    for m, r in static.items()
                    if m in allowed
                },
                "start_curve": curve,
                "fit_s": fit_s,
            }
        )
    return plans


def switch_of(decisions: list[dict], threshold: float) -> dict | None:
    """The first decision at which the controller with ``threshold`` switches."""
    return next((d for d in decisions if d.get("p_better") is not None and d["p_better"] >= threshold), None)


RECOVERY_OFFSETS = (1, 2, 3, 4, 6, 8, 10, 12)


def dense_recovery(task, max_length: int, eval_size: int = 300, sample_seed: int = 0):
    """A callback: after the run's first switch, the accuracy on the curve's held-out examples (the rows the
    engine's curve uses) at each of ``RECOVERY_OFFSETS`` steps; the curve has a point every 20 steps, and the
    recovery target is 10% of the steps left (6 of 60). ``steps`` is the first offset whose accuracy is at or above
    the pre-switch one (as each switch's ``recovery_steps`` counts on the curve). Evaluating draws no random
    numbers: the run trains as it would without it."""
    from metapeft._backbone import load_tokenizer
    from metapeft.tasks import stratified_indices
    from metapeft.training import Batches, TrainerCallback, evaluate

    rows = np.sort(stratified_indices(task.test.labels, eval_size, sample_seed))
    data = Batches(load_tokenizer(), task.test.select(rows), max_length)

    class DenseRecovery(TrainerCallback):
        def on_train_begin(self, state):
            self.at, self.points = None, []

        def on_switch(self, state):
            self.at = state.step if self.at is None else self.at

        def on_step_end(self, state):
            if self.at is not None and state.step - self.at in RECOVERY_OFFSETS:
                accuracy = evaluate(state.model, data, next(state.model.parameters()).device)[0]
                self.points.append({"offset": state.step - self.at, "accuracy": accuracy})

        def on_train_end(self, state):
            if self.at is None or not self.points:
                return
            before = state.switches[0]["accuracy_before"]
            back = next((p["offset"] for p in self.points if p["accuracy"] >= before), None)
            state.metrics["recovery"] = {
                "points": self.points,
                "lowest": min(p["accuracy"] for p in self.points),
                "steps": back,
                "fraction": None if back is None else round(back / (state.max_steps - self.at), 4),
            }

    return DenseRecovery()


def run_switch(task_name: str, start: str, decision: dict | None, suite: str, callbacks=()) -> dict:
    """Step 3: the start method for 80 steps, switched at the decision's step (the bench's protocol); with no
    decision, the static run (``callbacks`` watch the run too: the forgetting benchmark's probe)."""
    from metapeft.tasks import load_suite, profile_task
    from metapeft.training import RunConfig, SwitchAt, train

    entry = next(e for e in load_suite(suite) if e.name == task_name)
    task = entry.load().subsample(1024, seed=0)
    profile = profile_task(task)
    hyperparameters = {"max_steps": 80, "batch_size": 16, "max_length": min(profile.sequence_length, 128)}
    run = RunConfig(
        seed=0,
        sample_seed=0,
        eval_size=300,
        eval_points=4,
        final_eval_size=1000,
        save=False,
        record=False,
        track=False,
    )
    if decision is not None:
        target_hp = {
            **decision.get("hyperparameters", {}),
            "batch_size": 16,
            "max_length": hyperparameters["max_length"],
        }
        callbacks = [
            SwitchAt(decision["step"], decision["alternative"], target_hp, reason="benchmark"),
            dense_recovery(task, hyperparameters["max_length"]),
            *callbacks,
        ]
    started = time.monotonic()
    result = train(task, start, hyperparameters, run, profile=profile, callbacks=callbacks)
    return {
        "task": task_name,
        "kind": "run",
        "start": start,
        "step": decision and decision["step"],
        "to": decision and decision["alternative"],
        "accuracy": result.metrics["accuracy"],
        "curve": result.curve,
        "switches": result.metrics.get("switches", []),
        **{k: result.metrics[k] for k in ("forgetting", "recovery") if k in result.metrics},
        "wall_s": round(time.monotonic() - started, 1),
        "machine": f"{platform.machine()}, torch threads 1",
    }


def threshold_choice(lines: list[dict]) -> str:
    """How the shipped threshold is chosen: over every (task, start) pair of every variant, the mean gain of the
    switching run over its own static start method and the worst pair, per threshold; the choice is the threshold
    with the largest mean gain among those with no pair worse than −1 point."""
    plans = [x for x in lines if x["kind"] == "plan"]
    runs = {(x["task"], x["start"], x["step"], x["to"]): x for x in lines if x["kind"] == "run"}
    rows, best = [], None
    for threshold in THRESHOLDS:
        gains = []
        for p in plans:
            d = switch_of(p["decisions"], threshold)
            key = d and (p["task"], p["start"], d["step"], d["alternative"])
            if d is None or key in runs:
                gains.append(0.0 if d is None else 100 * (runs[key]["accuracy"] - p["static"][p["start"]]))
        if gains:
            rows.append(f"| {threshold} | {len(gains)} | {np.mean(gains):+.2f} | {min(gains):+.1f} |")
            if min(gains) >= -1 and (best is None or np.mean(gains) > best[1]):
                best = (threshold, np.mean(gains))
    return "\n".join(
        [
            "### The threshold: gain of every (task, start) pair over its own static start",
            "",
            "| threshold | pairs | mean gain | worst pair |",
            "|---:|---:|---:|---:|",
            *rows,
            "",
            f"Largest mean gain with no pair below −1 point: {best[0] if best else 'none'}.",
            "",
        ]
    )


def summary(lines: list[dict]) -> str:
    parts = [threshold_choice(lines)]
    plans = [x for x in lines if x["kind"] == "plan"]
    for first, peft_only in dict.fromkeys((x.get("first", "recommended"), x.get("peft_only", False)) for x in plans):
        start = (
            "the recommended method (the first of the ranking that can be merged)"
            if first == "recommended"
            else first + " at its defaults"
        )
        parts.append(f"### Starting with {start}{', PEFT methods only' if peft_only else ''}\n")
        mine = [x for x in plans if (x.get("first", "recommended"), x.get("peft_only", False)) == (first, peft_only)]
        parts.append(_table(mine, lines))
    return "\n".join(parts)


def _table(lines: list[dict], every: list[dict]) -> str:
    from metapeft.training import SwitchPolicy

    default = SwitchPolicy().threshold  # the threshold `train --switch` ships with
    plans = {x["task"]: x for x in lines if x["kind"] == "plan"}
    runs = {(x["task"], x["start"], x["step"], x["to"]): x for x in every if x["kind"] == "run"}
    out = [
        "| threshold | tasks | switched | mean vs static start method | mean vs recommended static | worst vs "
        "it | within 1 pt of hindsight best | mean vs successive halving (3.25× compute) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    details = []
    for threshold in THRESHOLDS:
        gains, vs_start, near, vs_sh, switched, n = [], [], 0, [], 0, 0
        for task, p in plans.items():
            d = switch_of(p["decisions"], threshold)
            if d is not None and (task, p["start"], d["step"], d["alternative"]) not in runs:
                continue  # not trained yet
            n += 1
            accuracy = (
                p["static"][p["start"]]
                if d is None
                else runs[(task, p["start"], d["step"], d["alternative"])]["accuracy"]
            )
            vs_start.append(100 * (accuracy - p["static"][p["start"]]))
            switched += d is not None
            best = max(p["static"].values())
            sh = p["static"][
                max((m for m in p["quarter"] if p["quarter"][m] is not None), key=lambda m: p["quarter"][m])
            ]
            gains.append(100 * (accuracy - p["static"][p["recommended"]]))
            near += 100 * (best - accuracy) <= 1
            vs_sh.append(100 * (accuracy - sh))
            if threshold == default:
                details.append(
                    f"| {task} | {p['recommended']} {100 * p['static'][p['recommended']]:.1f} | {p['start']} "
                    f"→ {d['alternative'] + ' at ' + str(d['step']) if d else 'no switch'} "
                    f"| {100 * accuracy:.1f} | {max(p['static'], key=p['static'].get)} {100 * best:.1f} | "
                    f"{100 * sh:.1f} |"
                )
        if n:
            out.append(
                f"| {threshold} | {n} | {switched} | {np.mean(vs_start):+.2f} | {np.mean(gains):+.2f} | "
                f"{min(gains):+.1f} | {near}/{n} | {np.mean(vs_sh):+.2f} |"
            )
    return "\n".join(
        out
        + [
            "",
            f"At the default threshold, {default}, per task (accuracy %, 1,000 held-out examples):",
            "",
            "| task | recommended static | switching | policy | best static in hindsight | successive halving |",
            "|---|---:|---|---:|---:|---:|",
        ]
        + details
        + [""]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--suite", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--static",
        default=f"sqlite:///{Path(__file__).resolve().parents[1] / '.bench' / 'curves.db'}",
        help="the curves bench's store",
    )
    parser.add_argument("--plan-only", action="store_true", help="fit and simulate the controller; train nothing")
    parser.add_argument(
        "--variants",
        default="recommended,lora,lora:peft",
        help="where switching runs start: recommended, or a method at its defaults (what a user picks unaided); "
        "':peft' recommends and switches among PEFT methods only",
    )
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()] if out.exists() else []
    if args.summary:
        text = summary(lines)
        print(text)
        out.with_suffix(".md").write_text(text + "\n")
        return
    import torch

    from metapeft._environment import quiet_libraries
    from metapeft.prior import PriorExperience

    quiet_libraries()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    records = PriorExperience().records()
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(line: dict) -> None:
        with out.open("a") as f:
            f.write(json.dumps(line) + "\n")
        lines.append(line)

    from metapeft.experience import ExperienceStore
    from metapeft.prior import expected_accuracies
    from metapeft.tasks import load_suite
    from metapeft.training import LinearProbe

    suite = {e.name: e for e in load_suite(args.suite)}
    probe = LinearProbe([suite[name].load() for name in PROBES.split(",")])
    store = ExperienceStore(args.static)

    variants = args.variants.split(",")
    # the surrogate's out-of-task predictions that ship with the prior, as `train --switch` reads them (made with
    # five task folds: the training curves' inputs come from surrogates that may have seen the held-out task, a
    # second-order leak; the held-out run's own input comes from this plan's meta-learner, fitted without it)
    expected = expected_accuracies()

    def variant(x: dict) -> str:
        return x.get("first", "recommended") + (":peft" if x.get("peft_only") else "")

    for task in args.tasks.split(","):
        static = static_runs(store, task)
        if len(static) < 10:
            print(f"{task}: {len(static)} of its 10 static runs in {args.static}: not planned yet", flush=True)
            continue
        done = {variant(x) for x in lines if x["kind"] == "plan" and x["task"] == task}
        todo = [v for v in variants if v not in done]
        for p in plan(task, records, static, todo, expected) if todo else []:
            write(p)
            print(
                f"{task} ({variant(p)}): recommended {p['recommended']}, start {p['start']}, decisions "
                + ", ".join(f"{d['step']}: {d.get('alternative')} P={d.get('p_better')}" for d in p["decisions"]),
                flush=True,
            )
    if args.plan_only:
        return
    for p in [
        x for x in lines if x["kind"] == "plan" and x["task"] in args.tasks.split(",") and variant(x) in variants
    ]:
        task = p["task"]
        todo = {
            (d["step"], d["alternative"]): d for t in THRESHOLDS if (d := switch_of(p["decisions"], t)) is not None
        }
        for (step, to), d in sorted(todo.items()):
            if any(
                x["kind"] == "run"
                and x["task"] == task
                and x["start"] == p["start"]
                and x["step"] == step
                and x["to"] == to
                for x in lines
            ):
                continue
            write(run_switch(task, p["start"], d, args.suite, callbacks=[probe]))
            print(
                f"{task}: {p['start']} → {to} at {step}: accuracy {lines[-1]['accuracy']:.4f} "
                f"({lines[-1]['wall_s']} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
