"""Load and fault tests of `metapeft serve` on loopback (issue 20): latency under load, bad input, concurrent writes,
and a SIGKILL during writes.

1. 2,000 `POST /v1/recommend` at concurrency 16 after 20 warm-up requests, twice: new tasks (each request a prior
   task's profile under a fingerprint the server has not seen, so every ranking is computed) and repeated questions
   (40 tasks asked in turn: a served version remembers its answers): p50 / p95 / max latency, throughput, errors.
2. 200 malformed or oversized requests (not JSON, wrong types, missing fields, unknown methods, 3 MiB bodies,
   uploads over the row limit): how many got a 4xx, and any other status.
3. 4 clients each posting the same 500 experiences (in batches of 50) at once: every record must be stored exactly
   once.
4. A client posting batches while the server is killed with SIGKILL; after a restart the store passes SQLite's
   integrity check and holds every batch that was acknowledged, whole (no record half-written).

Everything runs against a fresh METAPEFT_HOME in a temporary folder; the server binds to 127.0.0.1 only.

    uv run python benchmarks/serve_load.py                # all four; prints a JSON summary
    uv run python benchmarks/serve_load.py --requests 200 # a quick run
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TOKEN = "load-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(
    url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 60
) -> tuple[int, bytes, float]:
    started = time.perf_counter()
    req = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), time.perf_counter() - started
    except urllib.error.HTTPError as e:
        return e.code, e.read(), time.perf_counter() - started
    except OSError:
        return -1, b"", time.perf_counter() - started


def start_server(port: int, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from metapeft.cli import run; run()", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        if request(f"http://127.0.0.1:{port}/health", timeout=2)[0] == 200:
            return proc
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.5)
    raise SystemExit("the server did not answer within 5 minutes")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def load(base: str, bodies: list[bytes], concurrency: int) -> dict:
    """POST every body to /v1/recommend from ``concurrency`` clients, each over a connection of its own that it
    keeps open (as HTTP clients do): latency percentiles, throughput, errors."""
    local = threading.local()
    host, port = base.removeprefix("http://").split(":")

    def post(body: bytes) -> tuple[int, bytes, float]:
        started = time.perf_counter()
        try:
            if getattr(local, "connection", None) is None:
                local.connection = http.client.HTTPConnection(host, int(port), timeout=60)
            local.connection.request("POST", "/v1/recommend", body, {"Content-Type": "application/json"})
            answer = local.connection.getresponse()
            return answer.status, answer.read(), time.perf_counter() - started
        except (OSError, http.client.HTTPException):
            local.connection = None
            return -1, b"", time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(post, bodies))
    wall = time.perf_counter() - started
    latencies = [r[2] for r in results]
    return {
        "requests": len(bodies),
        "concurrency": concurrency,
        "errors": sum(r[0] != 200 for r in results),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p95_ms": round(1000 * percentile(latencies, 0.95), 1),
        "max_ms": round(1000 * max(latencies), 1),
        "throughput_rps": round(len(bodies) / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", default=None, help="also write the JSON summary here")
    parser.add_argument("--skip-kill", action="store_true", help="leave out the SIGKILL test (4)")
    args = parser.parse_args()

    from metapeft.prior import PriorExperience

    records = PriorExperience().records()
    profile = next(r.profile for r in records if r.task_name == "sst2@1024")
    home = tempfile.mkdtemp(prefix="metapeft-load-")
    env = {**os.environ, "METAPEFT_HOME": home, "METAPEFT_API_TOKEN": TOKEN}
    env.pop("METAPEFT_STORE", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    summary: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version()}
    server = start_server(port, env)
    try:
        body = json.dumps({"profile": profile}).encode()
        for _ in range(20):
            request(f"{base}/v1/recommend", body)
        # new tasks: every request a profile the server has not ranked (the prior's task profiles, each with a
        # fingerprint of its own), so that every answer is computed
        pool_profiles = list({r.task_name: r.profile for r in records}.values())
        fresh = [
            json.dumps({"profile": {**pool_profiles[i % len(pool_profiles)], "fingerprint": f"load-{i}"}}).encode()
            for i in range(args.requests)
        ]
        summary["recommend_new_tasks"] = load(base, fresh, args.concurrency)
        # repeated questions: 40 tasks asked again and again (a version's answer is remembered)
        repeated = [json.dumps({"profile": pool_profiles[i % 40]}).encode() for i in range(args.requests)]
        for b in repeated[:40]:
            request(f"{base}/v1/recommend", b)
        summary["recommend_repeated"] = load(base, repeated, args.concurrency)

        bad = [
            b"not json",
            b"[]",
            b"{}",
            json.dumps({"profile": {"task_name": 1}}).encode(),
            json.dumps({"profile": {**profile, "dataset_size": "x"}}).encode(),
            json.dumps({"profile": profile, "methods": ["nope"]}).encode(),
            json.dumps({"profile": profile, "max_memory_mb": -5}).encode(),
            json.dumps({"rows": [{"text": "a", "label": "b"}] * 6000}).encode(),
            b"x" * (3 * 1024 * 1024),
            json.dumps({"rows": "no"}).encode(),
        ]
        statuses = [request(f"{base}/v1/recommend", bad[i % len(bad)])[0] for i in range(200)]
        summary["malformed"] = {
            "requests": 200,
            "4xx": sum(400 <= s < 500 for s in statuses),
            "other": sorted({s for s in statuses if not 400 <= s < 500}),
        }

        posted = [r.as_dict() for r in records if r.status == "finished"][:500]
        auth = {"Authorization": f"Bearer {TOKEN}"}

        def client(_) -> int:
            stored = 0
            for i in range(0, len(posted), 50):
                status, answer, _ = request(
                    f"{base}/v1/experiences", json.dumps({"experiences": posted[i : i + 50]}).encode(), auth
                )
                stored += json.loads(answer)["stored"] if status == 201 else 0
            return stored

        with ThreadPoolExecutor(4) as pool:
            stored = list(pool.map(client, range(4)))
        from metapeft.experience import ExperienceStore

        store = ExperienceStore(f"sqlite:///{Path(home) / 'experience.db'}")
        ids = [r.id for r in store.iter()]
        summary["concurrent_writes"] = {
            "clients": 4,
            "records": len(posted),
            "stored_by_clients": stored,
            "in_store": len(ids),
            "distinct": len(set(ids)),
            "exactly_once": len(ids) == len(set(ids)) == len(posted),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)

    if args.skip_kill:
        print(json.dumps(summary, indent=2))
        return
    # 4. SIGKILL during writes
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(port, env)
    fresh = []
    for r in records[500:1000]:
        d = r.as_dict()
        d["id"] = "k" + d["id"][1:]
        if d["status"] == "finished":
            fresh.append(d)
    acknowledged: list[str] = []

    def writer() -> None:  # posts batches back to back until the server is gone
        for i in range(0, len(fresh), 10):
            status, answer, _ = request(
                f"{base}/v1/experiences",
                json.dumps({"experiences": fresh[i : i + 10]}).encode(),
                {"Authorization": f"Bearer {TOKEN}"},
                timeout=10,
            )
            if status != 201:
                return
            acknowledged.extend(json.loads(answer)["ids"])

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(1.5)  # mid-stream: most likely inside a request, often inside a transaction
    server.send_signal(signal.SIGKILL)
    thread.join()
    server.wait(timeout=30)
    server = start_server(port, env)
    try:
        import sqlite3

        con = sqlite3.connect(Path(home) / "experience.db")
        check = con.execute("PRAGMA integrity_check").fetchone()[0]
        con.close()
        from metapeft.experience import ExperienceStore

        store = ExperienceStore(f"sqlite:///{Path(home) / 'experience.db'}")
        in_store = {r.id: r for r in store.iter()}
        whole = all(in_store[i].metrics.get("accuracy") is not None for i in acknowledged if i in in_store)
        summary["sigkill"] = {
            "acknowledged": len(acknowledged),
            "acknowledged_in_store": sum(i in in_store for i in acknowledged),
            "integrity": check,
            "records_whole": whole,
            "health_after_restart": request(f"{base}/health")[0],
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
