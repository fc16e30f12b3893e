"""``metapeft serve``: the selector over HTTP (FastAPI), with Prometheus metrics.

Endpoints (OpenAPI docs at ``/docs``):

- ``POST /v1/recommend``: a task profile (as ``metapeft profile --json`` prints it) or a small dataset (rows of
  text/label, profiled on the server), with optional limits → the ranking of the ``@champion`` selector.
- ``GET /v1/similar?task=NAME`` and ``POST /v1/similar`` (a profile): the nearest past tasks.
- ``GET /v1/methods``: the methods and what they are.
- ``POST /v1/experiences``: record finished runs in the experience store; needs ``Authorization: Bearer <token>``
  with the server's token (``METAPEFT_API_TOKEN``); refused when the server has none.
- ``GET /health``, ``GET /metrics`` (requests, latency, served model version).

The served selector is ``models:/metapeft-selector@champion``; a background thread looks the alias up every
``reload_s`` seconds and loads a new champion without a restart. Bad input gets a 4xx with one ``detail`` line.
"""

import contextlib
import hmac
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .._environment import check_machine
from .._errors import MetapeftError

log = logging.getLogger("metapeft.serve")

MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_UPLOAD_ROWS = 5000
MAX_EXPERIENCES = 1000
DRAINED_BYTES = 64 * 1024 * 1024  # an oversized body up to this is read (and dropped) so that its client gets the 413
ANSWERS_KEPT = 1024  # rankings remembered per served version (least recently asked go first)


