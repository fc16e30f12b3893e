"""Running a design: worker processes claim runs in the store, train them, and record the experience.

Claims live in a ``bench_claims`` table of the experience store's database. A worker claims a run by
inserting its key (primary key: a second claimant gets an integrity error and moves on), so workers on one
machine or many machines sharing a PostgreSQL store never do a run twice. A run whose finished experience
exists is skipped; a claim whose process died (same host) is released on the next start, so a killed bench
loses at most the runs in flight.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa

from .._errors import MetapeftError
from ..experience import Experience, ExperienceStore, measured_time, process_gone
from ._design import Design, RunSpec, expand, scoring_pool

_metadata = sa.MetaData()
claims = sa.Table(
    "bench_claims",
    _metadata,
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("host", sa.String(256), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # claimed | done | failed
)


def _engine(store: ExperienceStore):
    for attempt in range(5):  # two fresh workers may race to create the table
        try:
            _metadata.create_all(store.engine)
            break
        except sa.exc.OperationalError:
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    return store.engine


def release_stale_claims(store: ExperienceStore, retry_failed: bool = False) -> int:
    """Drop claims of dead processes on this host that never completed (and, with ``retry_failed``, claims of
    runs that failed, so that they run again)."""
    engine, host = _engine(store), socket.gethostname()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(claims.c.key, claims.c.pid).where(claims.c.state == "claimed", claims.c.host == host)
        ).all()
        failed = (
            conn.execute(sa.select(claims.c.key).where(claims.c.state == "failed")).scalars().all()
            if retry_failed
            else []
        )
    stale = [r.key for r in rows if process_gone(r.pid)] + list(failed)
    if stale:
        with engine.begin() as conn:
            conn.execute(claims.delete().where(claims.c.key.in_(stale)))
    return len(stale)


def finished_keys(store: ExperienceStore, design_name: str | None = None) -> set[str]:
    """Design keys of finished runs."""
    return {k for k in store.tag_values("design_key") if design_name is None or k.startswith(design_name + "/")}


def progress_counts(store: ExperienceStore, keys: set[str]) -> dict[str, int]:
    """done = finished records (the truth, whatever the claims say); failed/running from the claims."""
    engine = _engine(store)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(claims.c.key, claims.c.state).where(claims.c.state != "done")).all()
    done = finished_keys(store) & keys
    counts = {"done": len(done), "failed": 0, "running": 0}
    for key, state in rows:
        if key in keys and key not in done:
            counts[{"claimed": "running"}.get(state, state)] += 1
    return counts


def _try_claim(engine, key: str) -> bool:
    try:
        with engine.begin() as conn:
            conn.execute(
                claims.insert().values(
                    key=key,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    claimed_at=datetime.now(timezone.utc),
                    state="claimed",
                )
            )
        return True
    except sa.exc.IntegrityError:
        return False


def _set_state(engine, key: str, state: str) -> None:
    with engine.begin() as conn:
        conn.execute(claims.update().where(claims.c.key == key).values(state=state))


@dataclass
class WorkerArgs:
    suite: str
    design_path: str
    store_url: str
    threads: int
    time_budget: float | None
    parent_pid: int
    data_rev: str | None = None


def worker(args: WorkerArgs) -> int:
    """Claim and run design runs until none is left. Returns how many this worker ran."""
    try:
        return _work(args)
    except KeyboardInterrupt:  # Ctrl-C or terminate while not inside a run: nothing to clean up
        return 0


def _work(args: WorkerArgs) -> int:
    import torch

    from .._environment import interrupt_once, quiet_libraries
    from ..tasks import load_suite

    quiet_libraries()
    interrupt_once()  # terminate or Ctrl-C → KeyboardInterrupt → run marked interrupted, claim given back
    torch.set_num_threads(max(1, args.threads))
    design = Design.load(args.design_path)
    entries = {e.name: e for e in load_suite(args.suite, args.data_rev)}
    store = ExperienceStore(args.store_url)
    engine = _engine(store)
    runs = expand(design, list(entries))
    done = finished_keys(store, design.name)
    tasks, profiles = {}, {}
    ran = 0
    for spec in runs:
        if spec.key in done or os.getppid() != args.parent_pid:  # parent gone: stop claiming
            continue
        if not _try_claim(engine, spec.key):
            continue
        if spec.task not in tasks:
            tasks = {spec.task: entries[spec.task]}  # keep one full task in memory at a time
        try:
            ran += _run_claimed(spec, design, tasks, store, profiles, args.time_budget) == "done"
        except KeyboardInterrupt:
            return ran
    return ran


def _run_claimed(
    spec: RunSpec,
    design: Design,
    tasks: dict,
    store: ExperienceStore,
    profiles: dict,
    time_budget: float | None = None,
) -> str:
    """Train one claimed run and record it: "done" or "failed" (failures are data, not the end of a bench). On
    KeyboardInterrupt the claim is given back, so that a restart does the run, and the interrupt goes on.
    ``tasks`` maps the spec's task to its suite entry or to the loaded task (replaced by the latter)."""
    from ..backends import is_causal_model
    from ..tasks import SuiteEntry, Task, profile_task, verbalise
    from ..training import RunConfig, train

    engine = _engine(store)
    tags = {
        "design": design.name,
        "design_key": spec.key,
        "config_id": spec.config_id,
        "suite_task": spec.task,
        "train_size": spec.size,
    }
    train_seed = spec.seed if spec.train_seed is None else spec.train_seed
    try:
        if isinstance(tasks[spec.task], SuiteEntry):
            tasks[spec.task] = tasks[spec.task].load()
            if isinstance(tasks[spec.task], Task) and is_causal_model(
                design.model
            ):  # a causal LM takes labels as words
                tasks[spec.task] = verbalise(tasks[spec.task])
        task = tasks[spec.task].subsample(spec.size, seed=spec.seed)
        pool = None
        if design.pool_size:
            pool, tags["pool_id"] = scoring_pool(tasks[spec.task], spec.size, spec.seed, design.pool_size)
        if task.fingerprint not in profiles:
            profiles[task.fingerprint] = profile_task(task, design.model)
        hyperparameters = dict(spec.hyperparameters)
        if design.max_length_cap and not hyperparameters.get("max_length"):
            hyperparameters["max_length"] = min(profiles[task.fingerprint].sequence_length, design.max_length_cap)
        run = RunConfig(
            model=design.model,
            seed=train_seed,
            sample_seed=spec.seed,
            time_budget=time_budget,
            save=False,
            eval_size=design.eval_size,
            eval_points=spec.eval_points,
            final_eval_size=design.final_eval_size,
            track=False,
            tags=tags,
            backend=design.backend,
        )
        train(task, spec.method, hyperparameters, run, profile=profiles[task.fingerprint], store=store, pool=pool)
        _set_state(engine, spec.key, "done")
        return "done"
    except KeyboardInterrupt:
        with engine.begin() as conn:  # give the run back so that a restart does it
            conn.execute(claims.delete().where(claims.c.key == spec.key))
        raise
    except Exception as exc:  # failures are data, not the end of the bench
        if getattr(exc, "experience_id", None) is None:  # failed before train() recorded the run: record it here
            error = str(exc) if isinstance(exc, MetapeftError) else f"{type(exc).__name__}: {exc}"
            store.add(
                Experience(
                    task_name=spec.task,
                    method=spec.method,
                    model=design.model or "default",
                    hyperparameters=spec.hyperparameters,
                    status="failed",
                    error=error[:4000],
                    seed=train_seed,
                    tags=tags,
                )
            )
        _set_state(engine, spec.key, "failed")
        return "failed"


