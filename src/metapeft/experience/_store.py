"""The experience store: every run, ours or imported, in one SQL table (SQLAlchemy).

Lifecycle of a run's record: :meth:`ExperienceStore.start` inserts it as ``running`` before training begins,
:meth:`ExperienceStore.finish` / :meth:`ExperienceStore.mark` complete it. Every write is one short
transaction, so a crash can lose at most the run in flight, never earlier records. A process killed with
SIGKILL cannot mark its own record; the next process that opens the store marks ``running`` records whose
process is gone (same host) as ``interrupted``.

The default store is a SQLite file (WAL journal, so that several processes can write at once); any
SQLAlchemy URL, e.g. ``postgresql+psycopg://…``, works for a team-shared store.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from .._errors import StoreError
from ._record import Experience

SCHEMA_VERSION = 1
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
store_info = sa.Table(
    "metapeft_store",
    _metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)
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

        self.url = url or store_url()
        try:
            if self.url.startswith("sqlite:///"):
                Path(self.url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
                self._engine = sa.create_engine(self.url, connect_args={"timeout": 60})
                sa.event.listen(self._engine, "connect", _sqlite_pragmas)
            else:
                self._engine = sa.create_engine(self.url, pool_pre_ping=True)
            self._create_schema()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the experience store at {self.url} ({_short(exc)}); check --store / METAPEFT_STORE") from None
        except (ImportError, sa.exc.ArgumentError) as exc:
            raise StoreError(f"cannot open the experience store at {self.url} ({_short(exc)}); is the URL right and its driver installed?") from None
        self._host = socket.gethostname()
        self.reap_interrupted()

    @property
    def engine(self) -> sa.Engine:
        """The SQLAlchemy engine (for tables that live beside the experiences, such as bench claims)."""
        return self._engine

    def _create_schema(self) -> None:
        for attempt in range(5):  # several processes may create a fresh store at the same moment
            try:
                _metadata.create_all(self._engine)
                with self._engine.begin() as conn:
                    found = conn.execute(sa.select(store_info.c.value).where(store_info.c.key == "schema_version")).scalar()
                    if found is None:
                        conn.execute(store_info.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                    elif int(found) > SCHEMA_VERSION:
                        raise StoreError(f"the store at {self.url} was written by a newer metapeft (schema {found}); upgrade metapeft")
                return
            except (OperationalError, sa.exc.IntegrityError):
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

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
            with self._engine.connect() as conn:
                for i in range(0, len(ids), 500):
                    existing |= set(conn.execute(sa.select(experiences.c.id).where(experiences.c.id.in_(ids[i : i + 500]))).scalars())
            records = [r for r in records if r.id not in existing]
        try:
            self._insert(records, owner=False)
        except sa.exc.IntegrityError:
            raise StoreError("another process added some of these records at the same time; run the import again (it skips what is stored)") from None
        return len(records)

    def finish(self, experience_id: str, **fields: Any) -> None:
        """Mark a run finished and store its results (``metrics``, ``curve``, ``tags``…)."""
        self._update(experience_id, status="finished", **fields)

    def mark(self, experience_id: str, status: str, error: str | None = None, **fields: Any) -> None:
        """Set a run's final status (``failed`` or ``interrupted``) with the error text."""
        self._update(experience_id, status=status, error=error, **fields)

    def _insert(self, records: list[Experience], *, owner: bool) -> None:
        if not records:
            return
        rows = [self._row(r, owner) for r in records]
        with self._engine.begin() as conn:
            conn.execute(experiences.insert(), rows)

    def _row(self, r: Experience, owner: bool) -> dict[str, Any]:
        row = {k: getattr(r, k) for k in ("id", "status", "source", "task_name", "task_fingerprint", "model", "method", "seed", "error")}
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
        with self._engine.begin() as conn:
            conn.execute(experiences.update().where(experiences.c.id == experience_id).values(**values))

    def reap_interrupted(self) -> int:
        """Mark ``running`` records of dead processes on this host as interrupted; returns how many."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(experiences.c.id, experiences.c.pid).where(experiences.c.status == "running", experiences.c.host == self._host)
            ).all()
        dead = [r.id for r in rows if r.pid is None or process_gone(r.pid)]
        if dead:
            with self._engine.begin() as conn:
                conn.execute(
                    experiences.update()
                    .where(experiences.c.id.in_(dead), experiences.c.status == "running")
                    .values(status="interrupted", error="the process running it ended without finishing (killed or crashed)", updated_at=datetime.now(timezone.utc))
                )
        return len(dead)

    # --- reading -----------------------------------------------------------------------------------------------
    def get(self, experience_id: str) -> Experience:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(experiences).where(experiences.c.id == experience_id)).mappings().first()
        if row is None:
            raise StoreError(f"no experience with id {experience_id} in {self.url}")
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
        with self._engine.connect() as conn:
            for row in conn.execute(stmt).mappings():
                yield _record(row)

    def count(self, **filters: Any) -> int:
        stmt = sa.select(sa.func.count()).select_from(experiences)
        for column, value in filters.items():
            stmt = stmt.where(experiences.c[column] == value)
        with self._engine.connect() as conn:
            return int(conn.execute(stmt).scalar())

    # --- exchange ----------------------------------------------------------------------------------------------
    def export_jsonl(self, path: str | Path, **filters: Any) -> int:
        n = 0
        with _open_text(path, "w") as out:
            for record in self.iter(**filters):
                out.write(json.dumps(record.as_dict(), default=str) + "\n")
                n += 1
        return n

    def import_jsonl(self, path: str | Path) -> tuple[int, int]:
        """Add the records of a JSONL export; returns (added, already present)."""
        path = Path(path)
        if not path.exists():
            raise StoreError(f"no such file: {path}")
        records = []
        with _open_text(path, "r") as f:
            text = f.read()
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                records.append(Experience.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, ValueError) as exc:
                raise StoreError(f"{path} line {lineno}: not an experience record ({_short(exc)})") from None
        added = self.add_many(records)
        return added, len(records) - added

    def dispose(self) -> None:
        self._engine.dispose()


def _open_text(path: str | Path, mode: str):
    """Text file, gzip-compressed when its name ends in .gz."""
    import gzip

    if str(path).endswith(".gz"):
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


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
