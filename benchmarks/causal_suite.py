"""The causal-LM suite (issue 24): five small generation tasks made from shipped data, written to
``benchmarks/causal-suite/`` (a suite folder: ``MANIFEST.json`` beside one folder per task).

- ``sst2-gen``, ``trec6-gen``, ``snips-gen``: the pipeline's mini classification tasks (``pipeline/suite``),
  verbalised as ``metapeft`` verbalises any labelled task for a causal LM (prompt ``"<text>\\nLabel:"``,
  completion ``" <label>"``): exact match is the accuracy.
- ``emotion-next``, ``sst2-next``: continuation, the next word of a sentence: the prompt is a sentence of
  ``dair_emotion`` or ``sst2`` (``../shared/datasets``) up to its last word, the completion that word
  (``dair_emotion``'s last words are often the feeling: "im feeling a little more adventurous"). Exact match is
  next-word accuracy.

Each task keeps 300 training and 100 held-out rows (seeded). The bench over it runs on both backends from the
stories260K import::

    uv run metapeft model import-llama2c ../shared/models/stories260K -o .bench/s260k
    uv run python benchmarks/causal_suite.py                    # (re)writes the suite; the same bytes every time
    uv run metapeft bench benchmarks/causal-suite --design benchmarks/designs/causal-torch-v1.json \\
        --storage sqlite:///$PWD/.bench/causal.db
    uv run --extra mlx metapeft bench benchmarks/causal-suite --design benchmarks/designs/causal-mlx-v1.json \\
        --storage sqlite:///$PWD/.bench/causal.db
    uv run metapeft experience export benchmarks/results/causal-v1.jsonl.gz --store sqlite:///$PWD/.bench/causal.db
    uv run python benchmarks/causal_suite.py --summary          # per backend and method, from that export
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
from collections import defaultdict
from pathlib import Path

from metapeft.tasks import load_task, verbalise

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "causal-suite"
SHARED = ROOT.parent / "shared" / "datasets"
N_TRAIN, N_TEST = 300, 100


def _write(name: str, train: list[tuple[str, str]], test: list[tuple[str, str]], meta: dict) -> dict:
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("test", test)):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for prompt, completion in rows:
                f.write(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False) + "\n")
    return {"name": name, "path": name, "type": "causal_lm", "train_size": len(train), "test_size": len(test), **meta}


def _next_word(texts: list[str], n: int, seed: int) -> list[tuple[str, str]]:
    """(sentence up to its last word, " " + that word) for ``n`` sentences with at least 4 words, drawn at random."""
    rows = []
    for text in texts:
        match = re.match(r"^(.*\S)\s+([a-z]+)\W*$", text.strip())
        if match and len(match.group(1).split()) >= 3:
            rows.append((match.group(1), " " + match.group(2)))
    random.Random(seed).shuffle(rows)
    return rows[:n]


def _texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def summary(path: Path) -> None:
    """Per backend and method over the suite's finished runs: runs, mean held-out loss before → after, mean exact
    match, median step time; and per task and backend the best run."""
    from metapeft.experience import read_jsonl

    runs = [r for r in read_jsonl(path) if r.status == "finished"]
    cells = defaultdict(list)
    for r in runs:
        setting = "defaults" if r.tags.get("config_id") == "default" else "random"
        cells[(setting, r.environment.get("backend"), r.method)].append(r.metrics)
    print("| settings | backend | method | runs | held-out loss before → after | exact match | median step (ms) |")
    print("|---|---|---|---|---|---|---|")
    for (setting, backend, method), ms in sorted(cells.items()):
        mean = lambda k: statistics.fmean(m[k] for m in ms)  # noqa: E731
        step = 1000 * statistics.median(m["step_time_s"] for m in ms)
        loss = f"{mean('initial_loss'):.2f} → {mean('loss'):.2f}"
        print(f"| {setting} | {backend} | {method} | {len(ms)} | {loss} | {mean('accuracy'):.3f} | {step:.0f} |")
    best = {}
    for r in runs:
        key = (r.task_name, r.environment.get("backend"))
        if key not in best or r.metrics["accuracy"] > best[key].metrics["accuracy"]:
            best[key] = r
    print()
    print("| task | backend | best method | exact match | loss |")
    print("|---|---|---|---|---|")
    for (task, backend), r in sorted(best.items()):
        print(f"| {task} | {backend} | {r.method} | {r.metrics['accuracy']:.3f} | {r.metrics['loss']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    export = ROOT / "benchmarks" / "results" / "causal-v1.jsonl.gz"
    parser.add_argument(
        "--summary", nargs="?", const=export, type=Path, help="summarise an export of the suite's bench"
    )
    args = parser.parse_args()
    if args.summary:
        summary(args.summary)
        return
    entries = []
    for name in ("sst2", "trec6", "snips"):
        task = verbalise(load_task(ROOT / "pipeline" / "suite" / f"{name}-mini"))
        source = f"pipeline/suite/{name}-mini, verbalised"
        entries.append(
            _write(f"{name}-gen", task.train[:N_TRAIN], task.test[:N_TEST], {"source": source, "labels": task.labels})
        )
    for name, task in (("emotion", "dair_emotion"), ("sst2", "sst2")):
        train = _next_word(_texts(SHARED / task / "train.jsonl"), N_TRAIN, 0)
        test = _next_word(_texts(SHARED / task / "test.jsonl"), N_TEST, 1)
        entries.append(
            _write(f"{name}-next", train, test, {"source": f"shared/datasets/{task}: next word of a sentence"})
        )
    (OUT / "MANIFEST.json").write_text(json.dumps(entries, indent=1) + "\n")
    print(f"wrote {len(entries)} tasks to {OUT}")


if __name__ == "__main__":
    main()
