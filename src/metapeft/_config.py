"""Where metapeft keeps its data. Every location can be overridden by an environment variable.

- ``METAPEFT_HOME``: data directory (default ``$XDG_DATA_HOME/metapeft`` or ``~/.local/share/metapeft``).
- ``METAPEFT_STORE``: SQLAlchemy URL of the experience store (default: SQLite file in the data directory).
- ``MLFLOW_TRACKING_URI``: MLflow tracking server or store (default: SQLite file in the data directory).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# P(another method ends better) at which a run switches: chosen by benchmarks/switching.py (BENCHMARKS.md)
DEFAULT_SWITCH_THRESHOLD = 0.7


def data_dir() -> Path:
    if home := os.environ.get("METAPEFT_HOME"):
        path = Path(home).expanduser()
    else:
        base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        path = Path(base) / "metapeft"
    path.mkdir(parents=True, exist_ok=True)
    return path


def store_url() -> str:
    return os.environ.get("METAPEFT_STORE") or f"sqlite:///{data_dir() / 'experience.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{data_dir() / 'mlflow.db'}"


def runs_dir() -> Path:
    path = data_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: store and tracking URLs are printed in errors, ``info`` and
    JSON output, and a team's PostgreSQL password must not end up in a terminal log or a CI transcript."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:  # an unparsable port and the like: hide everything between "://" and "@"
        head, sep, rest = url.partition("://")
        return f"{head}{sep}***@{rest.rsplit('@', 1)[1]}" if "@" in rest else url
