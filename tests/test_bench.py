"""metapeft bench and report on a tiny real design: 2 tasks × 2 methods × 2 Sobol configs, a few steps each."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import EXAMPLE, REPO, run_cli, write_jsonl

from metapeft.bench import Design, Pass, expand, run_bench
from metapeft.experience import ExperienceStore

DESIGN = {
    "name": "tiny",
    "methods": ["lora", "head_only"],
    "passes": [{"sizes": [24], "config": "sobol", "repeats": 2}],
    "fixed": {"max_steps": 3, "batch_size": 8},
    "eval_size": 20,
    "eval_points": 1,
    "pool_size": 60,
}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Two real tasks: two disjoint slices of the bundled sst2-mini."""
    root = tmp_path_factory.mktemp("suite")
    lines = [json.loads(line) for line in (EXAMPLE / "train.jsonl").read_text().splitlines()]
    manifest = []
    for i, name in enumerate(["sst2_a", "sst2_b"]):
        write_jsonl(root / name / "train.jsonl", lines[i * 200 : i * 200 + 150])
        write_jsonl(root / name / "test.jsonl", lines[i * 200 + 150 : i * 200 + 200])
        manifest.append({"name": name, "domain": "movie reviews", "task_type": "single"})
    (root / "MANIFEST.json").write_text(json.dumps(manifest))
    (root / "design.json").write_text(json.dumps(DESIGN))
    return root


def _finished_keys(url: str) -> Counter:
    return Counter(r.tags["design_key"] for r in ExperienceStore(url).query(status="finished"))


def _bench_command(suite, url: str) -> list[str]:
    """``metapeft bench`` on the test suite's design into ``url``, as a user's process (add ``--workers``)."""
    return [
        sys.executable,
        "-c",
        "from metapeft.cli import run; run()",
        "bench",
        str(suite),
        "--design",
        str(suite / "design.json"),
        "--storage",
        url,
    ]


def test_design_expands_deterministically(suite):
    design = Design.load(suite / "design.json")
    runs = expand(design, ["sst2_a", "sst2_b"])
    assert len(runs) == 8 and len({r.key for r in runs}) == 8
    assert [r.hyperparameters for r in runs] == [r.hyperparameters for r in expand(design, ["sst2_a", "sst2_b"])]
    lrs = {r.hyperparameters["learning_rate"] for r in runs if r.method == "lora"}
    assert len(lrs) == 4  # a space-filling draw per (task, config), not the defaults


def test_training_seeds_and_pass_budgets_get_keys_of_their_own(suite):
    design = Design(
        name="d",
        methods=["lora", "ia3"],
        passes=[
            {"sizes": [24], "config": "defaults", "train_seeds": [0, 1], "methods": ["lora"]},
            {"sizes": [24], "config": "defaults", "fixed": {"max_steps": 12}, "eval_points": 3, "methods": ["lora"]},
        ],
    )
    design.passes = [Pass(**p) for p in design.passes]
    runs = expand(design, ["sst2_a"])  # a pass's methods: only LoRA, of the design's two
    assert [r.key for r in runs] == [
        "d/sst2_a/24/lora/default/0",
        "d/sst2_a/24/lora/default/0t1",
        "d/sst2_a/24/lora/default-max_steps12/0",
    ]
    assert [(r.seed, r.train_seed, r.eval_points, r.hyperparameters["max_steps"]) for r in runs] == [
        (0, 0, 4, 80),
        (0, 1, 4, 80),
        (0, 0, 3, 12),
    ]


