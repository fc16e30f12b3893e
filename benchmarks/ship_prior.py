"""Refresh the shipped prior from the bench store: the committed prior's runs plus the bench designs' finished runs of
whole task instances (a task the bench is part-way through waits for the next refresh), packaged with
``metapeft.meta.ship_prior``, which also refits the model shipped beside it and its out-of-task predictions.

    uv run python benchmarks/ship_prior.py --store sqlite:///$PWD/.bench/curves.db [--dry-run]   # ~13 min on 1 core

Then regenerate the report (``metapeft report --no-own --html docs/prior-report``) and re-measure the selection
(``metapeft evaluate --no-own [--peft-only] --json``); docs/benchmark-protocol.md says what the prior holds.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from metapeft.experience import ExperienceStore, cell_key
from metapeft.meta import ship_prior
from metapeft.prior import PriorExperience

PRIOR_DESIGN = "prior-v1"  # the committed prior's own design: its runs come from the committed file
BENCH_DESIGNS = ("curves-v1", "selection-v1")


def contended(record) -> bool:
    """Whether a run was timed with other work on its cores, for runs made before the engine measured ``cpu_share``:
    curves-v1's 80-step runs at 1,024 examples ran two-thread workers beside other work on 2 cores (torch_threads 2,
    238 tokens/s where the prior's one-thread runs made 659); per step they took 2.66× the time of the same task
    instances' and methods' 320-step runs at one thread (71 runs, geometric mean), and two two-thread runs side by side
    measure 5× slower than one alone. Their accuracy stands; their time is not the method's cost."""
    return (
        record.tags.get("design") == "curves-v1"
        and record.metrics.get("steps") == 80
        and record.environment.get("torch_threads") == 2
        and "cpu_share" not in record.metrics
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="SQLAlchemy URL of the bench store holding the designs' runs.")
    parser.add_argument("--designs", default=",".join(BENCH_DESIGNS), help="Bench designs to add to prior-v1.")
    parser.add_argument(
        "--methods", type=int, default=10, help="Finished methods a task instance needs to count as whole."
    )
    parser.add_argument("--dry-run", action="store_true", help="Say what would ship; write nothing.")
    args = parser.parse_args()
    designs = [d for d in args.designs.split(",") if d]

    prior = [r for r in PriorExperience().records() if r.tags.get("design") == PRIOR_DESIGN]
    runs = [
        r
        for r in ExperienceStore(args.store).iter()
        if r.status in ("finished", "failed") and r.tags.get("design") in designs
    ]
    finished = {(r.tags["design"], cell_key(r), r.method) for r in runs if r.status == "finished"}
    methods = Counter((design, cell) for design, cell, _ in finished)  # finished methods per task instance
    whole = [r for r in runs if methods[(r.tags["design"], cell_key(r))] >= args.methods]
    for r in whole:
        if contended(r):
            r.tags["timing"] = "contended"  # meta's measured_time leaves their time out
    print(f"timed with other work on their cores: {sum(r.tags.get('timing') == 'contended' for r in whole)} runs")
    for design in designs:
        tasks = sorted({r.task_name for r in whole if r.tags["design"] == design})
        print(f"{design}: {sum(r.tags['design'] == design for r in whole)} runs, whole instances on {tasks}")
    left = sorted({r.task_name for r in runs} - {r.task_name for r in whole})
    print(f"{PRIOR_DESIGN}: {len(prior)} runs; left for the next refresh: {left or 'nothing'}")
    if args.dry_run:
        return
    with tempfile.TemporaryDirectory() as tmp:
        store = ExperienceStore(f"sqlite:///{Path(tmp) / 'ship.db'}")
        store.add_many(prior + whole)  # the bench store's runs as they are now (tags included), not as last shipped
        print(f"shipped {ship_prior(store, [PRIOR_DESIGN, *designs])} runs")


if __name__ == "__main__":
    main()
