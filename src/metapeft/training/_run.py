"""``train``: one fine-tuning run end to end — validate, profile, fit, save, track, remember."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._backbone import backbone_info, resolve_model
from .._config import runs_dir
from .._environment import environment, pick_device
from .._errors import MetapeftError, MethodError
from ..experience import Experience, ExperienceStore
from ..methods import get_method, with_default_steps
from ..tasks import CausalTask, Split, Task, TaskProfile, profile_task
from ._callbacks import TrainerCallback
from ._config import RunConfig
from ._engine import fit
from ._model import save_classifier

log = logging.getLogger("metapeft")


@dataclass
class TrainResult:
    task: str
    method: str
    model: str
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]
    curve: list[dict[str, Any]]
    adapter_path: str | None
    experience_id: str | None
    mlflow_run_id: str | None
    stopped_by: str
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def train(
    task: Task | CausalTask,
    method: str = "lora",
    hyperparameters: dict[str, Any] | None = None,
    run: RunConfig | None = None,
    *,
    profile: TaskProfile | None = None,
    store: ExperienceStore | None = None,
    tracker=None,
    callbacks: Sequence[TrainerCallback] = (),
    parent_run_id: str | None = None,
    pool: Split | None = None,
) -> TrainResult:
    """Fine-tune a base model (default all-MiniLM-L6-v2) on ``task`` with ``method`` and return what it achieved.

    Args:
        task: The classification task (its training split is trained on, its test split evaluated), or a causal-LM
            task (:class:`~metapeft.tasks.CausalTask`, trained on ``run.backend`` from the causal LM ``run.model``;
            its ``accuracy`` is the exact match of greedy completions; no curve points, switches or ``pool``).
        method: A method of the zoo (``metapeft methods``).
        hyperparameters: Overrides of the method's defaults, validated against its ranges.
        run: How the run is carried out and recorded (:class:`RunConfig`: model, seeds, evaluation, time budget,
            saving, recording, tracking, tags); default ``RunConfig()``.
        profile: The task's profile, when already computed (it is recorded with the run).
        store: The experience store the run is recorded in (default: the user's); with ``run.record`` the run is
            written before training starts and completed after it, so a crash leaves a ``failed``/``interrupted``
            record.
        tracker: The :class:`~metapeft.tracking.MLflowTracker` (default: the user's tracking store).
        callbacks: :class:`~metapeft.training.TrainerCallback` objects that watch the run and may stop it (a
            progress bar, a pruner).
        parent_run_id: The MLflow run to nest this one under (a search).
        pool: An extra scoring set (see :func:`~metapeft.training.fit`).

    Returns:
        A :class:`TrainResult`: metrics, learning curve, adapter folder, experience and MLflow run ids.
    """
    run = run or RunConfig()
    if isinstance(task, CausalTask):
        from ._causal import train_causal

        return train_causal(
            task,
            method,
            hyperparameters,
            run,
            profile=profile,
            store=store,
            tracker=tracker,
            callbacks=callbacks,
            parent_run_id=parent_run_id,
        )
    if run.backend != "torch":
        raise MetapeftError(
            f"--backend {run.backend} trains causal-LM tasks only; {task.name} is a classification task: give "
            "a causal LM as --model (its labels are then verbalised) or use --backend torch"
        )
    model, seed, sample_seed, time_budget, tags = run.model, run.seed, run.sample_seed, run.time_budget, run.tags
    eval_size, final_eval_size, save, track, trust_remote_code = (
        run.eval_size,
        run.final_eval_size,
        run.save,
        run.track,
        run.trust_remote_code,
    )
    spec = get_method(method)
    config = with_default_steps(spec.make_config(hyperparameters), len(task.train))
    model_name, model_path = resolve_model(model)
    backbone = backbone_info(model, trust_remote_code)
    spec.check_compatible(config, backbone)
    torch_device = pick_device(run.device)
    profile = profile or profile_task(task, model, trust_remote_code=trust_remote_code)
    max_length = config.max_length or profile.sequence_length
    if backbone.max_positions and config.max_length > backbone.max_positions:
        raise MethodError(
            f"{spec.name}: max_length={config.max_length} exceeds {model_name}'s {backbone.max_positions} "
            "positions; lower max_length"
        )
    if spec.prompt_learning and backbone.max_positions:
        max_length = min(max_length, backbone.max_positions - getattr(config, "num_virtual_tokens", 0))

    out = usable_output(run.output_dir) if save and run.output_dir else None
    store = (store or ExperienceStore()) if run.record else None
    experience = Experience(
        task_name=task.name,
        task_fingerprint=task.fingerprint,
        method=spec.name,
        model=model_name,
        hyperparameters=config.as_dict(),
        profile=profile.as_dict(),
        environment={
            **environment(torch_device),
            "backend": "torch",
            **({"data": task.meta["data"]} if "data" in task.meta else {}),
        },
        tags={
            **(tags or {}),
            "n_train": len(task.train),
            "eval_size": eval_size,
            "final_eval_size": final_eval_size,
            "time_budget": time_budget,
            "sample_seed": seed if sample_seed is None else sample_seed,
        },
        seed=seed,
    )
    if store is not None:
        store.start(experience)

    alive = store.keep_alive(experience.id) if store is not None else contextlib.nullcontext()
    log_failure = (
        (lambda exc: _log_failure(tracker, task, spec, model_name, config, experience.id, exc)) if track else None
    )
    with recorded_failures(store, experience.id, f"{spec.name} on {task.name}", log_failure):
        with alive:
            result = fit(
                task,
                spec,
                config,
                backbone,
                run,
                max_length=max_length,
                device=torch_device,
                callbacks=callbacks,
                pool=pool,
            )
        adapter_path = None
        switches = result.metrics.get("switches", [])
        if save:
            out = out or runs_dir() / experience.id
            last = result.method or spec
            meta = {
                "method": last.name,
                "label_names": task.label_names,
                "base_model": model_name
                if model is None
                else model_path,  # absolute for local models: reloadable from anywhere
                "max_length": max_length,
                "prompt_learning": last.prompt_learning,
                "pooling": "mean",
                "hyperparameters": (result.config or config).as_dict(),
                "task": task.name,
                "task_fingerprint": task.fingerprint,
                "experience_id": experience.id,
                **({"started_with": spec.name, "switches": switches} if switches else {}),
            }
            result.metrics["adapter_size_bytes"] = save_classifier(
                result.model, out, kind=_prepare_to_save(result.model, last, switches), meta=meta
            )
            adapter_path = str(out.resolve())

    warnings = []
    run_id = None
    forgetting = result.metrics.get("forgetting")
    if track:
        try:
            run_id = (tracker or _default_tracker()).log_run(
                name=f"{task.name}/{spec.name}",
                params={**config.as_dict(), "seed": seed, "max_length": max_length, "n_train": len(task.train)},
                metrics={**result.metrics, **({"forgetting_drop": forgetting["drop"]} if forgetting else {})},
                curve=result.curve,
                tags={
                    "metapeft.task": task.name,
                    "metapeft.task_fingerprint": task.fingerprint,
                    "metapeft.method": spec.name,
                    "metapeft.model": model_name,
                    "metapeft.experience_id": experience.id,
                    **(tags or {}),
                    **_data_tags(task.meta.get("data")),
                    **(
                        {
                            "metapeft.switches": " → ".join(
                                [spec.name] + [f"{w['to']} (step {w['step']})" for w in switches]
                            )
                        }
                        if switches
                        else {}
                    ),
                },
                artifacts={
                    "task_profile.json": profile.as_dict(),
                    "learning_curve.json": result.curve,
                    **({"switches.json": switches} if switches else {}),
                    **({"forgetting.json": forgetting} if forgetting else {}),
                },
                artifact_dir=adapter_path,
                parent_run_id=parent_run_id,
            )
        except Exception as exc:  # tracking trouble must not lose a finished run
            warnings.append(f"MLflow logging failed: {type(exc).__name__}: {exc}")
            log.warning(warnings[-1])

    if store is not None:
        store.finish(
            experience.id,
            metrics=result.metrics,
            curve=result.curve,
            tags={
                **experience.tags,
                "adapter_path": adapter_path,
                "mlflow_run_id": run_id,
                "stopped_by": result.stopped_by,
                "max_length": max_length,
                **({"switched": True} if switches else {}),
            },
        )
    return TrainResult(
        task=task.name,
        method=spec.name,
        model=model_name,
        hyperparameters=config.as_dict(),
        metrics=result.metrics,
        curve=result.curve,
        adapter_path=adapter_path,
        experience_id=experience.id if store is not None else None,
        mlflow_run_id=run_id,
        stopped_by=result.stopped_by,
        warnings=warnings,
    )


@contextlib.contextmanager
def recorded_failures(store: ExperienceStore | None, experience_id: str, what: str, log_failure=None):
    """Around a run's training and saving: Ctrl-C or SIGTERM marks the record ``interrupted`` and goes on; any other
    error marks it ``failed``, is passed to ``log_failure`` (MLflow), and comes out as one ``MetapeftError`` (a
    ``MetapeftError`` as it was) whose ``experience_id`` lets callers tell a recorded failure apart."""
    try:
        yield
    except KeyboardInterrupt:
        if store is not None:
            store.mark(experience_id, "interrupted", error="interrupted by the user (Ctrl-C or SIGTERM)")
        raise
    except Exception as exc:
        if store is not None:
            store.mark(experience_id, "failed", error=f"{type(exc).__name__}: {exc}"[:4000])
        if log_failure is not None:
            log_failure(exc)
        error = (
            exc
            if isinstance(exc, MetapeftError)
            else MetapeftError(
                f"training {what} failed: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''} (recorded as failed run {experience_id})"
            )
        )
        error.experience_id = experience_id if store is not None else None
        if error is exc:
            raise
        raise error from exc


def _prepare_to_save(model, last, switches: list) -> str:
    """Get the trained classifier ready to save and say how it is saved. After a switch the encoder's own weights
    hold what the earlier methods learned: the last adapter is merged into them too when it can be (this changes
    ``model``), and the whole encoder is saved ("full"); virtual tokens cannot be merged, so they are saved as an
    adapter over the saved encoder."""
    if not switches:
        return last.kind
    if last.kind == "peft" and last.mergeable:
        model.encoder = model.encoder.merge_and_unload()
    return "full" if last.mergeable else "peft"


def _log_failure(tracker, task: Task, spec, model_name: str, config, experience_id: str, exc: Exception) -> None:
    """Failed runs go to MLflow too (status FAILED, the error as a tag), best effort."""
    try:
        (tracker or _default_tracker()).log_run(
            name=f"{task.name}/{spec.name}",
            params=config.as_dict(),
            metrics={},
            curve=[],
            status="FAILED",
            tags={
                "metapeft.task": task.name,
                "metapeft.method": spec.name,
                "metapeft.model": model_name,
                "metapeft.experience_id": experience_id,
                "metapeft.error": f"{type(exc).__name__}: {exc}"[:5000],
            },
        )
    except Exception as tracking_error:
        log.warning(f"MLflow logging of the failed run failed: {tracking_error}")


_TRACKER = None


def _default_tracker():
    global _TRACKER
    from ..tracking import MLflowTracker

    if _TRACKER is None:
        _TRACKER = MLflowTracker()
    return _TRACKER


def usable_output(path: str | Path) -> Path:
    """Checked before training, not when saving after it: a run must not be lost to a folder it cannot write, nor
    be saved over an older one (whose adapter files a head-only run would leave behind, mixing the two)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise MetapeftError(f"output {out} exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()):
        raise MetapeftError(
            f"output folder {out} is not empty (saving there would mix this run with what it holds); choose a "
            "new folder or remove it"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MetapeftError(
            f"cannot create output folder {out} ({exc.filename}: {exc.strerror}); choose a writable place"
        ) from None
    return out


def _data_tags(data: dict | None) -> dict[str, str]:
    """A run's data provenance as MLflow tags (DVC's md5; repository, path and revision when it has them)."""
    if not data:
        return {}
    dvc = data.get("dvc") or {}
    named = {
        "metapeft.data_md5": data.get("md5"),
        "metapeft.data_repo": dvc.get("repo"),
        "metapeft.data_path": dvc.get("path"),
        "metapeft.data_rev": dvc.get("rev"),
    }
    return {k: str(v) for k, v in named.items() if v}
