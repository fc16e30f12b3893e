"""The selector as an MLflow model: the fitted meta-learner logged as a pyfunc model and versioned in the registry.

A selector version holds two artifacts: ``surrogate.safetensors`` (the fitted surrogate and task embedding, as
``MetaPEFT`` caches it: safetensors plus JSON, no pickle) and ``experience.jsonl.gz`` (the runs it was fitted on,
which ``similar`` and the candidate settings read). The model itself is logged as code (``_pyfunc_code.py``), so
nothing is unpickled on loading. ``mlflow.pyfunc.load_model`` rebuilds a :class:`MetaPEFT` from
them; its ``predict`` takes task profiles (as ``metapeft profile --json`` prints them) and returns one ranking per
profile.

Versions of ``metapeft-selector`` move by aliases (MLflow's model stages are deprecated): ``@champion`` is the one
served, ``@challenger`` a candidate that ``retrain`` evaluates against it. A registry that has no selector yet gets
the packaged one (fitted on the shipped prior) as version 1 and ``@champion`` (:func:`ensure_champion`).
"""

from __future__ import annotations

import json
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pydantic

from .._environment import check_machine
from .._errors import MetapeftError
from ._adapters import log_and_register

SELECTOR_NAME = "metapeft-selector"
CHAMPION = "champion"
CHALLENGER = "challenger"
ARTIFACT_PATH = "selector"


class ProfileInput(pydantic.BaseModel):
    """A task profile as the selector's pyfunc signature declares it: the fields every profile has, typed; the
    rest (``metapeft profile --json`` prints them all) pass through and are checked by ``TaskProfile``."""

    model_config = pydantic.ConfigDict(extra="allow")
    task_name: str
    fingerprint: str
    dataset_size: int
    num_classes: int
    task_type: str


class SelectorModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of the meta-learner: profiles in, rankings out."""

    def load_context(self, context) -> None:
        from ..meta import MetaPEFT

        self.meta = MetaPEFT.load(context.artifacts["experience"], surrogate=context.artifacts["surrogate"])

    def predict(self, context, model_input: list[ProfileInput], params: dict[str, Any] | None = None):
        """Rank the methods for each task profile.

        Args:
            context: MLflow's model context (unused after loading).
            model_input: Task profiles, each as ``metapeft profile --json`` prints it.
            params: Optional ``max_memory_mb``, ``max_time_s``, ``methods`` (a list), ``max_steps`` and
                ``machine`` (the ``machine_key`` that ``metapeft info`` prints), as ``recommend`` takes them.

        Returns:
            One ``{"recommendations": [...]}`` per profile, best first, each recommendation as
            :class:`~metapeft.meta.MethodRecommendation` gives it.
        """
        profiles = [p.model_dump() if isinstance(p, pydantic.BaseModel) else p for p in model_input]
        return [
            {"recommendations": [r.as_dict() for r in recommend(self.meta, profile, params or {})]}
            for profile in profiles
        ]


def recommend(meta, profile: dict[str, Any], params: dict[str, Any]) -> list:
    """``meta.recommend`` for one profile with the request's options, checked (one-line errors)."""
    from ..tasks import TaskProfile

    if not isinstance(profile, dict):
        raise MetapeftError("a task profile is a JSON object, as `metapeft profile --json` prints it")
    try:
        TaskProfile.from_dict(profile)
    except (KeyError, TypeError, ValueError) as exc:
        raise MetapeftError(f"not a task profile ({exc}); send what `metapeft profile --json` prints") from None
    unknown = set(params) - {"max_memory_mb", "max_time_s", "methods", "peft_only", "max_steps", "machine"}
    if unknown:
        raise MetapeftError(
            f"unknown options {', '.join(sorted(unknown))}; known: max_memory_mb, max_time_s, methods, "
            "peft_only, max_steps, machine"
        )
    check_machine(params.get("machine"))  # a list would reach a dict lookup: a 500
    methods = params.get("methods")
    if params.get("peft_only"):
        from ..meta import Constraint

        methods = Constraint(methods=methods, peft_only=True).allowed  # one that leaves no method: a one-line error
    budget = {"max_steps": int(params["max_steps"])} if params.get("max_steps") else None
    return meta.recommend(
        profile,
        max_memory_mb=params.get("max_memory_mb"),
        max_time_s=params.get("max_time_s"),
        methods=methods,
        budget=budget,
        machine=params.get("machine"),
    )


