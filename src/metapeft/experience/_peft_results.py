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
    """Experience records of every result JSON under ``folder`` (searched recursively)."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise StoreError(f"no such directory: {folder} (point at method_comparison results, e.g. shared/peft-method-comparison)")
    files = sorted(p for p in folder.rglob("*.json") if p.name != "SOURCE.json")
    records = []
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise StoreError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict) or not {"run_info", "train_info"} <= data.keys():
            continue  # not a result file
        records.append(_to_experience(path, data))
    if not records:
        raise StoreError(f"no PEFT method-comparison result files (with run_info and train_info) under {folder}")
    return records


def _to_experience(path: Path, data: dict) -> Experience:
    run, train, meta = data["run_info"], data["train_info"], data.get("meta_info", {})
    train_config, peft_config = run.get("train_config", {}), run.get("peft_config") or {}
    peft_type = peft_config.get("peft_type")
    method = "full_finetuning" if peft_type is None else _METHODS.get(peft_type, peft_type.lower())
    if method == "lora" and peft_config.get("use_dora"):
        method = "dora"
    task = path.parent.name if path.parent.name != "results" else path.parent.parent.name

    steps = train.get("metrics") or []
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
    optimizer = train_config.get("optimizer_kwargs", {})
    hyperparameters = {
        "learning_rate": optimizer.get("lr"),
        "weight_decay": optimizer.get("weight_decay"),
        "batch_size": train_config.get("batch_size"),
        "max_steps": train_config.get("max_steps"),
        "optimizer": train_config.get("optimizer_type"),
        "lr_scheduler": train_config.get("lr_scheduler"),
        **{k: v for k, v in peft_config.items() if v not in (None, {}, [], False) and k not in ("task_type", "peft_version", "base_model_name_or_path", "revision")},
    }
    curve = [
        {"step": m.get("step"), "train_loss": m.get("train loss"), **{k.replace(" ", "_"): v for k, v in m.items() if k.startswith(("valid ", "test "))}}
        for m in steps
    ]
    created = run.get("created_at")
    status = train.get("status")
    return Experience(
        id=hashlib.sha256(f"{task}/{path.name}/{created}".encode()).hexdigest()[:32],
        task_name=task,
        task_fingerprint=f"hf-peft:{task}",
        method=method,
        model=train_config.get("model_id", "unknown"),
        hyperparameters=hyperparameters,
        metrics={k: v for k, v in metrics.items() if v is not None},
        curve=curve,
        environment={"packages": meta.get("package_info", {}), "system": meta.get("system_info", {}), "dtype": train_config.get("dtype")},
        tags={"experiment_name": run.get("experiment_name"), "file": path.name, "score_name": score_name},
        status="finished" if status == "success" else "failed",
        error=run.get("error_msg") or (None if status == "success" else f"status: {status}"),
        source=SOURCE,
        seed=train_config.get("seed"),
        created_at=datetime.fromisoformat(created) if created else datetime.now().astimezone(),
    )
