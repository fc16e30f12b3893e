"""Which multi-objective acquisition the meta sampler should use: expected hypervolume improvement against ParEGO.

A simulation, to compare acquisitions under equal conditions with several seeds at no training cost (the real
check is ``search_real.py --objectives ...``). For each held-out task at 64 examples: the sampler's surrogate is
fitted on the prior without the task (leave-one-task-out) and warm-started as ``tune`` does; a proposed
configuration is answered by the surrogate fitted on the *whole* prior — a smooth stand-in for the task's truth,
informed by its real runs — plus 3 points of accuracy noise (the seed-to-seed spread measured in the prior). The
measure is the hypervolume of a search's 10 trials relative to all trials of all its searches on the task (losses
1 − accuracy, log time, log memory scaled to [0, 1]; reference 1.1), as in ``search_real.py``.

    uv run python benchmarks/search_acquisition.py [--tasks trec50,atis,...] [--seeds 4]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import optuna
from search_eval import hypervolume, losses

from metapeft.experience import task_group
from metapeft.meta import Candidate, MetaPEFT
from metapeft.search import MetaSampler, joint_space
from metapeft.search._space import to_config
from metapeft.search._tune import warm_start_configs

OBJECTIVES = ("accuracy", "train_time_s", "peak_memory_mb")


class ParEGO(MetaSampler):
    """The acquisition before: an augmented-Tchebycheff scalarisation of the predictions under a random weighting
    per trial, accuracy taken one sd optimistically, without regard to the trials' front."""

    def _scores(self, mean, sd, done):
        f = self._losses(mean[:, 0] + sd, mean[:, 1], mean[:, 2])
        lo, hi = f.min(0), f.max(0)
        return self._parego((f - lo) / np.where(hi - lo > 1e-12, hi - lo, 1.0))


SAMPLERS = {"ehvi": MetaSampler, "parego": ParEGO}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="trec50,atis,snips,tweet_emotion,financial_phrasebank")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    truth = MetaPEFT(include_own=False).fit()
    prior = truth.experiences()
    methods = sorted({r.method for r in prior})
    space, budget = joint_space(methods), {"max_steps": 80}
    table = {name: [] for name in SAMPLERS}
    for task in args.tasks.split(","):
        profile = next(r.profile for r in prior if r.task_name == f"{task}@64")
        meta = MetaPEFT(experiences=[r for r in prior if task_group(r) != task], include_own=False).fit()
        warm = warm_start_configs(meta, profile, methods, space, budget, 3)
        searches = {}
        for name, cls in SAMPLERS.items():
            for seed in range(args.seeds):
                noise = np.random.default_rng(100 + seed)  # the same noise draws for every sampler
                study = optuna.create_study(
                    directions=["maximize", "minimize", "minimize"],
                    sampler=cls(meta.surrogate, profile, methods, OBJECTIVES, budget=budget, seed=seed),
                )
                for params, _ in warm:
                    study.enqueue_trial(params)
                trials = []
                for _ in range(args.trials):
                    trial = study.ask(space)
                    method, hp = to_config(trial.params)
                    mean = truth.surrogate.predict(profile, [Candidate(method, {**hp, **budget})]).mean[0]
                    m = {
                        "method": method,
                        "accuracy": float(np.clip(mean[0] + 0.03 * noise.standard_normal(), 0, 1)),
                        "eval_examples": 1000,
                        "train_time_s": float(mean[1]),
                        "peak_memory_mb": float(mean[2]),
                    }
                    trial.set_user_attr("metrics", m)
                    trial.set_user_attr("hyperparameters", hp)
                    study.tell(trial, [m[o] for o in OBJECTIVES])
                    trials.append(m)
                searches[name, seed] = trials
        everything = [m for trials in searches.values() for m in trials]
        full = hypervolume(losses(everything, OBJECTIVES))
        for name in SAMPLERS:
            hv = [hypervolume(losses(searches[name, s], OBJECTIVES, everything)) / full for s in range(args.seeds)]
            head = [sum(m["method"] == "head_only" for m in searches[name, s]) for s in range(args.seeds)]
            best = [max(m["accuracy"] for m in searches[name, s]) for s in range(args.seeds)]
            table[name].append(np.mean(hv))
            print(
                f"{task:22s} {name:7s} hypervolume {np.mean(hv):.3f}  head-only trials {np.mean(head):.1f}  "
                f"best accuracy {np.mean(best):.3f}",
                flush=True,
            )
    for name, hv in table.items():
        print(f"mean over {len(hv)} tasks, {name}: hypervolume after {args.trials} trials {np.mean(hv):.3f}")


if __name__ == "__main__":
    main()
