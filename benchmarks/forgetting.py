"""What training costs the encoder's general knowledge (issue 21, item 5b): static methods and switching runs.

Each run follows the switching benchmark's protocol (1,024 training examples, defaults, 80 steps, seed 0). Forgetting
is a frozen linear probe (:class:`metapeft.training.LinearProbe`): a logistic regression on the encoder's pooled
embeddings of two suite tasks that no run here trains on (512 training and 500 test examples each), fitted and
scored with the pretrained encoder and again with the trained one. The drop is in points, averaged over the two
probe tasks; full fine-tuning is the reference. Switching runs are those the switching benchmark trained
(``benchmarks/results/switching.jsonl``): it probes them itself (the same probe), and older ones without the
figures are re-run here with the probe.

    uv run python benchmarks/forgetting.py                 # resumable; one line per run
    uv run python benchmarks/forgetting.py --summary       # the table (benchmarks/results/forgetting.md)
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
from switching import PROBES  # the probe the switching benchmark runs on its own runs

TASKS = "sst2,trec6,banking77"
METHODS = (
    "full_finetuning",
    "lora",
    "dora",
    "adalora",
    "ia3",
    "loha",
    "prompt_tuning",
    "prefix_tuning",
    "p_tuning",
    "head_only",
)
OUT = Path(__file__).parent / "results" / "forgetting.jsonl"


def summary(lines: list[dict]) -> str:
    """Static methods on the tasks every method ran on, switching runs by kind; then each switching run beside its
    start and target methods' static runs on the same task, where those ran (the task moves the probe too)."""
    methods_of: dict[str, set] = {}
    for x in lines:
        if x["to"] is None:
            methods_of.setdefault(x["task"], set()).add(x["name"])
    complete = {t for t, names in methods_of.items() if set(METHODS) <= names}
    by: dict[str, list[dict]] = {}
    for x in lines:
        if x["to"] is None and x["task"] not in complete:
            continue
        group = (
            x["name"]
            if x["to"] is None
            else "switching, PEFT methods only"
            if x["peft_only"]
            else "switching to or from full fine-tuning"
        )
        by.setdefault(group, []).append(x)
    probes = list(dict.fromkeys(k for x in lines for k in x["forgetting"]["probe"]))
    out = [
        "| run | tasks | mean probe drop (points) | worst | "
        + " | ".join(f"drop on {p}" for p in probes)
        + " | accuracy on the task (mean) |",
        "|---|---:|---:|---:|" + "---:|" * len(probes) + "---:|",
    ]
    for name, xs in by.items():
        drops = [x["forgetting"]["drop"] for x in xs]
        each = [
            np.mean([100 * (x["forgetting"]["probe"][p]["before"] - x["forgetting"]["probe"][p]["after"]) for x in xs])
            for p in probes
        ]
        out.append(
            f"| {name} | {len(xs)} | {np.mean(drops):+.2f} | {max(drops):+.2f} | "
            + " | ".join(f"{d:+.1f}" for d in each)
            + f" | {100 * np.mean([x['accuracy'] for x in xs]):.1f} |"
        )
    static = {(x["task"], x["name"]): x["forgetting"]["drop"] for x in lines if x["to"] is None}
    out += [
        "",
        "Each switching run: its probe drop beside its start and target methods' static runs on the same task (where "
        "those ran; the task moves the probe too), and its recovery on the curve's 300 held-out examples, evaluated "
        "1, 2, 3, 4, 6, 8, 10 and 12 steps after the switch:",
        "",
        "| task | switching run | its drop | static start | static target | accuracy before | lowest after | "
        "back at it after (steps) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    switching = [x for x in lines if x["to"] is not None]
    for x in switching:
        shown = [
            "—" if v is None else f"{v:+.1f}"
            for v in (static.get((x["task"], x["start"])), static.get((x["task"], x["to"])))
        ]
        r = x.get("recovery") or {}
        before = x["switches"][0]["accuracy_before"] if x.get("switches") else None
        out.append(
            f"| {x['task']} | {x['name']} | {x['forgetting']['drop']:+.1f} | {shown[0]} | {shown[1]} | "
            + ("—" if before is None else f"{100 * before:.1f}")
            + " | "
            + ("—" if r.get("lowest") is None else f"{100 * r['lowest']:.1f}")
            + " | "
            + ("—" if not r else "not within 12" if r["steps"] is None else str(r["steps"]))
            + " |"
        )
    measured = [x["recovery"] for x in switching if x.get("recovery")]
    if measured:
        soon = sum(r["fraction"] is not None and r["fraction"] <= 0.1 for r in measured)
        out += ["", f"Back at the pre-switch accuracy within 10% of the steps left: {soon} of {len(measured)} runs."]
    before = {k: v["before"] for x in lines for k, v in x["forgetting"]["probe"].items()}
    return "\n".join(
        out
        + [
            "",
            "Probe accuracy of the pretrained encoder: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in before.items()),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--probes", default=PROBES)
    parser.add_argument("--methods", default=",".join(METHODS), help="the static runs' methods")
    parser.add_argument("--suite", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))
    parser.add_argument("--switching", default=str(Path(__file__).parent / "results" / "switching.jsonl"))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--threads", type=int, default=1)
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
    from switching import run_switch

    from metapeft._environment import quiet_libraries
    from metapeft.tasks import load_suite
    from metapeft.training import LinearProbe

    quiet_libraries()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    suite = {e.name: e for e in load_suite(args.suite)}
    tasks = args.tasks.split(",")
    if overlap := set(tasks) & set(args.probes.split(",")):
        parser.error(f"probe tasks must not be trained on: {', '.join(overlap)}")
    probes = [suite[name].load() for name in args.probes.split(",")]
    switched = (
        [json.loads(x) for x in Path(args.switching).read_text().splitlines() if x.strip()]
        if Path(args.switching).exists()
        else []
    )
    plan = [(t, m, None) for t in tasks for m in args.methods.split(",")]
    for x in switched:  # probed by the switching benchmark itself: taken as they are
        name = f"{x['start']} → {x['to']} at {x['step']}" if x["kind"] == "run" else None
        if name and "forgetting" in x and not any(y["task"] == x["task"] and y["name"] == name for y in lines):
            line = {"name": name, **x, "peft_only": "full_finetuning" not in (x["start"], x["to"])}
            with out.open("a") as f:
                f.write(json.dumps(line) + "\n")
            lines.append(line)
    plan += [
        (
            x["task"],
            x["start"],
            {
                "step": x["step"],
                "alternative": x["to"],
                "hyperparameters": x["switches"][0]["hyperparameters"] if x["switches"] else {},
            },
        )
        for x in switched
        if x["kind"] == "run" and "forgetting" not in x
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    for task, method, decision in plan:
        name = method if decision is None else f"{method} → {decision['alternative']} at {decision['step']}"
        if any(x["task"] == task and x["name"] == name for x in lines):
            continue
        line = {"name": name, **run_switch(task, method, decision, args.suite, callbacks=[LinearProbe(probes)])}
        line["peft_only"] = "full_finetuning" not in (method, decision and decision["alternative"])
        with out.open("a") as f:
            f.write(json.dumps(line) + "\n")
        lines.append(line)
        print(
            f"{task}: {name}: accuracy {line['accuracy']:.4f}, probe drop {line['forgetting']['drop']:+.2f} "
            f"points ({line['wall_s']} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
