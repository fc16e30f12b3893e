"""Latency of `metapeft recommend`: the CLI in a fresh process, and the Python API in a warm one.

Three CLI timings, each a new process as a user runs it: *first* (fits the meta-learner on the experience and
profiles the task: what the very first call costs), then *cold* (a new process with the fitted models and the
task profile cached in METAPEFT_HOME: what every later call costs). The API timing is `MetaPEFT.recommend` on a
loaded task in a process that has already answered once (median of 20).

    uv run python benchmarks/recommend_latency.py [--data example] [--repeats 3]

Run with Python's bytecode cache on (the default outside this sandbox): PYTHONDONTWRITEBYTECODE=1 makes every
process recompile torch and transformers and adds seconds to each start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def cli(data: str, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", "from metapeft.cli import run; run()", "recommend", data, "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    json.loads(proc.stdout)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="example")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="metapeft-latency-")
    env = {**os.environ, "METAPEFT_HOME": home}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    first = cli(args.data, env)
    cold = [cli(args.data, env) for _ in range(args.repeats)]

    os.environ["METAPEFT_HOME"] = home
    from metapeft.meta import MetaPEFT
    from metapeft.tasks import load_task

    meta, task = MetaPEFT(), load_task(args.data)
    meta.recommend(task)
    warm = []
    for _ in range(20):
        start = time.perf_counter()
        meta.recommend(task)
        warm.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "data": args.data,
                "experience_runs": len(meta.experiences()),
                "cli_first_s": round(first, 2),
                "cli_cold_s": round(statistics.median(cold), 2),
                "api_warm_ms": round(1000 * statistics.median(warm), 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