@dataclass
class ServeConfig:
    """How ``metapeft serve`` runs.

    Args:
        host: Interface to bind (loopback by default: exposing it is a choice).
        port: TCP port.
        token: Bearer token that write endpoints require (default: ``METAPEFT_API_TOKEN``); without one they are
            refused.
        store: Experience store URL for ``POST /v1/experiences`` (default: the user's).
        alias: Registry alias of the selector version served.
        reload_s: Seconds between looks at the alias for a new version.
        max_body_bytes: Largest request body accepted.
        max_upload_rows: Most dataset rows a ``/v1/recommend`` or ``/v1/check`` upload may hold.
        thresholds: Monitoring thresholds for the ``/metrics`` gauges (default: from the served version's offline
            figures, :meth:`Thresholds.for_selector`).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    store: str | None = None
    alias: str = "champion"
    reload_s: float = 30.0
    max_body_bytes: int = MAX_BODY_BYTES
    max_upload_rows: int = MAX_UPLOAD_ROWS
    thresholds: Any = (
        None  # monitoring thresholds (metapeft.monitoring.Thresholds); from the served version's tags when None
    )

    def __post_init__(self) -> None:
        import os

        if not 0 < self.port < 65536:
            raise MetapeftError(f"port must be in 1..65535, got {self.port}")
        if self.reload_s <= 0 or self.max_body_bytes < 1024 or self.max_upload_rows < 10:
            raise MetapeftError("reload_s > 0, max_body_bytes >= 1024 and max_upload_rows >= 10 needed")
        if self.token is None:
            self.token = os.environ.get("METAPEFT_API_TOKEN") or None


@dataclass
class _Served:
    """The selector being served, its registry version, and the rankings it gave (a version's answer to the same
    profile and options never changes: its experience is fixed, so a repeated question is answered from memory)."""

    meta: Any
    version: int
    loaded_at: float = field(default_factory=time.time)
    answers: OrderedDict = field(default_factory=OrderedDict)
    # task fingerprint → the question last recorded for it
    recorded: OrderedDict = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def remembered(self, key: str) -> tuple[list, bytes] | None:
        """The ranking and response body given before for the question ``key`` (see :meth:`key`), if any."""
        with self.lock:
            if key in self.answers:
                self.answers.move_to_end(key)
                return self.answers[key]
        return None

    @staticmethod
    def key(profile: dict, options: dict) -> str:
        return json.dumps([profile, options], sort_keys=True, default=str)

    def recommend(self, profile: dict, options: dict, key: str | None = None) -> tuple[list, bytes]:
        """The ranking for ``profile`` under ``options`` and the response body that carries it (JSON); ``key`` is
        :meth:`key` of the question when the caller has it already."""
        from ._selector import recommend as rank

        key = key or self.key(profile, options)
        if (answer := self.remembered(key)) is not None:
            return answer
        ranking = rank(self.meta, profile, options)
        answer: dict = {"selector_version": self.version, "recommendations": [r.as_dict() for r in ranking]}
        if options.get("machine"):  # whether the key matched runs, and what they make of the times
            factor, tasks = self.meta.machine_speed(options["machine"])
            answer["machine"] = {"key": options["machine"], "time_factor": round(factor, 4), "tasks": tasks}
        body = json.dumps(answer).encode()
        with self.lock:
            self.answers[key] = ranking, body
            if len(self.answers) > ANSWERS_KEPT:
                self.answers.popitem(last=False)
        return ranking, body

    def needs_recording(self, fingerprint: str, key: str) -> bool:
        """Whether the answer to ``key`` must be recorded for monitoring: not when the last answer this process
        recorded for the task's fingerprint is the same one (monitoring matches a run to the newest prediction for
        its task before it, so recording it again changes nothing)."""
        with self.lock:
            if self.recorded.get(fingerprint) == key:
                return False
            self.recorded[fingerprint] = key
            if len(self.recorded) > 4 * ANSWERS_KEPT:
                self.recorded.popitem(last=False)
            return True


class SelectorHolder:
    """Loads the aliased selector version and swaps in a new one when the alias moves (thread-safe reads)."""

    def __init__(self, alias: str = "champion", tracker=None):
        from ..tracking import MLflowTracker

        self.alias = alias
        self.tracker = tracker or MLflowTracker()
        self._lock = threading.Lock()
        self._served: _Served | None = None

    def current(self) -> _Served:
        if self._served is None:
            self.refresh()
        return self._served

    def refresh(self) -> bool:
        """Load the aliased version if it is not the one served; True when it changed."""
        from ._selector import CHAMPION, SELECTOR_NAME, ensure_champion, load_selector

        if self.alias == CHAMPION:
            version = ensure_champion(self.tracker)
        else:
            version = int(self.tracker.client.get_model_version_by_alias(SELECTOR_NAME, self.alias).version)
        if self._served is not None and self._served.version == version:
            return False
        meta = load_selector(version, self.tracker)
        with self._lock:
            self._served = _Served(meta, version)
        log.info("serving %s version %s", SELECTOR_NAME, version)
        return True


def create_app(config: ServeConfig | None = None, holder: SelectorHolder | None = None):
    """The FastAPI application (``uvicorn`` runs it; tests use FastAPI's ``TestClient``)."""
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from starlette.concurrency import run_in_threadpool

    from .. import __version__
    from ..methods import list_methods
    from ..monitoring import monitor, record_prediction

    config = config or ServeConfig()
    holder = holder or SelectorHolder(config.alias)
    registry = CollectorRegistry()
    requests = Counter(
        "metapeft_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=registry
    )
    latency = Histogram(
        "metapeft_request_seconds",
        "Request latency by endpoint",
        ["endpoint"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )
    served_version = Gauge(
        "metapeft_selector_version", "Registry version of the selector being served", registry=registry
    )
    monitored = Gauge(
        "metapeft_monitor_value", "Rolling monitoring figures (metapeft monitor)", ["figure"], registry=registry
    )
    alerting = Gauge("metapeft_monitor_alert", "1 while a monitoring figure is past its threshold", registry=registry)

    def update_monitoring() -> None:
        from ..monitoring import Thresholds
        from ._selector import version_tags

        # the served version's own offline figures set the thresholds unless the config gives them
        thresholds = config.thresholds or Thresholds.for_selector(
            version_tags(holder.current().version, holder.tracker)
        )
        report = monitor(_store(config), thresholds)
        for f in report.figures:
            if f.value is not None:
                monitored.labels(f.name).set(f.value)
        alerting.set(1 if report.alerts else 0)
        for alert in report.alerts:
            log.warning("monitoring alert: %s; %s", alert, report.suggestion)

    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(config.reload_s):
            try:
                holder.refresh()
                served_version.set(holder.current().version)
            except Exception as exc:  # a registry hiccup must not stop serving the selector already loaded
                log.warning("could not look up the selector's %s version: %s", config.alias, exc)
            try:
                update_monitoring()
            except Exception as exc:
                log.warning("could not update the monitoring figures: %s", exc)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        served_version.set(holder.current().version)
        update_monitoring()
        threading.Thread(target=watch, name="selector-watch", daemon=True).start()
        yield
        stop.set()

    app = FastAPI(
        title="metapeft",
        version=__version__,
        description="Choose and configure a PEFT method for a task, from past fine-tuning runs.",
        lifespan=lifespan,
    )
    app.state.config, app.state.holder, app.state.registry = config, holder, registry

    app.add_middleware(_LimitsAndMetrics, max_body_bytes=config.max_body_bytes, requests=requests, latency=latency)

    @app.exception_handler(MetapeftError)
    async def bad_input(request: Request, exc: MetapeftError):
        return _error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.get("/health")
    def health() -> dict:
        served = holder.current()
        return {"status": "ok", "selector_version": served.version, "experience_runs": len(served.meta.experiences())}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/methods")
    def methods() -> list[dict]:
        return [m.describe() for m in list_methods()]

    @app.post("/v1/recommend")
    async def recommend(request: Request) -> dict:
        body = await _json_object(request)
        options = {
            k: body[k]
            for k in ("max_memory_mb", "max_time_s", "methods", "peft_only", "max_steps", "machine")
            if body.get(k) is not None
        }
        _check_options(options)
        served = holder.current()
        profile = await _task_of(body, config)
        key = served.key(profile, options)
        # a new question is ranked off the event loop (where the profile is checked): /health, /metrics and remembered
        # answers go on meanwhile
        ranking, answer = served.remembered(key) or await run_in_threadpool(served.recommend, profile, options, key)
        if served.needs_recording(str(profile.get("fingerprint")), key):
            await run_in_threadpool(
                record_prediction, _store(config), profile, ranking, source="serve", selector=str(served.version)
            )
        return Response(answer, media_type="application/json")  # {"selector_version": ..., "recommendations": [...]}

    @app.post("/v1/check")
    async def check(request: Request) -> dict:
        from ..methods import get_method
        from ..tasks import TaskProfile

        body = await _json_object(request)
        method, settings = body.get("method"), body.get("hyperparameters", {})
        if not isinstance(method, str):
            raise MetapeftError("send {'method': <a method name>, 'hyperparameters': {...}} with the task's 'profile'")
        if not isinstance(settings, dict):
            raise MetapeftError("hyperparameters must be a JSON object of setting: value")
        get_method(method).make_config(settings)  # an unknown method or a setting outside its range: one line
        profile = TaskProfile.from_dict(await _task_of(body, config)).as_dict()
        served = holder.current()
        result = await run_in_threadpool(served.meta.check, profile, method, settings)
        return {"selector_version": served.version, **result.as_dict()}

    @app.get("/v1/similar")
    def similar_by_name(
        task: str = Query(..., description="A task in the selector's experience (NAME or NAME@SIZE)"),
        k: int = Query(5, ge=1, le=50),
    ) -> dict:
        served = holder.current()
        # a task's instances are named NAME@SIZE: a bare name means its largest instance
        found = [
            r.profile
            for r in served.meta.experiences()
            if r.profile and task in (r.task_name, r.task_name.split("@")[0])
        ]
        if not found:
            raise MetapeftError(
                f"task {task!r} is not in the selector's experience; POST its profile to /v1/similar instead"
            )
        return _similar(served, max(found, key=lambda p: p["dataset_size"]), k)

    @app.post("/v1/similar")
    async def similar_by_profile(request: Request) -> dict:
        from ..tasks import TaskProfile

        body = await _json_object(request)
        k = body.get("k", 5)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 50:
            raise MetapeftError(f"k must be a whole number in 1..50, got {k!r}")
        profile = TaskProfile.from_dict(body.get("profile")).as_dict()
        return _similar(holder.current(), profile, k)

    @app.post("/v1/experiences")
    async def experiences(request: Request) -> JSONResponse:
        if not config.token:
            return _error(403, "writes are disabled: this server has no token (start it with METAPEFT_API_TOKEN set)")
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer ") or not hmac.compare_digest(
            given.removeprefix("Bearer ").encode(), config.token.encode()
        ):
            return _error(401, "a valid 'Authorization: Bearer <token>' header is needed to record experiences")
        body = await _json_object(request)
        records = _experiences_from(body.get("experiences"))
        store = _store(config)
        if (prediction := body.get("prediction")) is not None:  # the ranking these runs followed, for monitoring
            _check_prediction(prediction)
            store.add_prediction(
                task_name=prediction["task_name"],
                task_fingerprint=prediction["task_fingerprint"],
                ranking=prediction["ranking"],
                source="posted",
                selector=str(prediction.get("selector_version", "")) or None,
            )
        stored = store.add_many(records, skip_existing=True)
        return JSONResponse(
            {"received": len(records), "stored": stored, "ids": [r.id for r in records]}, status_code=201
        )

    return app


class _LimitsAndMetrics:
    """Refuses a body over the size limit (413) before it is read, turns an unhandled error into a one-line 500,
    and counts every request and its latency for ``/metrics``.

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` runs each request through an extra task and
    memory stream (one of the changes that took a remembered answer's p95 from 104 to 16 ms, BENCHMARKS.md)."""

    def __init__(self, app, *, max_body_bytes: int, requests, latency):
        self.app, self.max_body_bytes, self.requests, self.latency = app, max_body_bytes, requests, latency

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope["path"]
        endpoint = path if path in _ENDPOINTS else "other"
        status, read, body_done = None, 0, False
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        too_large = f"request body over {self.max_body_bytes} bytes; send a smaller one (profile only, or fewer rows)"

        async def receiving():
            nonlocal read, body_done
            message = await receive()
            read += len(message.get("body", b""))
            body_done = message["type"] != "http.request" or not message.get("more_body")
            if read > self.max_body_bytes:  # a chunked body has no length to refuse it by up front
                raise _TooLarge
            return message

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                if length.isdigit() and int(length) <= DRAINED_BYTES:
                    await _drain(
                        receive
                    )  # closing on an unread body resets the connection before the client reads the 413
                await _error(413, too_large)(scope, receive, sending)
            else:
                try:
                    await self.app(scope, receiving, sending)
                except Exception as exc:
                    if status is not None:  # the answer has begun: nothing more can be said to the client
                        raise
                    if isinstance(exc, _TooLarge):
                        if not body_done:
                            await _drain(receive)
                        await _error(413, too_large)(scope, receive, sending)
                    else:  # never a bare 500 page: one line, logged with its traceback
                        log.exception("internal error on %s", path)
                        await _error(500, f"internal error ({type(exc).__name__}); see the server log")(
                            scope, receive, sending
                        )
        finally:
            self.requests.labels(endpoint, str(status or 500)).inc()
            self.latency.labels(endpoint).observe(time.perf_counter() - started)


class _TooLarge(Exception):
    pass


async def _drain(receive, limit: int = DRAINED_BYTES) -> None:
    """Read and drop the rest of a request body (up to ``limit`` bytes)."""
    read = 0
    while read <= limit:
        message = await receive()
        read += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            return


_ENDPOINTS = {
    "/health",
    "/metrics",
    "/v1/methods",
    "/v1/recommend",
    "/v1/check",
    "/v1/similar",
    "/v1/experiences",
    "/docs",
    "/openapi.json",
}


def _error(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": message}, status_code=status)


async def _json_object(request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetapeftError(f"the request body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise MetapeftError("the request body must be a JSON object")
    return body


def _check_options(options: dict) -> None:
    for key in ("max_memory_mb", "max_time_s"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise MetapeftError(f"{key} must be a positive number, got {value!r}")
    steps = options.get("max_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise MetapeftError(f"max_steps must be a whole number >= 1, got {steps!r}")
    if not isinstance(options.get("peft_only", False), bool):
        raise MetapeftError(f"peft_only must be true or false, got {options['peft_only']!r}")
    check_machine(options.get("machine"))
    names = options.get("methods")
    if names is not None:
        from ..methods import get_method

        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise MetapeftError("methods must be a non-empty list of method names")
        for name in names:
            get_method(name)
    if options.get("peft_only"):
        from ..meta import Constraint

        Constraint(methods=names, peft_only=True)  # one that leaves no method: a one-line error


def _check_prediction(value) -> None:
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("task_name"), str)
        or not isinstance(value.get("task_fingerprint"), str)
    ):
        raise MetapeftError(
            "prediction: send {'task_name', 'task_fingerprint', 'ranking': [{'method', 'rank', 'accuracy': "
            "{'mean', 'low', 'high'}}, ...]}"
        )
    ranking = value.get("ranking")
    ok = (
        isinstance(ranking, list)
        and ranking
        and all(
            isinstance(e, dict)
            and isinstance(e.get("method"), str)
            and isinstance(e.get("rank"), int)
            and isinstance(e.get("accuracy"), dict)
            and all(isinstance(e["accuracy"].get(k), (int, float)) for k in ("mean", "low", "high"))
            for e in ranking
        )
    )
    if not ok:
        raise MetapeftError(
            "prediction.ranking: a list of {'method', 'rank', 'accuracy': {'mean', 'low', 'high'}}, best first"
        )


async def _task_of(body: dict, config: ServeConfig) -> dict:
    """The task a request asks about: its ``profile`` as sent, or its uploaded ``rows`` profiled."""
    if "profile" in body:
        return body["profile"]
    if "rows" in body:
        return await _profile_rows(body, config)
    raise MetapeftError(
        "send {'profile': <what `metapeft profile --json` prints>} or {'rows': [{'text': ..., 'label': ...}, ...]}"
    )


async def _profile_rows(body: dict, config: ServeConfig) -> dict:
    """Profile an uploaded dataset (in a worker thread: it runs the encoder)."""
    from starlette.concurrency import run_in_threadpool

    from ..tasks import cached_profile, task_from_rows

    rows = body["rows"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise MetapeftError("rows must be a list of objects such as {'text': ..., 'label': ...}")
    if len(rows) > config.max_upload_rows:
        raise MetapeftError(
            f"{len(rows)} rows is over the upload limit of {config.max_upload_rows}; profile the dataset "
            "locally (`metapeft profile --json`) and send the profile"
        )
    name = body.get("name") or "upload"
    if not isinstance(name, str) or len(name) > 200:
        raise MetapeftError("name must be a short text")
    task = task_from_rows(rows, name=name, where="the uploaded rows")
    return (await run_in_threadpool(cached_profile, task)).as_dict()


def _similar(served: _Served, profile: dict, k: int) -> dict:
    from dataclasses import asdict

    return {"selector_version": served.version, "similar": [asdict(s) for s in served.meta.similar(profile, k)]}


def _experiences_from(value) -> list:
    from ..experience import Experience

    if not isinstance(value, list) or not value:
        raise MetapeftError("send {'experiences': [<record as `metapeft experience export` writes it>, ...]}")
    if len(value) > MAX_EXPERIENCES:
        raise MetapeftError(
            f"{len(value)} records is over the limit of {MAX_EXPERIENCES} per request; send them in parts"
        )
    records = []
    for i, item in enumerate(value):
        try:
            record = Experience.from_dict(item) if isinstance(item, dict) else None
        except (KeyError, TypeError, ValueError) as exc:
            raise MetapeftError(f"experiences[{i}]: not an experience record ({exc})") from None
        if record is None:
            raise MetapeftError(f"experiences[{i}]: a record is a JSON object")
        try:
            record.validate()
        except ValueError as exc:
            raise MetapeftError(f"experiences[{i}]: {exc}") from None
        if record.status != "finished":
            raise MetapeftError(f"experiences[{i}]: only finished runs are recorded, this one is {record.status!r}")
        records.append(record)
    return records


_STORES: dict = {}


def _store(config: ServeConfig):
    from ..experience import ExperienceStore

    key = config.store or ""
    if key not in _STORES:
        _STORES[key] = ExperienceStore(config.store)
    return _STORES[key]
