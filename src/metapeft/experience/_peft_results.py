"""Import the Hugging Face PEFT method-comparison results (``method_comparison/<task>/results/*.json``).

Each result file (``run_info`` / ``train_info`` / ``meta_info``) becomes one experience record with
``source="hf-peft-method-comparison"``. Ids derive from the file's content, so importing twice adds nothing.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

from .._errors import StoreError
from ._record import Experience

SOURCE = "hf-peft-method-comparison"
# peft_type -> our method name (others are kept, lower-cased, as methods we do not train ourselves).
_METHODS = {
    "LORA": "lora",
    "ADALORA": "adalora",
    "IA3": "ia3",
    "LOHA": "loha",
    "PROMPT_TUNING": "prompt_tuning",
    "PREFIX_TUNING": "prefix_tuning",
    "P_TUNING": "p_tuning",
}


def read_peft_results(folder: str | Path) -> list[Experience]:
    """Experience records of every result JSON under ``folder`` (searched recursively); StoreError naming the file
    for one that is not valid (nothing is returned then, so that an import adds all of the files or none)."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise StoreError(
            f"no such directory: {folder} (point at method_comparison results, e.g. shared/peft-method-comparison)"
        )
    files = sorted(p for p in folder.rglob("*.json") if p.name != "SOURCE.json")
    records = []
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise StoreError(f"{path}: not a JSON text file (not UTF-8); remove it or fix it") from None
        except json.JSONDecodeError as exc:
            raise StoreError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict) or not {"run_info", "train_info"} <= data.keys():
            continue  # not a result file
        try:
            records.append(_to_experience(path, data).validate())
        except ValueError as exc:
            message = f"{path}: not a PEFT method-comparison result ({exc}); fix or remove it (nothing imported)"
            raise StoreError(message) from None
    if not records:
        raise StoreError(f"no PEFT method-comparison result files (with run_info and train_info) under {folder}")
    return records


_KINDS = {dict: "an object", list: "a list", str: "a string", int: "an integer", (int, float): "a number"}


def _field(section: dict, name: str, key: str, kind: type | tuple[type, ...], default=None):
    """``section[key]`` (``default`` when absent or null); ValueError naming ``name.key`` unless it is a ``kind``."""
    value = section.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{name + '.' if name else ''}{key}: expected {_KINDS[kind]}, got {type(value).__name__}")
    return value


def _to_experience(path: Path, data: dict) -> Experience:
    run, train, meta = (_field(data, "", key, dict, {}) for key in ("run_info", "train_info", "meta_info"))
    train_config = _field(run, "run_info", "train_config", dict, {})
    peft_config = _field(run, "run_info", "peft_config", dict, {})
    optimizer = _field(train_config, "train_config", "optimizer_kwargs", dict, {})
    for section, name, keys, kind in (
        (run, "run_info", ("created_at", "error_msg", "experiment_name"), str),
        (run, "run_info", ("total_time",), (int, float)),
        (train, "train_info", ("train_time", "accelerator_memory_max", "file_size"), (int, float)),
        (train, "train_info", ("num_trainable_params", "num_total_params"), (int, float)),
        (train_config, "train_config", ("model_id", "optimizer_type", "lr_scheduler", "dtype"), str),
        (train_config, "train_config", ("max_steps", "batch_size", "seed"), int),
        (optimizer, "optimizer_kwargs", ("lr", "weight_decay"), (int, float)),
    ):
        for key in keys:
            _field(section, name, key, kind)
    steps = _field(train, "train_info", "metrics", list, [])
    for i, m in enumerate(steps):
        if not isinstance(m, dict):
            raise ValueError(f"train_info.metrics[{i}]: expected an object, got {type(m).__name__}")
        for key in m:
            if key in ("step", "train loss") or key.startswith(("valid ", "test ")):
                _field(m, f"train_info.metrics[{i}]", key, (int, float))
    peft_type = _field(peft_config, "peft_config", "peft_type", str)
    method = "full_finetuning" if peft_type is None else _METHODS.get(peft_type, peft_type.lower())
    if method == "lora" and peft_config.get("use_dora"):
        method = "dora"
    task = path.parent.name if path.parent.name != "results" else path.parent.parent.name

    final = steps[-1] if steps else {}
    test_keys = [k for k in final if k.startswith("test ")]
    score_name = test_keys[0].removeprefix("test ") if test_keys else None
    metrics = {
        "train_time_s": train.get("train_time"),
        "total_time_s": run.get("total_time"),
        "peak_memory_mb": (train.get("accelerator_memory_max") or 0) / 2**20 or None,
        "memory_measure": "cuda_allocator",
        "trainable_params": train.get("num_trainable_params"),
        "total_params": train.get("num_total_params"),
        "adapter_size_bytes": train.get("file_size"),
        "steps": train_config.get("max_steps"),
    }
    if score_name is not None:
        metrics["score"], metrics["score_name"] = final[test_keys[0]], score_name
        if score_name == "accuracy":
            metrics["accuracy"] = final[test_keys[0]]
    hyperparameters = {
        "learning_rate": optimizer.get("lr"),
        "weight_decay": optimizer.get("weight_decay"),
        "batch_size": train_config.get("batch_size"),
        "max_steps": train_config.get("max_steps"),
        "optimizer": train_config.get("optimizer_type"),
        "lr_scheduler": train_config.get("lr_scheduler"),
        **{
            k: v
            for k, v in peft_config.items()
            if v not in (None, {}, [], False)
            and k not in ("task_type", "peft_version", "base_model_name_or_path", "revision")
        },
    }
    curve = [
        {
            "step": m.get("step"),
            "train_loss": m.get("train loss"),
            **{k.replace(" ", "_"): v for k, v in m.items() if k.startswith(("valid ", "test "))},
        }
        for m in steps
    ]
    created = run.get("created_at")
    try:
        created_at = datetime.fromisoformat(created) if created else datetime.now().astimezone()
    except ValueError:
        raise ValueError(f"run_info.created_at: expected an ISO date and time, got {created!r:.60}") from None
    status = train.get("status")
    return Experience(
        id=hashlib.sha256(f"{task}/{path.name}/{created}".encode()).hexdigest()[:32],
        task_name=task,
        task_fingerprint=f"hf-peft:{task}",
        method=method,
        model=train_config.get("model_id") or "unknown",
        hyperparameters=hyperparameters,
        metrics={k: v for k, v in metrics.items() if v is not None},
        curve=curve,
        environment={
            "packages": meta.get("package_info", {}),
            "system": meta.get("system_info", {}),
            "dtype": train_config.get("dtype"),
        },
        tags={"experiment_name": run.get("experiment_name"), "file": path.name, "score_name": score_name},
        status="finished" if status == "success" else "failed",
        error=run.get("error_msg") or (None if status == "success" else f"status: {status}"),
        source=SOURCE,
        seed=train_config.get("seed"),
        created_at=created_at,
    )