def log_selector(meta, *, tags: dict[str, Any] | None = None, alias: str | None = None, tracker=None) -> int:
    """Log ``meta`` (fitted) as a pyfunc model in a new MLflow run and register it as a new version of
    ``metapeft-selector``.

    Args:
        meta: A fitted :class:`~metapeft.meta.MetaPEFT`.
        tags: Extra version tags (e.g. the leave-one-task-out figures).
        alias: Set this alias (``champion`` or ``challenger``) on the new version.
        tracker: The :class:`~metapeft.tracking.MLflowTracker` (default: the user's tracking store).

    Returns:
        The new version's number.
    """
    from ..tracking import MLflowTracker

    tracker = tracker or MLflowTracker()
    records = meta.experiences()
    version_tags = {**describe(records), **(tags or {})}
    with tempfile.TemporaryDirectory() as tmp:
        meta.save(tmp)
        surrogate, experience = Path(tmp, "surrogate.safetensors"), Path(tmp, "experience.jsonl.gz")
        run_id = tracker.start_parent("selector", {"metapeft.kind": "selector", **version_tags})
        code = Path(__file__).with_name("_pyfunc_code.py")
        artifacts = {"surrogate": str(surrogate), "experience": str(experience)}
        version = log_and_register(
            tracker,
            SELECTOR_NAME,
            run_id,
            ARTIFACT_PATH,
            code,
            artifacts,
            [f"metapeft=={_version()}"],
            tags=version_tags,
            model_description="metapeft's method selector (profile → ranked PEFT methods)",
        )
    client = tracker.client
    if alias:
        client.set_registered_model_alias(SELECTOR_NAME, alias, version.version)
    return int(version.version)


def describe(records: list) -> dict[str, Any]:
    """What a selector version is tagged with: its experience (size, tasks, fingerprint), versions, git revision."""
    import hashlib

    from .. import __version__
    from ..experience import task_group

    tasks = sorted({r.task_name for r in records})
    digest = hashlib.sha256(
        "".join(sorted(f"{r.id}:{r.updated_at.isoformat()}|" for r in records)).encode()
    ).hexdigest()[:16]
    packages = {name: _package_version(name) for name in ("torch", "transformers", "peft", "mlflow", "scikit-learn")}
    return {
        "metapeft.experience_runs": len(records),
        "metapeft.experience_tasks": len(tasks),
        "metapeft.task_groups": len({task_group(r) for r in records}),
        "metapeft.tasks": ",".join(tasks)[:4000],
        "metapeft.experience_fingerprint": digest,
        "metapeft.version": __version__,
        "metapeft.packages": json.dumps(packages),
        "metapeft.python": platform.python_version(),
        "metapeft.git_revision": _git_revision(),
    }


def ensure_champion(tracker=None) -> int:
    """The ``@champion`` version of ``metapeft-selector``; on a registry that has none, the packaged selector (fitted
    on the shipped prior) is logged as a new version and made champion."""
    from mlflow.exceptions import MlflowException

    from ..meta import MetaPEFT
    from ..tracking import MLflowTracker

    tracker = tracker or MLflowTracker()
    try:
        return int(tracker.client.get_model_version_by_alias(SELECTOR_NAME, CHAMPION).version)
    except MlflowException:
        pass
    from ..monitoring import OFFLINE_COVERAGE, OFFLINE_REGRET

    meta = MetaPEFT(include_own=False, include_prior=True).fit()
    tags = {
        "metapeft.origin": "packaged (shipped prior)",
        "metapeft.offline.regret": OFFLINE_REGRET,
        "metapeft.offline.coverage": OFFLINE_COVERAGE,
    }
    return log_selector(meta, tags=tags, alias=CHAMPION, tracker=tracker)


def version_tags(version: int | str = CHAMPION, tracker=None) -> dict[str, str]:
    """The tags of a selector version (a number or an alias); empty when the registry has no such version."""
    from mlflow.exceptions import MlflowException

    from ..tracking import MLflowTracker

    tracker = tracker or MLflowTracker()
    try:
        if str(version).isdigit():
            return dict(tracker.client.get_model_version(SELECTOR_NAME, str(version)).tags)
        return dict(tracker.client.get_model_version_by_alias(SELECTOR_NAME, str(version)).tags)
    except MlflowException:
        return {}


def selector_uri(alias: str = CHAMPION) -> str:
    return f"models:/{SELECTOR_NAME}@{alias}"


def load_selector(version: int | str = CHAMPION, tracker=None):
    """The :class:`~metapeft.meta.MetaPEFT` of a registered selector version (a number or an alias), loaded through
    ``mlflow.pyfunc.load_model`` as any MLflow client would."""
    from ..tracking import MLflowTracker

    tracker = tracker or MLflowTracker()
    uri = f"models:/{SELECTOR_NAME}/{version}" if str(version).isdigit() else selector_uri(str(version))
    with tracker.fluent():
        return mlflow.pyfunc.load_model(uri).unwrap_python_model().meta


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _version() -> str:
    from .. import __version__

    return __version__


def _git_revision() -> str:
    """The git revision of the metapeft checkout, when it is one; ``unknown`` otherwise."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"