def test_the_scoring_pool_holds_no_row_that_a_protocol_sample_trains_on():
    from metapeft.bench import scoring_pool
    from metapeft.tasks import Split, Task

    labels = [i % 3 for i in range(3000)]
    task = Task("t", ["a", "b", "c"], Split([f"text {i}" for i in range(3000)], labels), Split(["x"], [0]))
    pool, pool_id = scoring_pool(task, 1024, 0, cap=5000)
    texts = set(pool.texts)
    for size in (64, 256, 1024):
        for seed in (0, 1):
            assert not texts & set(task.subsample(size, seed).train.texts)
    assert 1000 < len(pool) < 3000 - 1024
    assert scoring_pool(task, 256, 1, cap=5000)[1] == pool_id  # the same rows for every protocol run of the task
    capped, capped_id = scoring_pool(task, 1024, 0, cap=500)
    assert len(capped) == 500 and set(capped.texts) <= texts and capped_id != pool_id
    assert scoring_pool(task, 512, 3, cap=5000)[1] != pool_id  # a sample outside the protocol shrinks its pool


@pytest.mark.parametrize(
    "change, message",
    [
        ({"eval_points": 0}, "eval_points must be"),
        ({"fixed": {"max_stepz": 3}}, "unknown hyperparameters: max_stepz"),
        ({"passes": [{"sizes": [24], "config": "sobolx"}]}, "needs config 'defaults' or 'sobol'"),
        ({"methods": ["lorax"]}, "unknown method 'lorax'"),
        (
            {"passes": [{"sizes": [24], "fixed": {"stepz": 3}}]},
            "pass 0's 'fixed' names unknown hyperparameters: stepz",
        ),
        ({"pool_size": -1}, "pool_size must be"),
        ({"passes": [{"sizes": [24], "methods": ["full_finetuning"]}]}, "subset of the design's methods"),
    ],
)
def test_bad_designs_are_refused(tmp_path, change, message):
    from metapeft._errors import MetapeftError

    (tmp_path / "d.json").write_text(json.dumps({**DESIGN, **change}))
    with pytest.raises(MetapeftError, match=message):
        Design.load(tmp_path / "d.json")


def test_a_design_naming_tasks_the_suite_lacks_is_refused_naming_its_file(tmp_path):
    from metapeft._errors import MetapeftError

    path = tmp_path / "d.json"
    path.write_text(
        json.dumps({**DESIGN, "passes": [{"sizes": [24], "config": "defaults", "tasks": ["sst2_a", "nope"]}]})
    )
    with pytest.raises(MetapeftError, match=f"^{re.escape(str(path))} names tasks the suite does not have: nope"):
        expand(Design.load(path), ["sst2_a", "sst2_b"])


@pytest.fixture(scope="module")
def bench_store(suite, tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('bench') / 'b.db'}"
    summary = run_bench(str(suite), str(suite / "design.json"), url, workers=2, time_budget=None)
    return url, summary


def test_two_workers_do_every_run_once(bench_store):
    url, summary = bench_store
    assert summary["done"] == 8 and summary["failed"] == 0
    records = ExperienceStore(url).query(status="finished")
    assert all(0 < r.metrics["cpu_share"] < 1.5 for r in records)  # each run says how much of its cores it got
    assert summary["contended"] == sum(r.metrics["cpu_share"] < 0.8 for r in records)
    keys = _finished_keys(url)
    assert len(keys) == 8 and set(keys.values()) == {1}
    record = ExperienceStore(url).query(status="finished")[0]
    assert record.profile["dataset_size"] == 24 and record.tags["train_size"] == 24 and len(record.curve) == 1


def test_bench_runs_keep_per_example_outcomes(bench_store):
    from metapeft.experience import unpack_outcomes

    url, _ = bench_store
    records = ExperienceStore(url).query(status="finished")
    for r in records:
        test = unpack_outcomes(r.metrics["outcomes"]["test"])
        assert len(test) == r.metrics["eval_examples"] == 20 and test.mean() == pytest.approx(
            r.metrics["accuracy"], abs=1e-5
        )
        # 150 training rows: the protocol's 256- and 1,024-example samples are the whole file, so no row is free
        assert "pool" not in r.metrics["outcomes"] and "pool_accuracy" not in r.metrics
    assert len({r.tags["pool_id"] for r in records if r.tags["suite_task"] == "sst2_a"}) == 1

    # paired tests read them through one helper, which refuses runs scored on different rows
    from metapeft.experience import paired_outcomes

    same = [r for r in records if r.tags["suite_task"] == "sst2_a"]
    correct = paired_outcomes(same)
    assert correct.shape == (len(same), 20) and correct.mean(1) == pytest.approx(
        [r.metrics["accuracy"] for r in same], abs=1e-5
    )
    other = next(r for r in records if r.metrics["outcomes"]["test_rows"] != same[0].metrics["outcomes"]["test_rows"])
    assert paired_outcomes([same[0], other]) is None