def pending_keys(suite: str, design_path: str, store_url: str) -> list[str]:
    """The design's runs over the suite that have no finished record yet, in execution order (what a scheduler such
    as Airflow fans out, one task per key, to :func:`run_one`)."""
    from ..tasks import load_suite

    design = Design.load(design_path)
    done = finished_keys(ExperienceStore(store_url), design.name)
    return [r.key for r in expand(design, [e.name for e in load_suite(suite)]) if r.key not in done]


def run_one(suite: str, design_path: str, store_url: str, key: str) -> str:
    """Run the design's run ``key`` into the store unless it is finished or claimed by another worker (on this or
    another machine sharing the store). Returns "done", "failed", "finished" (already on record) or "claimed".

    Raises:
        MetapeftError: ``key`` is not a run of the design over the suite.
    """
    from ..tasks import load_suite

    design = Design.load(design_path)
    entries = {e.name: e for e in load_suite(suite)}
    spec = next((r for r in expand(design, list(entries)) if r.key == key), None)
    if spec is None:
        raise MetapeftError(
            f"{key!r} is not a run of design {design.name!r} over {suite}; list its runs with bench.pending_keys"
        )
    store = ExperienceStore(store_url)
    if key in finished_keys(store, design.name):
        return "finished"
    release_stale_claims(store, retry_failed=False)
    if not _try_claim(_engine(store), key):
        return "claimed"
    return _run_claimed(spec, design, {spec.task: entries[spec.task]}, store, {})


def run_bench(
    suite: str,
    design_path: str,
    store_url: str,
    workers: int,
    time_budget: float | None,
    on_progress=None,
    retry_failed: bool = False,
    data_rev: str | None = None,
) -> dict:
    """Run (or resume) a design with ``workers`` processes; ``on_progress(counts, total)`` is called every ~2 s;
    ``data_rev`` reads the suite at that git revision of its DVC repository."""
    import multiprocessing as mp

    from ..tasks import load_suite

    design = Design.load(design_path)
    names = [
        e.name for e in load_suite(suite, data_rev)
    ]  # a revision is checked out here, once, before the workers start
    store = ExperienceStore(store_url)
    released = release_stale_claims(store, retry_failed)
    keys = {r.key for r in expand(design, names)}
    before = finished_keys(store) & keys  # design keys (a light query), not records
    # the cores this process may use (taskset, a container's cpuset), not the machine's
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // max(1, workers))
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=worker,
            args=(WorkerArgs(suite, design_path, store.url, threads, time_budget, os.getpid(), data_rev),),
            daemon=True,
        )
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            if on_progress is not None:
                on_progress(progress_counts(store, keys), len(keys))
            time.sleep(2)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + 60  # for the workers to mark their cut runs interrupted and give claims back
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
    counts = progress_counts(store, keys)
    if on_progress is not None:
        on_progress(counts, len(keys))
    made = (finished_keys(store) & keys) - before
    # runs timed with other work on their cores: their accuracy counts, their time is not learned from
    contended = sum(
        "cpu_share" in r.metrics and measured_time(r) is None
        for r in (store.iter(status="finished") if made else [])
        if r.tags.get("design_key") in made
    )
    return {
        "design": design.name,
        "total": len(keys),
        **counts,
        "released_stale_claims": released,
        "contended": contended,
    }
