"""The experience store: every run, ours or imported, in one SQL table (SQLAlchemy).

Lifecycle of a run's record: :meth:`ExperienceStore.start` inserts it as ``running`` before training begins,
:meth:`ExperienceStore.finish` / :meth:`ExperienceStore.mark` complete it. Every write is one short
transaction, so a crash can lose at most the run in flight, never earlier records. A process killed with
SIGKILL cannot mark its own record; the next process that opens the store marks ``running`` records whose
process is gone (same host), or whose heartbeat stopped (another host), as ``interrupted``.

The default store is a SQLite file (WAL journal, so that several processes can write at once); any
SQLAlchemy URL, e.g. ``postgresql+psycopg://…``, works for a team-shared store. A SQLite file this user may not
write is opened read-only (list, export, recommend work; writes are refused), and a SQLite file's integrity is
checked (``PRAGMA quick_check``) before a process first writes to it, so that runs are never added to a damaged
store.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shlex
import socket
import sqlite3
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import psutil
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from .._errors import StoreError
from ._record import Experience

log = logging.getLogger("metapeft")
SCHEMA_VERSION = 1
HEARTBEAT_S = 60.0  # a running run says it is alive this often…
STALE_S = 600.0  # …and one silent for this long on another host is taken for dead
_metadata = sa.MetaData()
experiences = sa.Table(
    "experiences",
    _metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("source", sa.String(64), nullable=False, index=True),
    sa.Column("task_name", sa.String(256), nullable=False, index=True),
    sa.Column("task_fingerprint", sa.String(64), nullable=False, index=True),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("method", sa.String(64), nullable=False, index=True),
    sa.Column("seed", sa.Integer),
    sa.Column("accuracy", sa.Float),  # copied out of metrics so that queries can sort and filter on it
    sa.Column("hyperparameters", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("curve", sa.JSON, nullable=False),
    sa.Column("profile", sa.JSON, nullable=False),
    sa.Column("environment", sa.JSON, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("host", sa.String(256)),
    sa.Column("pid", sa.Integer),
)
predictions = sa.Table(  # what the selector predicted for a task, for monitoring against the runs that follow
    "predictions",
    _metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("task_name", sa.String(256), nullable=False),
    sa.Column("task_fingerprint", sa.String(64), nullable=False, index=True),
    sa.Column("source", sa.String(64), nullable=False),  # recommend, tune, autotune, serve, posted
    sa.Column("selector", sa.String(64)),  # the selector version that made it, when one was registered
    sa.Column("ranking", sa.JSON, nullable=False),  # [{method, rank, accuracy: {mean, low, high}}, ...] best first
)
store_info = sa.Table(
    "metapeft_store",
    _metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)
_VERSION = sa.select(store_info.c.value).where(store_info.c.key == "schema_version")
_JSON_FIELDS = ("hyperparameters", "metrics", "curve", "profile", "environment", "tags")


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class ExperienceStore:
    """Read and write experience records at a SQLAlchemy URL (default: ``metapeft._config.store_url()``)."""

    def __init__(self, url: str | None = None):
        from .._config import store_url

        default = url is None and not os.environ.get("METAPEFT_STORE")  # the data directory's: created with its folder
        self.url = url or store_url()
        self.read_only = False  # a SQLite file this user may not write: opened for reading only
        self._file: Path | None = None
        self._checked = False  # the SQLite file's integrity, checked before this object's first write
        try:
            self._file = _sqlite_file(self.url)
            if self._file is not None:
                self._engine = self._open_sqlite(create_folder=default)
            elif self.url.startswith("sqlite:///"):
                self._engine = _sqlite_engine(self.url)
            else:
                self._engine = sa.create_engine(self.url, pool_pre_ping=True)
            self._create_schema()
        except (ImportError, ValueError, sa.exc.ArgumentError) as exc:  # no driver, a bad port…
            detail = self._hide(_short(exc))
            raise StoreError(
                f"cannot open the experience store at {self.display_url} ({detail}); "
                "is the URL right and its driver installed?"
            ) from None
        except SQLAlchemyError as exc:
            raise self._error(exc, "open") from None
        self._host = socket.gethostname()
        if not self.read_only:
            try:
                self.reap_interrupted()
            except StoreError as exc:
                if "permission denied" not in str(exc):
                    raise
                log.debug("not marking interrupted runs: %s", exc)  # a PostgreSQL user who may only read

    @property
    def display_url(self) -> str:
        """The URL with any password hidden: the form to print."""
        from .._config import redact_url

        return redact_url(self.url)

    @property
    def engine(self) -> sa.Engine:
        """The SQLAlchemy engine (for tables that live beside the experiences, such as bench claims)."""
        return self._engine

    def _open_sqlite(self, create_folder: bool) -> sa.Engine:
        path, folder = self._file, self._file.parent
        if not folder.is_dir():
            if not create_folder:
                raise StoreError(
                    f"the folder {folder} of the experience store {self.display_url} does not exist; "
                    f"create it (mkdir -p {shlex.quote(str(folder))}) or fix --store / METAPEFT_STORE"
                )
            folder.mkdir(parents=True, exist_ok=True)
        if path.exists():
            if not (os.access(path, os.W_OK) and os.access(folder, os.W_OK)):
                self.read_only = True
                return _read_only_engine(path)
        elif not os.access(folder, os.W_OK):
            raise StoreError(
                f"cannot create the experience store {path}: no write permission on {folder}; "
                "fix its permissions or give another --store / METAPEFT_STORE"
            )
        else:
            (log.info if create_folder else log.warning)("creating a new experience store at %s", path)
        return _sqlite_engine(self.url)

    def _create_schema(self) -> None:
        if self.read_only:
            with self._reading(), self._engine.connect() as conn:
                tables = sa.inspect(conn).get_table_names()
                if experiences.name not in tables:
                    raise StoreError(
                        f"{self._file} is read-only for this user and holds no experiences; "
                        "give a metapeft store (--store / METAPEFT_STORE)"
                    )
                if store_info.name in tables:
                    self._check_version(conn.execute(_VERSION).scalar())
            return
        for attempt in range(5):  # several processes may create a fresh store at the same moment
            try:
                _metadata.create_all(self._engine)
                with self._engine.begin() as conn:
                    found = conn.execute(_VERSION).scalar()
                    if found is None:
                        conn.execute(store_info.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                    self._check_version(found)
                return
            except (OperationalError, sa.exc.IntegrityError):
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _check_version(self, found: str | None) -> None:
        if found is not None and int(found) > SCHEMA_VERSION:
            raise StoreError(
                f"the store at {self.display_url} was written by a newer metapeft (schema {found}); upgrade metapeft"
            )

    @contextmanager
    def _reading(self):
        """Database errors while reading become one-line StoreErrors (a damaged file says so and how to recover)."""
        try:
            yield
        except sa.exc.DatabaseError as exc:
            raise self._error(exc, "read") from None

    @contextmanager
    def _writing(self):
        """A write: refused on a read-only store, and on a damaged SQLite file (checked before the first write)."""
        if self.read_only:
            raise self._read_only_error()
        try:
            if self._file is not None and not self._checked:
                with self._engine.connect() as conn:
                    problems = [row[0] for row in conn.exec_driver_sql("PRAGMA quick_check")]
                if problems != ["ok"]:  # the first line of each is "*** in database main ***"
                    lines = [line for p in problems for line in str(p).splitlines() if not line.startswith("***")]
                    raise self._damaged((lines or problems)[0][:200])
                self._checked = True
            yield
        except sa.exc.IntegrityError:
            raise  # a duplicate id: the caller says what it means
        except sa.exc.DatabaseError as exc:
            raise self._error(exc, "write to") from None

    def _error(self, exc: Exception, doing: str) -> StoreError:
        detail = self._hide(_short(exc))
        if self._file is not None and ("malformed" in detail or "not a database" in detail):
            return self._damaged(detail)
        if self._file is not None and "readonly" in detail:  # "attempt to write a readonly database"
            return StoreError(
                f"cannot {doing} the experience store {self._file} ({detail}); "
                "check that this user may write it, its folder and its -wal and -shm files"
            )
        return StoreError(
            f"cannot {doing} the experience store at {self.display_url} ({detail}); check --store / METAPEFT_STORE"
        )

    def _damaged(self, detail: str) -> StoreError:
        old, new = self._file, self._file.with_name(self._file.stem + "-recovered.db")
        what = "is not a SQLite database or is damaged" if "not a database" in detail else "is damaged"
        q = lambda path: shlex.quote(str(path))  # noqa: E731
        return StoreError(
            f"the experience store {old} {what} ({detail}), so nothing is written to it; recover what is readable "
            f"with `sqlite3 {q(old)} .recover | sqlite3 {q(new)}` (where .recover fails, as in sqlite 3.40: "
            f"`sqlite3 {q(old)} .dump | sed 's/^ROLLBACK;.*/COMMIT;/' | sqlite3 {q(new)}`) and use "
            f"--store sqlite:///{new}, or restore a backup or export"
        )

    def _read_only_error(self) -> StoreError:
        return StoreError(
            f"the experience store {self._file} is read-only for this user (no write permission on the "
            "file or its folder); it can be read; to write, fix its permissions or give another --store"
        )

    def _hide(self, text: str) -> str:
        """``text`` with this store's URL and password hidden (database errors may quote them)."""
        try:
            password = urlsplit(self.url).password
        except ValueError:
            password = None
        text = text.replace(self.url, self.display_url)
        for secret in {password, unquote(password or "")} - {None, ""}:
            text = text.replace(secret, "***")
        return text

    # --- writing -----------------------------------------------------------------------------------------------
    def start(self, experience: Experience) -> str:
        """Insert ``experience`` as running (owned by this process) and return its id."""
        experience.status = "running"
        self._insert([experience], owner=True)
        return experience.id

    def add(self, experience: Experience) -> str:
        """Insert a complete record (imports, tests)."""
        self._insert([experience], owner=False)
        return experience.id

    def add_many(self, records: Iterable[Experience], *, skip_existing: bool = True) -> int:
        """Insert many records in one transaction; with ``skip_existing`` ids already stored are left alone."""
        records = list({r.id: r for r in records}.values())  # a file may repeat a record
        if skip_existing and records:
            existing = set()
            ids = [r.id for r in records]
            with self._reading(), self._engine.connect() as conn:
                for i in range(0, len(ids), 500):
                    existing |= set(
                        conn.execute(
                            sa.select(experiences.c.id).where(experiences.c.id.in_(ids[i : i + 500]))
                        ).scalars()
                    )
            records = [r for r in records if r.id not in existing]
        try:
            self._insert(records, owner=False)
        except sa.exc.IntegrityError:
            raise StoreError(
                "another process added some of these records at the same time; run the import again (it skips "
                "what is stored)"
            ) from None
        return len(records)

    def add_prediction(
        self, *, task_name: str, task_fingerprint: str, ranking: list[dict], source: str, selector: str | None = None
    ) -> str:
        """Record what the selector predicted for a task (``ranking``: best first, each ``{"method", "rank",
        "accuracy": {"mean", "low", "high"}}``) so that ``metapeft monitor`` can compare it with the runs that
        follow."""
        import uuid

        if not ranking or not all(isinstance(r, dict) and {"method", "rank", "accuracy"} <= set(r) for r in ranking):
            raise StoreError(
                "a prediction's ranking lists {method, rank, accuracy: {mean, low, high}} entries, best first"
            )
        pid = uuid.uuid4().hex
        row = {
            "id": pid,
            "created_at": datetime.now(timezone.utc),
            "task_name": task_name[:256],
            "task_fingerprint": task_fingerprint,
            "source": source,
            "selector": selector,
            "ranking": ranking,
        }
        with self._writing(), self._engine.begin() as conn:
            conn.execute(predictions.insert().values(**row))
        return pid

    def predictions(self, limit: int | None = None) -> list[dict]:
        """The recorded predictions, oldest first (the last ``limit`` when given)."""
        stmt = sa.select(predictions).order_by(predictions.c.created_at.desc(), predictions.c.id)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._reading(), self._engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(stmt).mappings()]
        for r in rows:
            if r["created_at"].tzinfo is None:
                r["created_at"] = r["created_at"].replace(
                    tzinfo=timezone.utc
                )  # SQLite drops the zone; we always write UTC
        return rows[::-1]

    def finish(self, experience_id: str, **fields: Any) -> None:
        """Mark a run finished and store its results (``metrics``, ``curve``, ``tags``…)."""
        self._update(experience_id, status="finished", **fields)

    def mark(self, experience_id: str, status: str, error: str | None = None, **fields: Any) -> None:
        """Set a run's final status (``failed`` or ``interrupted``) with the error text."""
        self._update(experience_id, status=status, error=error, **fields)

    def _insert(self, records: list[Experience], *, owner: bool) -> None:
        rows = [self._row(r, owner) for r in records]
        with self._writing():
            if rows:
                with self._engine.begin() as conn:
                    conn.execute(experiences.insert(), rows)

    def _row(self, r: Experience, owner: bool) -> dict[str, Any]:
        row = {
            k: getattr(r, k)
            for k in ("id", "status", "source", "task_name", "task_fingerprint", "model", "method", "seed", "error")
        }
        for key in ("created_at", "updated_at"):  # SQLite keeps no offsets: store everything in UTC
            stamp = getattr(r, key)
            row[key] = stamp.astimezone(timezone.utc) if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
        row.update({k: _jsonable(getattr(r, k)) for k in _JSON_FIELDS})
        row["accuracy"] = r.metrics.get("accuracy")
        row["host"], row["pid"] = (self._host, os.getpid()) if owner else (None, None)
        return row

    def _update(self, experience_id: str, **fields: Any) -> None:
        values = {k: (_jsonable(v) if k in _JSON_FIELDS else v) for k, v in fields.items()}
        if "metrics" in fields:
            values["accuracy"] = fields["metrics"].get("accuracy")
        values["updated_at"] = datetime.now(timezone.utc)
        with self._writing(), self._engine.begin() as conn:
            conn.execute(experiences.update().where(experiences.c.id == experience_id).values(**values))

    def reap_interrupted(self) -> int:
        """Mark ``running`` records of dead processes as interrupted; returns how many. On this host a run is dead
        when its process is; on another host (a shared PostgreSQL store) when its heartbeat (:meth:`keep_alive`)
        is older than :data:`STALE_S`."""
        if self.read_only:
            return 0
        stale_before = datetime.now(timezone.utc) - timedelta(seconds=STALE_S)
        running = experiences.c.status == "running"
        with self._reading(), self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(experiences.c.id, experiences.c.pid).where(running, experiences.c.host == self._host)
            ).all()
            silent = conn.execute(
                sa.select(experiences.c.id, experiences.c.host).where(
                    running,
                    # a record imported before the import marked running ones interrupted has no host
                    sa.or_(experiences.c.host.is_(None), experiences.c.host != self._host),
                    experiences.c.updated_at < stale_before,
                )
            ).all()
        dead = {
            r.id: "the process running it ended without finishing (killed or crashed)"
            for r in rows
            if r.pid is None or process_gone(r.pid)
        }
        for r in silent:
            dead[r.id] = (
                f"no heartbeat from its process on {r.host or 'an unknown host'} for over {STALE_S / 60:.0f} "
                "minutes (killed, crashed or cut off)"
            )
        for experience_id, error in dead.items():
            with self._writing(), self._engine.begin() as conn:
                conn.execute(
                    experiences.update()
                    .where(experiences.c.id == experience_id, running)
                    .values(status="interrupted", error=error, updated_at=datetime.now(timezone.utc))
                )
        return len(dead)

    def heartbeat(self, experience_id: str) -> None:
        """Say that the process running ``experience_id`` is alive (its ``updated_at`` becomes now)."""
        with self._writing(), self._engine.begin() as conn:
            conn.execute(
                experiences.update()
                .where(experiences.c.id == experience_id, experiences.c.status == "running")
                .values(updated_at=datetime.now(timezone.utc))
            )

    @contextmanager
    def keep_alive(self, experience_id: str, every: float = HEARTBEAT_S):
        """Beat :meth:`heartbeat` every ``every`` seconds from a background thread while the block runs, so that a
        process on another host can tell a long run from a dead one (a SIGKILL leaves no other trace there)."""
        import threading

        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every):
                try:
                    self.heartbeat(experience_id)
                except Exception as exc:  # a store hiccup must not end the run; the next beat tries again
                    log.debug("heartbeat of %s failed: %s", experience_id, exc)

        thread = threading.Thread(target=beat, name=f"metapeft-heartbeat-{experience_id[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    # --- reading -----------------------------------------------------------------------------------------------
    def get(self, experience_id: str) -> Experience:
        with self._reading(), self._engine.connect() as conn:
            row = conn.execute(sa.select(experiences).where(experiences.c.id == experience_id)).mappings().first()
        if row is None:
            raise StoreError(f"no experience with id {experience_id} in {self.display_url}")
        return _record(row)

    def query(
        self,
        *,
        status: str | None = None,
        method: str | None = None,
        task: str | None = None,
        source: str | None = None,
        limit: int | None = None,
    ) -> list[Experience]:
        """Records matching every given filter, oldest first."""
        return list(self.iter(status=status, method=method, task=task, source=source, limit=limit))

    def iter(self, *, status=None, method=None, task=None, source=None, limit=None) -> Iterator[Experience]:
        stmt = sa.select(experiences).order_by(experiences.c.created_at, experiences.c.id)
        for column, value in (("status", status), ("method", method), ("task_name", task), ("source", source)):
            if value is not None:
                stmt = stmt.where(experiences.c[column] == value)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._reading(), self._engine.connect() as conn:
            for row in conn.execute(stmt).mappings():
                yield _record(row)

    def count(self, **filters: Any) -> int:
        stmt = sa.select(sa.func.count()).select_from(experiences)
        for column, value in filters.items():
            stmt = stmt.where(experiences.c[column] == value)
        with self._reading(), self._engine.connect() as conn:
            return int(conn.execute(stmt).scalar())

    def tag_values(self, tag: str, status: str = "finished") -> list[str]:
        """The values of tag ``tag`` on the records with ``status`` that have it (one light query: tags only, not
        whole records)."""
        value = experiences.c.tags[tag].as_string()
        stmt = sa.select(value).where(experiences.c.status == status, value.is_not(None))
        with self._reading(), self._engine.connect() as conn:
            return [v for v in conn.execute(stmt).scalars().all() if v]

    # --- exchange ----------------------------------------------------------------------------------------------
    def export_jsonl(self, path: str | Path, **filters: Any) -> int:
        n = 0
        with _open_text(path, "w") as out:
            for record in self.iter(**filters):
                out.write(json.dumps(record.as_dict(), default=str) + "\n")
                n += 1
        return n

    def import_jsonl(self, path: str | Path) -> tuple[int, int]:
        """Add the records of a JSONL export (gzip-compressed if named .gz); returns (added, already present).
        Every line is checked first: a file with one bad line adds nothing. A record exported while its run was
        still going comes in as ``interrupted``: no process here runs it (a bench resumes such runs)."""
        records = read_jsonl(path)
        for r in records:
            if r.status == "running":
                r.status, r.error = "interrupted", "it was running when exported; imported as interrupted"
        added = self.add_many(records)
        return added, len(records) - added

    def dispose(self) -> None:
        self._engine.dispose()


def read_jsonl(path: str | Path) -> list[Experience]:
    """The records of an ``experience export`` file (gzip-compressed if named .gz), each checked.

    Raises:
        StoreError: The file is missing, or a line is not an experience record (naming the line).
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"no such file: {path}")
    data = _read_bytes(path)
    records = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError:
            hint = "; it is gzip-compressed: name it .jsonl.gz" if data[:2] == b"\x1f\x8b" else ""
            raise StoreError(
                f"{path} line {lineno}: not UTF-8 text, so not an `experience export` file{hint} (nothing imported)"
            ) from None
        if not line.strip():
            continue
        try:
            records.append(Experience.from_dict(json.loads(line)).validate())
        except (ValueError, TypeError) as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise StoreError(
                f"{path} line {lineno}: not an experience record ({detail}); fix or remove the line (nothing imported)"
            ) from None
    return records


def _open_text(path: str | Path, mode: str):
    """Text file, gzip-compressed when its name ends in .gz (written without a timestamp: same records, same bytes)."""
    if str(path).endswith(".gz"):
        if mode == "w":
            import io

            return io.TextIOWrapper(gzip.GzipFile(path, "wb", mtime=0), encoding="utf-8")
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when its name ends in .gz."""
    if not path.name.endswith(".gz"):
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        message = f"{path}: not a gzip-compressed file ({exc}); name an uncompressed export .jsonl, or gzip it"
        raise StoreError(message) from None


def _sqlite_file(url: str) -> Path | None:
    """The file of a plain SQLite URL; None for other databases, in-memory SQLite and ``file:`` URIs."""
    parsed = sa.engine.make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or not database or database.startswith((":memory:", "file:")):
        return None
    return Path(database)


def _sqlite_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url, connect_args={"timeout": 60})
    sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _read_only_engine(path: Path) -> sa.Engine:
    """``path`` opened read-only. While the store is in use (its -wal file exists) with ``mode=ro``, which shares the
    writers' locks; otherwise as immutable, since ``mode=ro`` would create -wal and -shm files that the owner, with
    this user's permissions on them, could no longer write."""
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"

    def connect() -> sqlite3.Connection:
        if not Path(f"{path}-wal").exists():
            return sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False)
        conn = sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:  # e.g. SQLITE_READONLY_DIRECTORY: no -shm file, and none can be made
            if not exc.sqlite_errorname.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
                raise
            conn.close()
            conn = sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False)
        return conn

    return sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.NullPool)


def _record(row) -> Experience:
    data = {k: row[k] for k in row.keys() if k in Experience.__dataclass_fields__}
    for key in ("created_at", "updated_at"):
        if data[key] is not None and data[key].tzinfo is None:
            data[key] = data[key].replace(tzinfo=timezone.utc)  # SQLite drops the zone; we always write UTC
    return Experience(**data)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def process_gone(pid: int) -> bool:
    """True when no live process (on this host) has ``pid``: it ended, or is a zombie awaiting its parent."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
