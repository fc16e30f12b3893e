"""``metapeft validate``: check a set-up end to end and say what to fix, one line per problem."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass


@dataclass
class Check:
    name: str
    ok: bool
    detail: str  # what was found, or what to fix
    required: bool = True  # a failed optional check is a note, not a problem

    def as_dict(self) -> dict:
        return asdict(self)


def validate_setup(store: str | None = None) -> list[Check]:
    """Packages and extras, the base model offline, the experience store, the tracking store and registry, the
    selector's champion and the server token. Nothing is written except what first use would create."""
    from ._environment import package_version

    checks = []
    for name in (
        "torch",
        "transformers",
        "peft",
        "mlflow",
        "sqlalchemy",
        "optuna",
        "fastapi",
        "uvicorn",
        "prometheus_client",
    ):
        found = package_version(name.replace("_", "-")) or package_version(name)
        checks.append(
            Check(
                f"package {name}", found is not None, found or "missing: reinstall metapeft (pip install -U metapeft)"
            )
        )
    for extra, module, what in (("postgres", "psycopg", "PostgreSQL stores"),):
        found = package_version(module)
        checks.append(
            Check(
                f"extra {extra}",
                found is not None,
                found or f"not installed ({what} need it: pip install 'metapeft[{extra}]')",
                required=False,
            )
        )
    checks.append(_check("base model (offline)", _base_model))
    checks.append(_check("experience store", lambda: _store(store)))
    checks.append(_check("tracking store", _tracking))
    checks.append(_check("selector champion", _champion, required=False))
    token = os.environ.get("METAPEFT_API_TOKEN")
    checks.append(
        Check(
            "server token",
            bool(token),
            "set (METAPEFT_API_TOKEN)" if token else "METAPEFT_API_TOKEN is not set: `serve` will refuse writes",
            required=False,
        )
    )
    return checks


def _check(name: str, probe, required: bool = True) -> Check:
    try:
        return Check(name, True, probe(), required)
    except Exception as exc:  # every failure becomes one line that says what to fix
        return Check(name, False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__, required)


def _base_model() -> str:
    from ._backbone import backbone_info, resolve_model

    name, path = resolve_model(None)
    info = backbone_info(None)
    return f"{name} at {path} ({info.architecture}, hidden {info.hidden_size})"


def _store(url: str | None) -> str:
    from .experience import ExperienceStore

    s = ExperienceStore(url)
    return f"{s.display_url}: {s.count()} runs"


def _tracking() -> str:
    from ._config import redact_url
    from .tracking import MLflowTracker

    tracker = MLflowTracker()
    tracker.client.search_registered_models(max_results=1)
    return f"{redact_url(tracker.uri)} (migrated, registry reachable)"


def _champion() -> str:
    from mlflow.exceptions import MlflowException

    from .serving import CHAMPION, SELECTOR_NAME
    from .tracking import MLflowTracker

    try:
        version = MLflowTracker().client.get_model_version_by_alias(SELECTOR_NAME, CHAMPION)
    except MlflowException:
        raise RuntimeError(
            f"no {SELECTOR_NAME}@{CHAMPION} yet: the packaged selector becomes version 1 on the first "
            "`metapeft serve` or `retrain`"
        ) from None
    return f"{SELECTOR_NAME} version {version.version}"