@pytest.mark.slow  # several minutes on 2 cores: run by .ci/run's second step
def test_killed_bench_resumes_without_loss_or_duplicates(suite, tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    args = _bench_command(suite, url)
    proc = subprocess.Popen(
        args + ["--workers", "2"],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store = ExperienceStore(url)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and store.count(status="finished") < 2:
            time.sleep(0.5)
        assert store.count(status="finished") >= 2
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the bench and its workers, mid-run
        proc.wait(30)
    done_before = set(_finished_keys(url))
    assert len(done_before) < 8, "the bench finished before it could be killed"

    # Restart as two separate bench processes sharing the SQLite store.
    procs = [
        subprocess.Popen(
            args + ["--workers", "1", "--json"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        for _ in range(2)
    ]
    for p in procs:
        p.wait(600)
        assert p.returncode == 0
    keys = _finished_keys(url)
    assert len(keys) == 8 and set(keys.values()) == {1}, keys  # nothing lost, nothing run twice
    assert done_before <= set(keys)
    statuses = Counter(r.status for r in ExperienceStore(url).query())
    assert statuses["running"] == 0 and statuses["finished"] == 8  # runs cut by the kill are marked interrupted


def test_ctrl_c_stops_the_bench_without_a_traceback_and_loses_nothing(suite, tmp_path):
    """Ctrl-C (SIGINT to the whole process group, pressed twice as impatient users do) ends the bench with exit code
    130 and no traceback; a run it cut is marked interrupted, not left running."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    args = _bench_command(suite, url)
    proc = subprocess.Popen(
        args + ["--workers", "1"],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = ExperienceStore(url)
    deadline = time.time() + 300
    while time.time() < deadline and store.count(status="finished") < 1 and proc.poll() is None:
        time.sleep(0.2)
    for _ in range(2):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in out + err and "Error" not in out + err
    assert err.rstrip().endswith("interrupted"), err  # the last word is why it stopped, not the progress bar
    statuses = Counter(r.status for r in store.query())
    assert statuses["running"] == 0 and 1 <= statuses["finished"] < 8, statuses


def test_runs_one_by_one_as_a_scheduler_fans_them_out(suite, bench_store, tmp_path):
    """pending_keys + run_one: what an Airflow mapped task does with each run of a design."""
    from metapeft import MetapeftError
    from metapeft.bench import pending_keys, run_one

    url, _ = bench_store
    design = str(suite / "design.json")
    assert pending_keys(str(suite), design, url) == []
    first = expand(Design.load(design), ["sst2_a", "sst2_b"])[0].key
    assert run_one(str(suite), design, url, first) == "finished"
    fresh = f"sqlite:///{tmp_path / 'one.db'}"
    keys = pending_keys(str(suite), design, fresh)
    assert len(keys) == 8 and keys[0] == first
    head_only = next(k for k in keys if "/head_only/" in k)
    assert run_one(str(suite), design, fresh, head_only) == "done"
    assert len(pending_keys(str(suite), design, fresh)) == 7 and _finished_keys(fresh) == Counter({head_only: 1})
    with pytest.raises(MetapeftError, match="is not a run of design 'tiny'"):
        run_one(str(suite), design, fresh, "tiny/nope")


def test_a_run_that_cannot_start_is_recorded_as_failed(suite, tmp_path):
    """A broken task file fails its runs before training starts; they land in the store as failed, not fatal."""
    import shutil

    broken = tmp_path / "suite"
    shutil.copytree(suite, broken)
    with open(broken / "sst2_b" / "train.jsonl", "a") as f:
        f.write('{"text": "unterminated\n')
    design = {**DESIGN, "methods": ["head_only"], "passes": [{"sizes": [24], "config": "defaults"}]}
    (broken / "design.json").write_text(json.dumps(design))
    url = f"sqlite:///{tmp_path / 'f.db'}"
    summary = run_bench(str(broken), str(broken / "design.json"), url, workers=1, time_budget=None)
    assert summary["done"] == 1 and summary["failed"] == 1
    (failed,) = ExperienceStore(url).query(status="failed")
    assert failed.tags["suite_task"] == "sst2_b" and "not valid JSON" in failed.error


def test_report_renders_json_and_png(bench_store, tmp_path):
    url, _ = bench_store
    proc = run_cli("report", "--store", url, "--no-prior", "--json", "--html", str(tmp_path / "html"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["runs"] == 8 and summary["tasks"] == 2 and summary["min_methods_per_task"] == 2
    for task in ("sst2_a", "sst2_b"):
        entry = summary["per_task"][task]
        assert entry["best_method"] in ("lora", "head_only") and 0 <= entry["best_accuracy"] <= 1
        assert entry["by_method"][entry["best_method"]]["gap"] == 0
    assert sum(summary["wins"].values()) == pytest.approx(summary["cells"])
    png = tmp_path / "html" / "wins.png"
    assert (
        png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        and (tmp_path / "html" / "index.html").stat().st_size > png.stat().st_size
    )


def test_report_leaves_cells_with_too_few_methods_out_of_comparisons():
    """A cell a bench has only begun (2 of 10 methods) must not win or lose: it is counted apart, and its task is
    still listed."""
    from metapeft.prior import PriorExperience
    from metapeft.report import analyse

    records = PriorExperience().records()
    before = analyse(records)
    cells: dict[str, set] = {}  # a cell is a (task, size, step budget, seed): its runs share task name, steps and seed
    for r in records:
        cells.setdefault(r.tags["suite_task"], set()).add((r.task_name, r.hyperparameters["max_steps"], r.seed or 0))
    task = sorted(cells)[0]  # of this task keep only two runs of one cell
    cell = sorted(cells[task])[0]
    begun = [r for r in records if (r.task_name, r.hyperparameters["max_steps"], r.seed or 0) == cell][:2]
    summary = analyse([r for r in records if r.tags["suite_task"] != task] + begun)
    assert summary["partial_cells"] == before["partial_cells"] + 1 and summary["cells"] == before["cells"] - len(
        cells[task]
    )
    assert sum(summary["wins"].values()) == pytest.approx(summary["cells"], abs=0.1)  # each share rounded to 0.01
    assert summary["per_task"][task]["best_method"] in {r.method for r in begun}


def test_report_without_runs_is_a_clear_error(tmp_path):
    proc = run_cli("report", "--store", f"sqlite:///{tmp_path / 'e.db'}", "--no-prior")
    assert proc.returncode == 2 and "no finished runs" in proc.stderr and "Traceback" not in proc.stderr


def test_prior_packaging_is_read_only_apart_and_switchable(bench_store, tmp_path, monkeypatch):
    from metapeft._errors import StoreError
    from metapeft.prior import PriorExperience, experiences, write_prior

    url, _ = bench_store
    path = tmp_path / "prior.jsonl.gz"
    assert write_prior(ExperienceStore(url), ["other"], path) == 0  # only the named designs' runs
    assert write_prior(ExperienceStore(url), ["other", "tiny"], path) == 8
    first = path.read_bytes()
    write_prior(ExperienceStore(url), "tiny", path)
    assert path.read_bytes() == first  # same runs, same bytes: the committed prior is reproducible
    prior = PriorExperience(path)
    assert len(prior.records()) == 8 and {r.source for r in prior.records()} == {"prior"}
    with pytest.raises(StoreError, match="read-only"):
        prior.add(prior.records()[0])

    own = ExperienceStore(f"sqlite:///{tmp_path / 'own.db'}")
    monkeypatch.setattr("metapeft.prior.EXPERIENCES_PATH", path)
    monkeypatch.setattr(PriorExperience.__init__, "__defaults__", (path,))
    assert len(experiences(own)) == 8 and len(experiences(own, include_prior=False)) == 0
    monkeypatch.setenv("METAPEFT_PRIOR", "0")
    assert experiences(own) == []
    assert own.count() == 0  # the prior never lands in the user's store


def test_shipped_prior_is_real_suite_experience():
    from metapeft.prior import PriorExperience

    records = PriorExperience().records()
    assert records, "the package ships no prior"
    designs = {r.tags["design"] for r in records}
    assert all(r.source == "prior" for r in records) and designs == {"prior-v1", "curves-v1", "selection-v1"}
    finished = [r for r in records if r.status == "finished"]
    assert finished and all(
        0 <= r.metrics["accuracy"] <= 1 and len(r.curve) >= 4 and r.profile["dataset_size"] in (64, 256, 1024)
        for r in finished
    )
    # the learning-curve passes: two budgets, a curve point every 40 steps
    assert {r.hyperparameters["max_steps"] for r in finished} == {80, 320}
    assert all(len(r.curve) == 8 for r in finished if r.hyperparameters["max_steps"] == 320)


def test_report_cells_are_the_task_instances_the_selector_compares():
    """A run of 320 steps and one of 80 on the same data are different contests (the slow learners gain 7-8 points
    from 80 to 320 steps): the report's cells are the experience's task instances, data and step budget, one per
    training seed (a replicate on the same sample is another cell of the same instance)."""
    from metapeft.experience import cell_key
    from metapeft.prior import PriorExperience
    from metapeft.report import analyse

    records = [r for r in PriorExperience().records() if r.status == "finished"]
    budgets = {r.hyperparameters["max_steps"] for r in records}
    assert len(budgets) > 1 and analyse(records)["cells"] == len({(cell_key(r), r.seed) for r in records})


def test_report_counts_methods_within_the_evaluations_noise_of_the_best():
    """A gap that sampling noise explains is no evidence: with few test examples every method is within noise of
    its cell's best, with very many only the best is."""
    import dataclasses

    from metapeft.prior import PriorExperience
    from metapeft.report import analyse

    records = [r for r in PriorExperience().records() if r.status == "finished"]

    def on(n: int) -> dict:
        return analyse([dataclasses.replace(r, metrics={**r.metrics, "eval_examples": n}) for r in records])[
            "variation"
        ]

    few, many, real = on(4), on(10**8), analyse(records)["variation"]
    assert few["single_best_within_noise_share"] == 1.0 and few["methods_within_noise_of_best"] > 9
    assert many["methods_within_noise_of_best"] < 1.5  # exact ties (e.g. methods stuck at the majority class) remain
    assert (
        many["methods_within_noise_of_best"]
        < real["methods_within_noise_of_best"]
        < few["methods_within_noise_of_best"]
    )


def test_report_noise_prices_choosing_by_another_seeds_winner():
    """Two seeds of one task that disagree on the winner: each seed's winner, chosen in the other seed's cell, loses
    that cell's gap — the regret left by noise alone."""
    import pandas as pd

    from metapeft.report._analysis import noise

    cells = pd.DataFrame(
        {
            "task": "t",
            "size": 64,
            "steps": 80,
            "seed": [0, 0, 1, 1],
            "method": ["a", "b", "a", "b"],
            "score": [0.9, 0.8, 0.80, 0.85],
        }
    )
    n = noise(cells)
    assert n["task_sizes"] == 1 and n["winner_agreement"] == 0.0
    assert n["replicate_regret"] == pytest.approx((0.05 + 0.10) / 2)
    assert noise(cells.assign(score=[0.9, 0.8, 0.95, 0.7]))["replicate_regret"] == 0.0
