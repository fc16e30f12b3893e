"""Does weighing collapse risk make better picks? ``metapeft evaluate``'s figures for the selection rule with and
without it, from one surrogate fit per held-out task.

The rule (``cautious_choice`` / ``rank_methods``) scores a candidate by (1 − P(fail))·(mean − ½ sd) +
P(fail)·chance, where P(fail) is the collapse-risk model's (``meta._risk``); without it, by mean − ½ sd. Both
variants share each fold's fit (the surrogate and its collapse-risk model), so their difference is the rule's alone.
Both constraints (every method, PEFT only) are scored; the result is written as JSON and summarised as a table.

    uv run python benchmarks/collapse_selection.py [--store sqlite:///$PWD/.bench/curves.db] --out result.json
"""

from __future__ import annotations

import argparse
import json
import time

from metapeft.experience import ExperienceStore
from metapeft.meta import Constraint, Selector, Surrogate, evaluate
from metapeft.meta._evaluate import SELECTORS
from metapeft.prior import experiences

_FITS: dict[frozenset, Surrogate] = {}


def _shared_fit(records) -> Surrogate:
    key = frozenset(r.id for r in records)
    if key not in _FITS:  # kept for the second constraint's pass too (40 fits: a few hundred MB)
        _FITS[key] = Surrogate().fit(records)
    return _FITS[key]


class Weighed(Selector):
    """metapeft's surrogate, its predictions carrying the collapse risk (the rule as shipped)."""

    def fit(self, records):
        self.model = _shared_fit(records)
        self.embedder = self.model.embedder  # evaluate reads the task embedding of the selector named metapeft
        return self

    def predict(self, profile, candidates, observed=None):
        return self.model.predict(profile, candidates, observed=observed)


class Plain(Weighed):
    """The same fit, its predictions without the collapse risk (the rule before)."""

    def predict(self, profile, candidates, observed=None):
        pred = super().predict(profile, candidates, observed)
        pred.fail = None
        return pred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="also read this store's finished runs")
    parser.add_argument("--out", required=True, help="JSON file for both evaluations")
    args = parser.parse_args()
    store = ExperienceStore(args.store) if args.store else None
    records = experiences(store, include_prior=True, include_own=store is not None)
    selectors = {
        "metapeft": Weighed,
        "metapeft_without_collapse_risk": Plain,
        **{k: v for k, v in SELECTORS.items() if k != "metapeft"},
    }
    out = {}
    for name, constraint in (("peft_only", Constraint(peft_only=True)), ("every_method", Constraint())):
        t0 = time.time()
        out[name] = evaluate(
            records,
            constraint=constraint,
            selectors=selectors,
            progress=lambda n, total, task: print(f"{name} [{n}/{total}] {task} {time.time() - t0:.0f}s", flush=True),
        )
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    summary(out)


def summary(out: dict) -> None:
    for name, result in out.items():
        print(f"\n{name}: {result['tasks']} tasks, {result['cells']} instances, {result['runs']} runs")
        print("selector | over LoRA defaults [90%] p won | over median | regret | cross-fitted | disasters | worst")
        for selector, s in result["selectors"].items():
            lora, median = s["paired"]["lora_defaults"]["all"], s["paired"]["median"]["all"]
            print(
                f"{selector} | {lora.get('mean_gain')} {lora.get('interval_90')} {lora.get('wilcoxon_p')} "
                f"{lora.get('win_rate')}"
                f" | {median.get('mean_gain')} | {s['mean_regret']} | {s.get('cross_fitted_regret')} | "
                f"{s['disaster_rate']} | {s['worst_cell_regret']} ({s['worst_cell']})"
            )


if __name__ == "__main__":
    main()
