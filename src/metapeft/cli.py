"""The ``metapeft`` command line (Typer + Rich).

Errors the user can fix arrive as :class:`MetapeftError` and are printed as one red line with exit code 2;
anything else is a bug, printed as one line too (``METAPEFT_DEBUG=1`` shows the traceback), exit code 1.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from ._config import DEFAULT_SWITCH_THRESHOLD
from ._environment import interrupt_once, quiet_libraries
from ._errors import MetapeftError, OptionError

console = Console(stderr=True)
# piped or redirected output keeps every table cell whole (rich would fit tables to 80 columns and cut cells)
out = Console(width=None if sys.stdout.isatty() else 400)
app = typer.Typer(
    name="metapeft",
    help="Choose, configure and run parameter-efficient fine-tuning, learned from past fine-tuning runs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
experience_app = typer.Typer(help="The experience store: list, export, import.", no_args_is_help=True)
app.add_typer(experience_app, name="experience")
model_app = typer.Typer(
    help="Base models from other formats (llama2.c) for transformers and mlx-lm.", no_args_is_help=True
)
app.add_typer(model_app, name="model")
data_app = typer.Typer(
    help="Datasets under DVC: version them, read them at a revision (needs metapeft[dvc]).", no_args_is_help=True
)
app.add_typer(data_app, name="data")

StoreOption = Annotated[
    Optional[str],
    typer.Option(
        "--store", help="SQLAlchemy URL of the experience store \\[env: METAPEFT_STORE].", show_default=False
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]
MetaInitOption = Annotated[
    bool,
    typer.Option(
        "--meta-init/--no-meta-init",
        help=(
            "On a few-shot task (at most 16 examples per label), adapt from the meta-initialisation as `metapeft "
            "adapt` does."
        ),
    ),
]
TrackOption = Annotated[bool, typer.Option("--track/--no-track", help="Log the run to MLflow.")]
ModelOption = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        help="Base model: local Hugging Face folder or hub id \\[default: all-MiniLM-L6-v2, bundled].",
        show_default=False,
    ),
]


def _version(value: bool) -> None:
    if value:
        out.print(f"metapeft {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    quiet_libraries()
    _show_warnings()


class _WarningLine(logging.Handler):
    """metapeft's logged warnings as one yellow line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        console.print(f"[yellow]warning:[/] {escape(record.getMessage())}", highlight=False, soft_wrap=True)


def _show_warnings() -> None:
    logger = logging.getLogger("metapeft")
    if not any(isinstance(h, _WarningLine) for h in logger.handlers):
        logger.addHandler(_WarningLine(logging.WARNING))


def _progress(title: str, *, transient: bool):
    """The progress bar of long commands: title, bar, done/total, a live info field, elapsed and remaining time."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn(f"[bold]{title}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    return Progress(*columns, console=console, transient=transient)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _load(data: str, text_column, pair_column, label_column, seed: int = 0, data_rev: str | None = None):
    from .tasks import load_task

    return load_task(
        data, text_column=text_column, pair_column=pair_column, label_column=label_column, seed=seed, data_rev=data_rev
    )


SwitchOption = Annotated[
    bool,
    typer.Option(
        "--switch",
        help=(
            "Switch to another method mid-run when its learning curve says another will finish better (merged, head "
            "kept)."
        ),
    ),
]
SwitchThresholdOption = Annotated[
    float, typer.Option("--switch-threshold", help="P(another method ends better) at which --switch switches.")
]
TextColumn = Annotated[
    Optional[str], typer.Option("--text-column", help="Column holding the text (auto-detected).", show_default=False)
]
PairColumn = Annotated[
    Optional[str],
    typer.Option(
        "--pair-column", help="Column holding the second sentence of a pair (auto-detected).", show_default=False
    ),
]
LabelColumn = Annotated[
    Optional[str], typer.Option("--label-column", help="Column holding the label (auto-detected).", show_default=False)
]
ExperienceFileOption = Annotated[
    Optional[Path],
    typer.Option(
        "--experience",
        help="Learn from this `experience export` file (.jsonl or .jsonl.gz) instead of the store.",
        show_default=False,
    ),
]
BackendOption = Annotated[
    str,
    typer.Option(
        "--backend", help="torch, or mlx (Apple silicon; Linux CPU with metapeft[mlx]): causal LMs train on either."
    ),
]
DataRevOption = Annotated[
    Optional[str],
    typer.Option(
        "--data-rev",
        help="Read the data as it was at this git revision of its DVC repository (needs metapeft[dvc]).",
        show_default=False,
    ),
]
DataArgument = Annotated[
    str,
    typer.Argument(
        help="JSONL/CSV/TSV/Parquet file, folder with train/test files, datasets.save_to_disk folder, or 'example'.",
        show_default=False,
    ),
]


@app.command()
def info(store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Versions, compute device, and where the store, tracking and runs live."""
    from ._config import data_dir, redact_url, runs_dir, store_url, tracking_uri
    from ._environment import environment, machine_key

    env = environment()
    data = {
        "metapeft": __version__,
        **{k: v for k, v in env.items() if k != "packages"},
        "machine_key": machine_key({**env, "backend": "torch"}),  # whose runs scale recommend's train times
        "packages": env["packages"],
        "data_dir": str(data_dir()),
        "store": redact_url(store or store_url()),
        "tracking_uri": redact_url(tracking_uri()),
        "runs_dir": str(runs_dir()),
    }
    if as_json:
        _print_json(data)
        return
    table = Table(show_header=False, box=None)
    for key, value in data.items():
        table.add_row(
            f"[bold]{key}[/]",
            ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else str(value),
        )
    out.print(table)


@app.command()
def validate(store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Check the set-up end to end: packages and extras, the base model offline, the stores, the registry's
    champion, the server token. One line per problem; exit 2 if any."""
    from ._validate import validate_setup

    checks = validate_setup(store)
    if as_json:
        _print_json([c.as_dict() for c in checks])
    else:
        for c in checks:
            mark = "[green]ok[/]" if c.ok else ("[red]problem[/]" if c.required else "[yellow]note[/]")
            out.print(f"{mark}  {c.name}: {escape(c.detail)}", highlight=False, soft_wrap=True)
    if problems := [c for c in checks if c.required and not c.ok]:
        console.print(
            f"[bold red]{len(problems)} problem(s)[/]: {'; '.join(f'{c.name}: {c.detail}' for c in problems)}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)


@app.command()
def methods(as_json: JsonOption = False) -> None:
    """The method zoo with each method's hyperparameters and search space."""
    from .methods import list_methods

    described = [m.describe() for m in list_methods()]
    if as_json:
        _print_json(described)
        return
    for m in described:
        table = Table(title=f"[bold]{m['name']}[/] — {m['summary']}", title_justify="left", show_lines=False)
        for column in ("hyperparameter", "default", "search space", "help"):
            table.add_column(column)
        for name, p in m["hyperparameters"].items():
            s = p["search"]
            space = (
                ", ".join(map(str, s["choices"]))
                if s["type"] == "categorical"
                else f"{s['low']} … {s['high']}{' (log)' if s['log'] else ''}"
            )
            table.add_row(name, str(p["default"]), space, p["help"])
        out.print(table)


@app.command()
def profile(
    data: DataArgument,
    model: ModelOption = None,
    as_json: JsonOption = False,
    with_vector: Annotated[
        bool, typer.Option("--with-vector", help="Include the 384-d domain vector in the table output.")
    ] = False,
    text_column: TextColumn = None,
    pair_column: PairColumn = None,
    label_column: LabelColumn = None,
) -> None:
    """Profile a task: size, classes, lengths, vocabulary, domain vector, complexity, model traits."""
    from .tasks import profile_task

    task = _load(data, text_column, pair_column, label_column)
    with console.status(f"profiling {task.name}…"):
        result = profile_task(task, model).as_dict()
    if as_json:
        _print_json(result)
        return
    table = Table(title=f"profile of {task.name}", show_header=False)
    for key, value in result.items():
        if key == "domain_vector" and not with_vector:
            value = f"[{len(value)} values; --json or --with-vector to see]"
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    out.print(table)


def _parse_sets(values: list[str]) -> dict[str, str]:
    parsed = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MetapeftError(f"--set expects key=value, got {item!r} (e.g. --set r=16)")
        parsed[key.strip()] = value.strip()
    return parsed


@app.command()
def train(
    data: DataArgument,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            "-m",
            help="Method to train (see `metapeft methods`); with --switch, auto starts with the recommended one.",
        ),
    ] = "lora",
    sets: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="Hyperparameter override key=value (repeatable).", show_default=False),
    ] = None,
    max_steps: Annotated[
        Optional[int],
        typer.Option("--max-steps", help="Optimisation steps (same as --set max_steps=N).", show_default=False),
    ] = None,
    time_budget: Annotated[
        Optional[float],
        typer.Option("--time-budget", help="Stop training after this many seconds.", show_default=False),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            help="New folder to save the model in \\[default: runs/<run id> in the data dir, see `metapeft info`].",
            show_default=False,
        ),
    ] = None,
    model: ModelOption = None,
    seed: Annotated[int, typer.Option(help="Random seed (data order, initialisation, dropout, held-out split).")] = 0,
    eval_size: Annotated[
        int, typer.Option("--eval-size", help="Held-out examples evaluated (stratified sample; 0 = all).")
    ] = 500,
    device: Annotated[
        Optional[str], typer.Option(help="cpu, cuda or mps \\[default: best available].", show_default=False)
    ] = None,
    store: StoreOption = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Log the run to MLflow.")] = True,
    register: Annotated[
        Optional[str],
        typer.Option(
            "--register",
            help=(
                "Register the trained classifier in MLflow's model registry under this name (a pyfunc model: texts "
                "in, labels out)."
            ),
            show_default=False,
        ),
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow model code from the hub (only for models you trust).")
    ] = False,
    as_json: JsonOption = False,
    text_column: TextColumn = None,
    pair_column: PairColumn = None,
    label_column: LabelColumn = None,
    meta_init: MetaInitOption = True,
    switch: SwitchOption = False,
    switch_threshold: SwitchThresholdOption = DEFAULT_SWITCH_THRESHOLD,
    peft_only: Annotated[
        bool,
        typer.Option(
            "--peft-only",
            help="With --switch: start with and switch to PEFT methods only (no full fine-tuning or head-only).",
        ),
    ] = False,
    probe: Annotated[
        Optional[list[str]],
        typer.Option(
            "--probe",
            help=(
                "Another task's data (repeatable): measure forgetting as a frozen linear probe's accuracy on it "
                "before and after training."
            ),
            show_default=False,
        ),
    ] = None,
    data_rev: DataRevOption = None,
    backend: BackendOption = "torch",
) -> None:
    """Fine-tune one method on a task, evaluate it, save the adapter and record the run. With a causal LM as --model
    (or --backend mlx), the task is generation: prompt/completion rows, or labelled rows verbalised."""
    from ._environment import pick_device
    from .experience import ExperienceStore
    from .methods import get_method
    from .tasks import profile_task
    from .training import LinearProbe, Progress, RunConfig, usable_output
    from .training import train as run_training

    hyperparameters = _parse_sets(sets or [])
    if max_steps is not None:
        hyperparameters["max_steps"] = max_steps
    from .backends import get_backend, is_causal_model

    get_backend(backend)
    if backend != "torch" or is_causal_model(model):
        unsupported = [
            flag
            for flag, given in (
                ("--switch", switch),
                ("--register", register),
                ("--probe", probe),
                ("--data-rev", data_rev),
            )
            if given
        ]
        if unsupported:
            raise MetapeftError(
                f"{', '.join(unsupported)}: not available for causal LMs yet (a classification encoder as --model "
                "takes them)"
            )
        run = _options(
            RunConfig,
            {"output_dir": "output"},
            model=model,
            seed=seed,
            time_budget=time_budget,
            eval_size=eval_size,
            output_dir=output,
            track=track,
            backend=backend,
        )
        _train_causal(data, method, hyperparameters, run, store, as_json)
        return
    if method == "auto" and not switch:
        raise MetapeftError(
            "--method auto picks the recommended method for --switch; without --switch, name a method (`metapeft "
            "recommend` ranks them)"
        )
    if peft_only and not switch:
        raise MetapeftError("--peft-only restricts the methods --switch starts with and switches to: add --switch")
    policy, steps = _switch_policy(method, hyperparameters, switch_threshold, peft_only) if switch else (None, None)
    if method != "auto":
        get_method(method).make_config(hyperparameters)  # fail on bad input before loading anything heavy
    run = _options(
        RunConfig,
        {"output_dir": "output"},
        model=model,
        seed=seed,
        time_budget=time_budget,
        eval_size=eval_size,
        device=device,
        trust_remote_code=trust_remote_code,
        output_dir=output,
        track=track,
    )
    pick_device(device)
    if output is not None:
        usable_output(output)
    if register is not None and not track:
        raise MetapeftError(
            "--register needs the run logged to MLflow (the registered model is the run's); drop --no-track"
        )
    if register is not None and not register.strip():
        raise MetapeftError("--register needs a name, e.g. --register my-classifier")
    task = _load(data, text_column, pair_column, label_column, seed, data_rev)
    experience_store = ExperienceStore(store)
    if meta_init and not switch and _few_shot(task, method, hyperparameters, "train"):
        _adapt_few_shot(
            task,
            seed=seed,
            model=model,
            output=output,
            store=experience_store,
            track=track,
            as_json=as_json,
            register=register,
        )
        return
    with console.status(f"profiling {task.name}…"):
        task_profile = profile_task(task, model, trust_remote_code=trust_remote_code)
    callbacks = []
    if policy is not None:
        with console.status("fitting the meta-learner and the learning-curve forecaster…"):
            budget = {"max_steps": steps} if "max_steps" in hyperparameters else None  # else the default
            controller, method = _switch_controller(
                task_profile, method, hyperparameters, budget, policy, experience_store, model
            )
        callbacks.append(controller)
    if probe:
        probes = [_load(p, None, None, None, seed) for p in probe]
        with console.status(f"probing the base encoder on {', '.join(t.name for t in probes)}…"):
            callbacks.append(LinearProbe(probes, model))

    with _progress("{task.description}", transient=as_json) as bar:
        job = bar.add_task(f"{method} on {task.name}", total=None, info="")

        def update(step: int, total: int, numbers: dict) -> None:
            info = f"loss {numbers['loss']:.3f}" + (
                f" · acc {numbers['accuracy']:.3f}" if "accuracy" in numbers else ""
            )
            bar.update(job, completed=step, total=total, info=info)

        result = run_training(
            task,
            method,
            hyperparameters,
            run,
            profile=task_profile,
            store=experience_store,
            callbacks=[*callbacks, Progress(update)],
        )
    registered = _register(
        register,
        task,
        result.method,
        result.metrics["accuracy"],
        result.experience_id,
        result.mlflow_run_id,
        result.adapter_path,
    )
    switching = (
        {"switches": result.metrics.get("switches", []), "switch_decisions": callbacks[0].decisions}
        if policy is not None
        else {}
    )
    if as_json:
        _print_json({**result.as_dict(), **switching, **({"registered": registered} if registered else {})})
        return
    m = result.metrics
    table = Table(title=f"{result.method} on {result.task} ({result.model})", show_header=False)
    rows = [
        ("accuracy", f"{m['accuracy']:.4f}"),
        ("macro-F1", f"{m['macro_f1']:.4f}"),
        (
            "train time",
            f"{m['train_time_s']:.1f} s ({m['steps']} steps, {m['tokens_per_s']:.0f} tokens/s; evaluation not counted)"
            + (" — stopped by --time-budget" if result.stopped_by == "time_budget" else ""),
        ),
        (
            "peak memory",
            f"{m['peak_memory_mb']:.0f} MB ({m['train_memory_mb']:.0f} MB above the loaded model: activations, "
            "gradients, optimiser)",
        ),
        (
            "trainable params",
            f"{m['trainable_params']:,} of {m['total_params']:,} "
            f"({100 * m['trainable_params'] / m['total_params']:.2f}%)",
        ),
        ("adapter size", f"{m.get('adapter_size_bytes', 0) / 1024:.0f} KiB"),
        ("learning curve", "  ".join(f"{p['step']}:{p['accuracy']:.3f}" for p in result.curve)),
        ("adapter", str(result.adapter_path)),
        ("experience id", str(result.experience_id)),
    ] + ([("MLflow run id", result.mlflow_run_id)] if result.mlflow_run_id else [])
    if switching:
        fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        rows.append(
            (
                "switches",
                "; ".join(
                    f"step {w['step']}: {w['from']} → {w['to']} (P(better) {fmt(w['p_better'])}; accuracy "
                    f"{fmt(w['accuracy_before'])} → {fmt(w['accuracy_after'])})"
                    for w in switching["switches"]
                )
                or "none: no other method was likely enough to end better",
            )
        )
    if "forgetting" in m:
        rows.append(
            (
                "linear probe",
                "; ".join(
                    f"{k} {100 * v['before']:.1f}% → {100 * v['after']:.1f}%"
                    for k, v in m["forgetting"]["probe"].items()
                )
                + f" (mean drop {m['forgetting']['drop']:+.1f} points)",
            )
        )
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if registered:
        out.print(
            f"registered as {registered['name']} version {registered['version']} in MLflow's model registry",
            highlight=False,
        )


def _switch_policy(method: str, hyperparameters: dict, threshold: float, peft_only: bool = False):
    """``--switch``'s checks, before anything heavy loads: the policy and the run's steps."""
    from .methods import get_method, list_methods
    from .training import SwitchPolicy

    methods = [m.name for m in list_methods() if m.kind == "peft"] if peft_only else None
    policy = _options(SwitchPolicy, {"threshold": "switch_threshold"}, threshold=threshold, methods=methods)
    spec = get_method("lora" if method == "auto" else method)  # auto: the budget's checks are every method's
    if peft_only and spec.kind != "peft":
        raise MetapeftError(f"--peft-only: {method} is not a PEFT method; use --method lora, or auto")
    if not spec.mergeable:
        raise MetapeftError(
            f"--switch needs a first method whose learning can be merged into the weights; {method} adds virtual "
            "tokens instead: use --method lora, or auto"
        )
    steps = spec.make_config(hyperparameters).max_steps
    if steps and steps < 8:  # 0: the default budget, at least 80 steps
        raise MetapeftError(
            "--switch needs at least 8 steps (a learning-curve point to decide at and steps left to switch into); "
            f"got {steps}: raise --max-steps"
        )
    return policy, steps


def _train_causal(data, method, hyperparameters, run, store, as_json) -> None:
    """``train`` on a causal LM: the task as generation, the run on ``run.backend``; a line or JSON of its figures."""
    from .backends import get_backend, load_for_causal
    from .experience import ExperienceStore
    from .methods import get_method
    from .training import Progress, usable_output
    from .training import train as run_training

    if run.model is None:
        raise MetapeftError(
            f"--backend {run.backend} trains causal LMs: give --model (a Llama folder, e.g. from `metapeft model "
            "import-llama2c`)"
        )
    get_backend(run.backend).check(method)
    get_method(method).make_config(hyperparameters)
    if run.output_dir is not None:
        usable_output(run.output_dir)
    task = load_for_causal(data, run.seed)
    with _progress("{task.description}", transient=True) as bar:
        job = bar.add_task(f"{method} on {task.name} ({run.backend})", total=None, info="")
        progress = Progress(
            lambda step, total, numbers: bar.update(
                job, completed=step, total=total, info=f"loss {numbers['loss']:.3f}"
            )
        )
        result = run_training(task, method, hyperparameters, run, store=ExperienceStore(store), callbacks=[progress])
    if as_json:
        _print_json(result.as_dict())
        return
    m = result.metrics
    out.print(
        f"{method} on {task.name} ({run.backend}): held-out loss {m['initial_loss']:.3f} → {m['loss']:.3f} "
        f"(perplexity {m['perplexity']:.2f}), exact match {m['exact_match']:.3f}, {m['steps']} steps, "
        f"{1000 * m['step_time_s']:.0f} ms a step"
        + (" (stopped by --time-budget)" if result.stopped_by == "time_budget" else "")
        + f"; adapter {result.adapter_path}; experience id {result.experience_id}",
        highlight=False,
    )
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


def _switch_controller(
    profile, method: str, hyperparameters: dict, budget: dict | None, policy, store, model: str | None
):
    """The meta-learner, the forecaster fitted on its experience, and the first method (``auto``: the best-ranked
    one of the policy's methods whose learning can be merged)."""
    from .meta import MetaPEFT
    from .methods import get_method
    from .training import SwitchController

    meta = MetaPEFT(store, model=model)
    meta.fit()
    if method == "auto":
        ranking = meta.recommend(profile.as_dict(), methods=policy.methods, budget=budget)
        method = next(r.method for r in ranking if get_method(r.method).mergeable)
        get_method(method).make_config(hyperparameters)
    return SwitchController(meta, profile.as_dict(), meta.forecaster(), policy), method


def _register(
    name: str | None,
    task,
    method: str,
    accuracy: float,
    experience_id: str | None,
    run_id: str | None,
    adapter_path: str | None,
) -> dict | None:
    """``--register``: the run's classifier as a new version of the registered model ``name``."""
    if name is None:
        return None
    if run_id is None or adapter_path is None:
        raise MetapeftError(
            "the run was not logged to MLflow (see the warning above), so it cannot be registered; register it later "
            "from its adapter folder"
        )
    from .serving import register_classifier

    tags = {
        "metapeft.task": task.name,
        "metapeft.task_fingerprint": task.fingerprint,
        "metapeft.method": method,
        "metapeft.accuracy": accuracy,
        "metapeft.experience_id": experience_id,
    }
    version = register_classifier(
        name, run_id, adapter_path, tags=tags, description=f"{method} trained on {task.name} with `metapeft train`"
    )
    return {"name": name, "version": int(version.version)}


def _few_shot(task, method: str | None, hyperparameters: dict, command: str) -> bool:
    """Whether ``task`` is few-shot and ``method`` has the shipped meta-initialisation (said on the console)."""
    from .fewshot import FEW_SHOT_MAX, default_init, few_shot_size, read_card

    shots = few_shot_size(task)
    if shots is None:
        return False
    init_method = read_card(default_init())["method"]
    if method is not None and method != init_method:
        console.print(
            f"[yellow]note:[/] {task.name} has at most {shots} examples per label; the meta-initialisation is for "
            f"{init_method}, not {method}: fine-tuning as usual",
            soft_wrap=True,
        )
        return False
    if hyperparameters:
        raise MetapeftError(
            f"{task.name} has at most {shots} examples per label, so `{command}` adapts it from the "
            "meta-initialisation, which takes no --set/--max-steps; add --no-meta-init to fine-tune with them"
        )
    console.print(
        f"{task.name} has at most {shots} examples per label (≤ {FEW_SHOT_MAX}): adapting from the "
        "meta-initialisation (as `metapeft adapt`; --no-meta-init fine-tunes as usual)",
        highlight=False,
        soft_wrap=True,
    )
    return True


def _adapt_few_shot(
    task,
    *,
    seed: int,
    model: str | None,
    output: Path | None,
    store,
    track: bool,
    as_json: bool,
    shots: int | None = None,
    init: str = "meta",
    method: str | None = None,
    register: str | None = None,
) -> None:
    from .fewshot import adapt as run_adapt
    from .fewshot import few_shot_size

    shots = shots or few_shot_size(task)
    with console.status(f"adapting to {task.name} from {shots} examples per label…"):
        result = run_adapt(
            task, shots, init=init, method=method, seed=seed, model=model, output_dir=output, store=store, track=track
        )
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    registered = _register(
        register, task, result.method, result.accuracy, result.experience_id, result.mlflow_run_id, result.adapter_path
    )
    if as_json:
        _print_json({**result.as_dict(), **({"registered": registered} if registered else {})})
        return
    rows = [
        ("accuracy", f"{result.accuracy:.4f} on {result.test_examples} held-out examples"),
        ("macro-F1", f"{result.macro_f1:.4f}"),
        ("examples used", str(result.support_size)),
        ("adaptation time", f"{result.adapt_time_s:.1f} s (evaluation not counted)"),
        ("adapter", str(result.adapter_path)),
        ("experience id", str(result.experience_id)),
    ] + ([("MLflow run id", result.mlflow_run_id)] if result.mlflow_run_id else [])
    table = Table(title=f"{result.method} on {result.task}, {shots} per label, init {result.init}", show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)
    if registered:
        out.print(
            f"registered as {registered['name']} version {registered['version']} in MLflow's model registry",
            highlight=False,
        )


@app.command()
def bench(
    suite: Annotated[Path, typer.Argument(help="Suite manifest (MANIFEST.json) or the folder holding it.")],
    design: Annotated[
        Optional[Path],
        typer.Option("--design", help="Design JSON \\[default: the design of the shipped prior].", show_default=False),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", "-w", help="Worker processes (each gets cores/workers threads).")
    ] = 2,
    time_budget: Annotated[
        Optional[float],
        typer.Option("--time-budget", help="Per-run training time limit in seconds.", show_default=False),
    ] = None,
    store: Annotated[
        Optional[str],
        typer.Option(
            "--storage",
            "--store",
            help="SQLAlchemy URL of the store the runs go to (several machines may share a PostgreSQL one).",
            show_default=False,
        ),
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Run again the runs that failed before.")
    ] = False,
    data_rev: Annotated[
        Optional[str],
        typer.Option(
            "--data-rev",
            help="Read the suite as it was at this git revision of its DVC repository (needs metapeft[dvc]).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run a design of fine-tuning runs over a suite into the experience store (resumable, parallel)."""
    import time as _time

    from ._config import store_url
    from .bench import Design, expand, run_bench
    from .prior import DESIGN_PATH
    from .tasks import load_suite

    design_path = str(design or DESIGN_PATH)
    parsed = Design.load(design_path)
    total = len(expand(parsed, [e.name for e in load_suite(suite, data_rev)]))
    if workers < 1:
        raise MetapeftError(f"--workers must be at least 1, got {workers}")
    if time_budget is not None and time_budget <= 0:
        raise MetapeftError(f"--time-budget must be positive, got {time_budget}")
    with _progress("bench {task.description}", transient=as_json) as bar:
        job = bar.add_task(parsed.name, total=total, info="")
        started = _time.monotonic()

        def update(counts: dict, total: int) -> None:
            bar.update(
                job,
                completed=counts["done"] + counts["failed"],
                total=total,
                info=f"{counts['failed']} failed · {counts['running']} running",
            )

        summary = run_bench(
            str(suite),
            design_path,
            store or store_url(),
            workers,
            time_budget,
            on_progress=update,
            retry_failed=retry_failed,
            data_rev=data_rev,
        )
    summary["elapsed_s"] = round(_time.monotonic() - started, 1)
    if as_json:
        _print_json(summary)
    else:
        console.print(
            f"{summary['design']}: {summary['done']} of {summary['total']} runs done, {summary['failed']} failed "
            f"({summary['elapsed_s']:.0f} s)"
        )
        if summary["contended"]:
            from .experience import CONTENDED_SHARE

            console.print(
                f"{summary['contended']} of the runs made got under {CONTENDED_SHARE:.0%} of their cores (other work "
                "beside the bench): "
                "their accuracy counts, their training time is not learned from. Use fewer --workers or leave the "
                "machine to the bench for timings."
            )


# None leaves it to METAPEFT_PRIOR (on unless 0/false/no/off), as the Python API does
PriorOption = Annotated[
    Optional[bool],
    typer.Option(
        "--prior/--no-prior",
        help="Learn from the shipped prior experience too \\[default: on, or METAPEFT_PRIOR].",
        show_default=False,
    ),
]
OwnOption = Annotated[bool, typer.Option("--own/--no-own", help="Include your own runs from the store.")]


@app.command()
def report(
    store: StoreOption = None,
    prior: PriorOption = None,
    own: OwnOption = True,
    html_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--html", help="Write PNG plots, index.html and summary.md into this folder.", show_default=False
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Which method wins where: per-task best method and gaps, wins, size effects, trade-offs, sensitivity."""
    from .experience import ExperienceStore
    from .prior import experiences
    from .report import analyse, markdown, render

    records = experiences(ExperienceStore(store) if own else None, include_prior=prior, include_own=own)
    summary = analyse(records)
    if summary["runs"] == 0:
        raise MetapeftError(
            "no finished runs to report on (the store is empty and the prior is off or missing); run `metapeft train` "
            "or `metapeft bench` first"
        )
    if html_dir is not None:
        files = render(summary, records, html_dir)
        summary["files"] = [str(f) for f in files]
    if as_json:
        _print_json(summary)
        return
    from rich.markdown import Markdown

    out.print(Markdown(markdown(summary)), width=min(out.width, 120))  # prose and its boxes at a reading width
    if html_dir is not None:
        console.print(f"wrote {len(summary['files'])} files to {html_dir} (open {html_dir / 'index.html'})")


def _meta(store: Optional[str], prior: Optional[bool], model: Optional[str] = None):
    from .experience import ExperienceStore
    from .meta import MetaPEFT

    meta = MetaPEFT(ExperienceStore(store), include_prior=prior, model=model)
    with console.status("loading the meta-learner…") as status:
        meta.fit(progress=lambda text: status.update(text + "…"))
    return meta


def _task_profile(meta, data: str, text_column, pair_column, label_column, backend: str = "torch") -> dict:
    """The task's profile for the meta-learner's model; with a causal LM (or a backend other than torch), of the task
    as generation, for that backend."""
    from .backends import get_backend, is_causal_model, load_for_causal

    get_backend(backend)
    causal = backend != "torch" or is_causal_model(meta.model)
    if causal and not is_causal_model(meta.model):
        raise MetapeftError(
            f"--backend {backend} serves causal LMs: give --model (a Llama folder, e.g. from `metapeft model "
            "import-llama2c`)"
        )
    task = load_for_causal(data) if causal else _load(data, text_column, pair_column, label_column)
    with console.status(f"profiling {task.name}…"):
        return {**meta.profile(task), "backend": backend}


def _interval(d: dict, fmt: str, scale: float = 1.0) -> str:
    return f"{format(d['mean'] * scale, fmt)} [{format(d['low'] * scale, fmt)}–{format(d['high'] * scale, fmt)}]"


@app.command()
def recommend(
    data: DataArgument,
    model: ModelOption = None,
    max_memory: Annotated[
        Optional[float],
        typer.Option(
            "--max-memory",
            help="Peak memory limit in MB: methods expected to exceed it are excluded.",
            show_default=False,
        ),
    ] = None,
    max_time: Annotated[
        Optional[float],
        typer.Option(
            "--max-time",
            help="Training time limit in seconds: methods expected to exceed it are excluded.",
            show_default=False,
        ),
    ] = None,
    methods: Annotated[
        Optional[str],
        typer.Option(
            "--methods", help="Comma-separated methods to rank \\[default: the whole zoo].", show_default=False
        ),
    ] = None,
    peft_only: Annotated[
        bool,
        typer.Option(
            "--peft-only",
            help="Rank only PEFT methods (adapters and virtual tokens: no full fine-tuning, no head-only).",
        ),
    ] = False,
    max_steps: Annotated[
        Optional[int],
        typer.Option(
            "--max-steps",
            help=(
                "Training steps you will run (the budget every prediction assumes) \\[default: about 5 epochs of the "
                "task's training examples, 80..320 steps, as `train` runs]."
            ),
            show_default=False,
        ),
    ] = None,
    store: StoreOption = None,
    prior: PriorOption = None,
    as_json: JsonOption = False,
    text_column: TextColumn = None,
    pair_column: PairColumn = None,
    label_column: LabelColumn = None,
    backend: BackendOption = "torch",
) -> None:
    """Rank PEFT methods for a task: confidence each is best, expected accuracy/time/memory, settings and why. With a
    causal LM as --model, the task is generation and the methods are those --backend has; accuracy is then the exact
    match of completions."""
    from .backends import get_backend, is_causal_model
    from .methods import get_method

    names = [get_method(m).name for m in methods.split(",") if m.strip()] if methods else None
    for value, flag in ((max_memory, "--max-memory"), (max_time, "--max-time"), (max_steps, "--max-steps")):
        if value is not None and value <= 0:
            raise MetapeftError(f"{flag} must be positive, got {value}")
    if backend != "torch" or is_causal_model(model):
        runner = get_backend(backend)
        for name in names or []:
            runner.check(name)
        names = names or list(runner.methods)
    if peft_only:
        from .meta import Constraint

        names = _options(Constraint, methods=names, peft_only=True).allowed
    meta = _meta(store, prior, model)
    profile = _task_profile(meta, data, text_column, pair_column, label_column, backend)
    here = meta.local_machine(backend)  # the device and threads of your latest run on this computer
    ranking = meta.recommend(
        profile,
        max_memory_mb=max_memory,
        max_time_s=max_time,
        methods=names,
        budget={"max_steps": max_steps} if max_steps else None,
        machine=here,
    )
    speed, machine_tasks = meta.machine_speed(here)
    from .monitoring import record_prediction

    record_prediction(meta.own_store, profile, ranking, source="recommend")
    if not any(r.feasible for r in ranking):

        def lowest(key: str, flag: str, limit: float | None, unit: str) -> list[str]:
            r = min(ranking, key=lambda r: r.expected_performance[key]["mean"])
            return (
                [
                    f"{flag} {limit:g} {unit} (lowest expected: {r.method}, {r.expected_performance[key]['mean']:.0f} "
                    f"{unit})"
                ]
                if limit
                else []
            )

        limits = lowest("peak_memory_mb", "--max-memory", max_memory, "MB") + lowest(
            "train_time_s", "--max-time", max_time, "s"
        )
        raise MetapeftError(
            f"no method is expected to keep within {' and '.join(limits)}{' together' if len(limits) > 1 else ''}; "
            "raise a limit"
        )
    similar = meta.similar(profile)
    if as_json:
        _print_json(
            {
                "task": profile["task_name"],
                "fingerprint": profile["fingerprint"],
                "model": profile["model"].get("name"),
                "experience": {"runs": len(meta.experiences()), "tasks": len({c.group for c in meta.cells()[0]})},
                "machine": {"key": here, "time_factor": round(speed, 4), "tasks": machine_tasks},
                "recommendations": [r.as_dict() for r in ranking],
                "similar_tasks": [vars(s) for s in similar],
            }
        )
        return
    kind = (
        f"{profile['num_classes']} classes"
        if profile["task_type"] != "causal_lm"
        else f"causal LM on {backend}; accuracy = exact match"
    )
    steps = ranking[0].hyperparameters.get("max_steps")
    table = Table(
        title=f"methods for {profile['task_name']} ({profile['dataset_size']} examples, {kind}) at {steps} training "
        "steps — 90% intervals"
    )
    for column in ("#", "method", "P(best)", "accuracy %", "collapse risk", "train s", "peak MB", "settings"):
        table.add_column(column)
    for r in ranking:
        e = r.expected_performance
        searched = get_method(
            r.method
        ).search_space()  # a setting the method cannot change (head-only's encoder lr) says nothing
        head = (
            ("head_learning_rate",) if profile["task_type"] != "causal_lm" else ()
        )  # a causal LM has no classification head
        shown = {
            k: v
            for k, v in r.hyperparameters.items()
            if k in searched
            and k in ("learning_rate", *head, "r", "num_virtual_tokens", "target_modules", "init_r", "target_r")
        }
        short = {"learning_rate": "lr", "head_learning_rate": "head_lr", "target_modules": "modules"}
        settings = " ".join(
            f"{short.get(k, k)}={v:.2g}" if isinstance(v, float) else f"{short.get(k, k)}={v}"
            for k, v in shown.items()
        )
        style = None if r.feasible else "dim"
        table.add_row(
            str(r.rank),
            r.method,
            f"{r.confidence:.2f}",
            _interval(e["accuracy"], ".1f", 100),
            f"{r.collapse_risk:.0%}",
            _interval(e["train_time_s"], ".0f"),
            _interval(e["peak_memory_mb"], ".0f"),
            settings,
            style=style,
        )
    if not all(r.feasible for r in ranking):
        table.caption = "dimmed: expected to exceed your limits"
    out.print(table)
    from .prior import prior_enabled

    measured = " (the shipped prior's: one CPU thread per run)" if prior_enabled(meta.include_prior) else ""
    out.print(
        f"[dim]train s is for this machine as your latest run here used it ({here}): runs of {machine_tasks} "
        f"task(s) on it make its runs take {speed:.2g}x the experience's times{measured}; peak MB is as the "
        "experience's runs measured it[/]"
        if machine_tasks
        else f"[dim]train s and peak MB are as the experience's runs measured them{measured}; your first runs on this "
        "machine, of any task, will scale the times to it[/]",
        highlight=False,
    )
    for r in ranking[:3]:
        out.print(f"[bold]{r.method}[/]: {r.reasoning}", highlight=False)
    out.print(
        "similar past tasks: "
        + ", ".join(f"{s.task} (best {s.best_method} {100 * s.best_accuracy:.1f}%)" for s in similar),
        highlight=False,
    )


@app.command()
def similar(
    data: DataArgument,
    k: Annotated[int, typer.Option("-k", help="How many similar tasks.")] = 5,
    model: ModelOption = None,
    store: StoreOption = None,
    prior: PriorOption = None,
    as_json: JsonOption = False,
    text_column: TextColumn = None,
    pair_column: PairColumn = None,
    label_column: LabelColumn = None,
) -> None:
    """The past tasks nearest to a task in the learned task embedding, with their best methods."""
    if k < 1:
        raise MetapeftError(f"-k must be at least 1, got {k}")
    meta = _meta(store, prior, model)
    profile = _task_profile(meta, data, text_column, pair_column, label_column)
    found = meta.similar(profile, k)
    if as_json:
        _print_json([vars(s) for s in found])
        return
    table = Table(title=f"tasks similar to {profile['task_name']}")
    for column in ("task", "distance", "best method", "best accuracy", "runner-up"):
        table.add_column(column)
    for s in found:
        second = list(s.scores.items())[1] if len(s.scores) > 1 else ("—", 0.0)
        table.add_row(
            s.task,
            f"{s.distance:.3f}",
            s.best_method,
            f"{100 * s.best_accuracy:.1f}",
            f"{second[0]} {100 * second[1]:.1f}",
        )
    out.print(table)


@app.command(name="map")
def task_map(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for map.png and index.html.")] = Path(
        "metapeft-map"
    ),
    store: StoreOption = None,
    prior: PriorOption = None,
    as_json: JsonOption = False,
) -> None:
    """A 2-D map of all past tasks in the learned embedding, coloured by their best method (PNG + HTML)."""
    from .report import render_map

    meta = _meta(store, prior)
    points = meta.task_map()
    files = render_map(points, output)
    if as_json:
        _print_json({"points": points, "files": [str(f) for f in files]})
        return
    console.print(f"mapped {len(points)} task instances; open {output / 'index.html'}")


@app.command()
def check(
    data: DataArgument,
    method: Annotated[str, typer.Option("--method", "-m", help="The method you will train (see `metapeft methods`).")],
    sets: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set",
            help="Your setting key=value (repeatable); the rest are the method's defaults.",
            show_default=False,
        ),
    ] = None,
    model: ModelOption = None,
    store: StoreOption = None,
    prior: PriorOption = None,
    as_json: JsonOption = False,
    text_column: TextColumn = None,
    pair_column: PairColumn = None,
    label_column: LabelColumn = None,
) -> None:
    """How risky your own setting of a method is on a task (collapse risk, expected accuracy) and what to change."""
    from .methods import get_method

    hyperparameters = _parse_sets(sets or [])
    get_method(method).make_config(
        hyperparameters
    )  # a setting outside the method's range is refused before anything loads
    meta = _meta(store, prior, model)
    profile = _task_profile(meta, data, text_column, pair_column, label_column)
    result = meta.check(profile, method, hyperparameters)
    if as_json:
        _print_json(result.as_dict())
        return
    e = result.expected_accuracy
    colour = {"low": "green", "moderate": "yellow", "high": "red"}[result.verdict]
    out.print(
        f"{method} on {result.task}: collapse risk [{colour}]{result.collapse_risk:.0%} ({result.verdict})[/] — the "
        f"experience's base rate is {result.base_rate:.0%}; expected accuracy {100 * e['mean']:.1f}% (90% interval "
        f"{100 * e['low']:.1f}–{100 * e['high']:.1f})"
    )
    for note in result.notes:
        out.print(f"[yellow]note:[/] {note}", highlight=False)
    if not result.suggestions:
        out.print(
            "no single change lowers the risk without lowering the expected accuracy"
            if result.verdict != "low"
            else "nothing to change"
        )
    for s in result.suggestions:
        what = {"defaults": "use the defaults", "suggested": "use the setting `metapeft recommend` suggests"}.get(
            s["kind"], "set"
        )
        change = " ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["change"].items())
        out.print(
            f"  {what} {change}: risk {s['collapse_risk']:.0%}, expected accuracy {100 * s['expected_accuracy']:.1f}%",
            highlight=False,
        )
    if result.evidence:
        failed = sum(e["failed"] for e in result.evidence)
        out.print(f"the past runs of {method} nearest your setting ({failed} of {len(result.evidence)} failed):")
    for e in result.evidence:
        where = "your data" if e["task_distance"] is None else f"{e['task']} (task distance {e['task_distance']:.2f})"
        shown = {k: v for k, v in e["differs"].items() if k in hyperparameters or k == "max_steps"}
        differs = ", ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
        if len(e["differs"]) > len(shown):
            differs += f"{', ' if differs else ''}{len(e['differs']) - len(shown)} other settings differ"
        outcome = "[red]failed[/]" if e["failed"] else "did not fail"
        out.print(
            f"  {where}, {differs or 'your setting'}: {100 * e['accuracy']:.1f}% (chance {100 * e['chance']:.1f}%), "
            f"{outcome}",
            highlight=False,
        )


@app.command()
def evaluate(
    store: StoreOption = None,
    prior: PriorOption = None,
    own: OwnOption = True,
    methods: Annotated[
        Optional[str],
        typer.Option(
            "--methods",
            help="Comma-separated methods the selection may choose from \\[default: all].",
            show_default=False,
        ),
    ] = None,
    peft_only: Annotated[
        bool,
        typer.Option(
            "--peft-only",
            help="Choose only among PEFT methods (adapters and virtual tokens: no full fine-tuning, no head-only).",
        ),
    ] = False,
    max_memory: Annotated[
        Optional[float],
        typer.Option(
            "--max-memory", help="Choose only runs whose measured peak memory is within this (MB).", show_default=False
        ),
    ] = None,
    few_shot: Annotated[
        int,
        typer.Option(
            "--few-shot", help="Also measure conditioning on this many observed runs of the held-out task (0 = skip)."
        ),
    ] = 2,
    min_methods: Annotated[
        int, typer.Option("--min-methods", help="Methods a task instance needs run to be scored.")
    ] = 5,
    experience: ExperienceFileOption = None,
    held_out: Annotated[
        Optional[str],
        typer.Option(
            "--held-out",
            help="Comma-separated tasks to hold out and score, one at a time \\[default: every task].",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[
        Optional[int],
        typer.Option(
            "--steps",
            help="Score only the task instances trained for this many steps \\[default: every step budget].",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Leave-one-task-out evaluation of the recommendation: paired gains over LoRA at defaults and full fine-tuning, \
regret, disaster rate, calibration."""
    from .experience import task_group
    from .meta import Constraint
    from .meta import evaluate as run_evaluation

    if few_shot < 0:
        raise MetapeftError(f"--few-shot must be 0 or positive, got {few_shot}")
    if steps is not None and steps < 1:
        raise MetapeftError(f"--steps must be a positive number of training steps, got {steps}")
    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    constraint = _options(Constraint, methods=names, peft_only=peft_only, max_memory_mb=max_memory)
    records = _experience(store, prior, own, experience)
    held = [t.strip() for t in held_out.split(",") if t.strip()] if held_out else None
    if held and (unknown := sorted(set(held) - {task_group(r) for r in records})):
        raise MetapeftError(f"--held-out names tasks without runs in the experience: {', '.join(unknown)}")
    with _progress("leave-one-task-out", transient=True) as bar:
        job = bar.add_task("evaluate", total=None, info="")
        try:
            result = run_evaluation(
                records,
                constraint=constraint,
                few_shot=few_shot,
                min_methods=min_methods,
                held_out=held,
                steps=steps,
                progress=lambda i, n, task: bar.update(job, completed=i, total=n, info=task),
            )
        except ValueError as exc:
            raise MetapeftError(
                f"cannot evaluate: {exc} (run `metapeft bench`, or drop --no-prior or METAPEFT_PRIOR=0)"
            ) from None
    if as_json:
        _print_json(result)
        return
    sel = result["selectors"]
    table = Table(
        title="Paired gain of each choice over what a user runs otherwise, in accuracy points "
        f"({result['constraint']}; leave-one-task-out over {result['tasks']} tasks, {result['cells']} task instances)"
    )
    for column in (
        "selector",
        "over LoRA at defaults",
        "p",
        "won",
        "over full fine-tuning",
        "p",
        "won",
        "over the median choice",
    ):
        table.add_column(column)

    def gain(g: dict) -> str:
        return (
            "—"
            if not g.get("tasks")
            else f"{g['mean_gain']:+.2f} [{g['interval_90'][0]:+.2f}, {g['interval_90'][1]:+.2f}] ({g['tasks']} tasks)"
        )

    for name, r in sel.items():
        lora, full, median = (r["paired"][ref]["all"] for ref in ("lora_defaults", "full_finetuning", "median"))
        table.add_row(
            name,
            gain(lora),
            f"{lora.get('wilcoxon_p', float('nan')):.3f}",
            f"{100 * lora.get('win_rate', 0):.0f}%",
            gain(full),
            f"{full.get('wilcoxon_p', float('nan')):.3f}",
            f"{100 * full.get('win_rate', 0):.0f}%",
            gain(median),
        )
    ceiling = [result["ceiling"][ref]["all"] for ref in ("lora_defaults", "full_finetuning", "median")]
    table.add_row(
        "[dim]best run in hindsight (ceiling)[/dim]",
        gain(ceiling[0]),
        "",
        "",
        gain(ceiling[1]),
        "",
        "",
        gain(ceiling[2]),
    )
    out.print(table)
    out.print(
        "[dim]mean over tasks [90% interval, resampling tasks]; p: one-sided Wilcoxon over tasks (gain > 0); won: "
        "share of tasks with a gain (ties half); the ceiling is the best allowed run of each instance, chosen knowing "
        "its test accuracy[/dim]"
    )
    table = Table(title="Regret (best run of the instance minus the chosen run, points)")
    for column in (
        "selector",
        "mean",
        "cross-fitted",
        "disaster rate (> 5)",
        "worst instance",
        "top-1",
        "NDCG",
        *(f"mean at {s}" for s in result["sizes"]),
    ):
        table.add_column(column)
    for name, r in sel.items():
        cf = r.get("cross_fitted_regret")
        table.add_row(
            name,
            f"{r['mean_regret']:.2f}",
            "—" if cf is None else f"{cf:.2f}",
            f"{100 * r['disaster_rate']:.0f}%",
            f"{r['worst_cell_regret']:.1f} ({r['worst_cell']})",
            f"{100 * r['top1']:.0f}%",
            f"{r['ndcg']:.3f}",
            *(f"{r['by_size'][str(s)].get('mean_regret', float('nan')):.2f}" for s in result["sizes"]),
        )
    out.print(table)
    rep, curse = result["replicates"], result["winners_curse"]
    out.print(
        f"cross-fitted: on {rep['cells']} instances trained on two seeds, the pick scored on one seed against the "
        "configuration best on the other (a selector knowing the true accuracies scores ≤ 0); copying the other "
        "seed's winner has plain regret "
        f"{'—' if rep['other_seed_winner_regret'] is None else format(rep['other_seed_winner_regret'], '.2f')}. "
        "Winner's-curse offset of plain regret (test-set noise alone; the same for every selector, not a bound): "
        f"{curse['mean_regret']:.2f}.",
        highlight=False,
    )
    crossed = rep.get("other_seed_winner_gain_over_lora_defaults") or {}
    if crossed.get("all"):
        ours_gain = (sel.get("metapeft") or {}).get("cross_fitted_gain_over_lora_defaults", {}).get("all")
        by_size = ", ".join(f"{v['mean']:+.2f} at {k}" for k, v in crossed.items() if k != "all")
        out.print(
            "cross-fitted gain over LoRA at its defaults (chosen on one seed, scored on the other): "
            + (f"metapeft {ours_gain['mean']:+.2f}; " if ours_gain else "")
            + f"the other seed's winner, the ceiling without the winner's curse, {crossed['all']['mean']:+.2f} "
            f"({crossed['all']['tasks']} tasks; {by_size}).",
            highlight=False,
        )
    ours = sel.get("metapeft")
    if ours:
        others = ", ".join(
            f"{key} {100 * ours[f'coverage_90_{key}']:.1f}%"
            for key in ("time", "memory")
            if ours.get(f"coverage_90_{key}") is not None
        )
        out.print(
            f"metapeft: ECE of the best-method confidence {ours['ece']:.3f} ({ours['ece_ties_as_wins']:.3f} scoring a "
            f"tie for best as a win); 90% intervals cover {100 * ours['coverage_90']:.1f}% of held-out runs' accuracy "
            f"(median width {ours['interval_width_90_median']:.1f} points)" + (f" ({others})" if others else "")
        )
        if len(ours.get("intervals_by_size", {})) > 1:
            out.print(
                "  by training-set size: "
                + "; ".join(
                    f"{size} examples {100 * v['coverage_90']:.1f}% at {v['interval_width_90_median']:.1f} points"
                    for size, v in ours["intervals_by_size"].items()
                ),
                highlight=False,
            )
    if fs := result.get("few_shot"):
        out.print(
            f"few-shot ({fs['observed_runs']} observed runs, {fs['cells']} instances): accuracy error "
            f"{fs['mae_zero_shot']:.1f} → {fs['mae_conditioned']:.1f} points, 90% interval coverage "
            f"{100 * fs['coverage_zero_shot']:.0f}% → {100 * fs['coverage_conditioned']:.0f}% (median width "
            f"{fs['width_zero_shot']:.1f} → {fs['width_conditioned']:.1f} points); by training-set size: "
            + "; ".join(
                f"{size} examples {100 * v['coverage_conditioned']:.1f}% at {v['width_conditioned']:.1f} points"
                for size, v in fs["by_size"].items()
            ),
            highlight=False,
        )


ObjectivesOption = Annotated[
    str, typer.Option("--objectives", help="Comma-separated objectives among accuracy, train_time, peak_memory.")
]
PreferOption = Annotated[
    str, typer.Option("--prefer", help="Which Pareto configuration to pick: accuracy, time or memory.")
]
MaxMemoryOption = Annotated[
    Optional[float],
    typer.Option("--max-memory", help="Pick only configurations within this peak memory (MB).", show_default=False),
]
MaxTimeOption = Annotated[
    Optional[float],
    typer.Option("--max-time", help="Pick only configurations within this training time (s).", show_default=False),
]


def _objectives(text: str) -> tuple[str, ...]:
    names = {
        "accuracy": "accuracy",
        "train_time": "train_time_s",
        "train_time_s": "train_time_s",
        "time": "train_time_s",
        "peak_memory": "peak_memory_mb",
        "peak_memory_mb": "peak_memory_mb",
        "memory": "peak_memory_mb",
    }
    out = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if item not in names:
            raise MetapeftError(f"--objectives: unknown objective {item!r}; use accuracy, train_time, peak_memory")
        out.append(names[item])
    return tuple(out)


# a config field whose flag is named otherwise (the field carries its unit; the flag is shorter)
FLAGS = {"study_name": "study", "max_memory_mb": "max_memory", "max_time_s": "max_time"}


def _options(cls, flags: dict[str, str] | None = None, **values):
    """A library config object built from command-line values; an option error names the flag the user typed."""
    try:
        return cls(**values)
    except OptionError as exc:
        raise OptionError({**FLAGS, **(flags or {})}.get(exc.option, exc.option), exc.problem) from None


def _print_trial(t) -> None:
    switched = "".join(f" → {w['to']} at step {w['step']}" for w in t.switches)
    console.print(
        f"trial {t.number}: {t.method}{switched} ({t.source}) accuracy {t.metrics.get('accuracy', float('nan')):.4f}, "
        f"{t.metrics.get('train_time_s', 0):.0f} s {'— pruned' if t.state == 'PRUNED' else ''}",
        highlight=False,
    )


def _trial_table(trials, pick, title: str) -> Table:
    table = Table(title=title)
    for column in ("trial", "state", "method", "proposed by", "accuracy", "train s", "peak MB", "lr"):
        table.add_column(column)
    for t in trials:
        m = t.metrics
        fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "—"  # noqa: E731
        star = " ★" if pick is not None and t.number == pick.number else ""
        table.add_row(
            f"{t.number}{star}",
            t.state,
            t.method or "—",
            t.source or "—",
            fmt(m.get("accuracy"), ".4f"),
            fmt(m.get("train_time_s"), ".1f"),
            fmt(m.get("peak_memory_mb"), ".0f"),
            _searched_lr(t.method, t.hyperparameters, fmt),
        )
    return table


def _searched_lr(method: str | None, hyperparameters: dict, fmt) -> str:
    """The learning rate the search set: head-only's encoder rate is fixed at 0, its head's is the one searched."""
    from .methods import get_method

    if method and "learning_rate" not in get_method(method).search_space():
        return "head " + fmt(hyperparameters.get("head_learning_rate"), ".2g")
    return fmt(hyperparameters.get("learning_rate"), ".2g")


@app.command()
def tune(
    data: DataArgument,
    trials: Annotated[
        Optional[int],
        typer.Option(
            "--trials",
            "-n",
            help="Trials in total (over every process sharing the study) \\[default: 10 unless --time-budget].",
            show_default=False,
        ),
    ] = None,
    time_budget: Annotated[
        Optional[float],
        typer.Option("--time-budget", help="Stop starting trials after this many seconds.", show_default=False),
    ] = None,
    objectives: ObjectivesOption = "accuracy",
    methods: Annotated[
        Optional[str],
        typer.Option(
            "--methods", help="Comma-separated methods to search \\[default: the whole zoo].", show_default=False
        ),
    ] = None,
    max_steps: Annotated[
        Optional[int],
        typer.Option(
            "--max-steps",
            help="Training steps of each trial \\[default: about 5 epochs, 80..320 steps].",
            show_default=False,
        ),
    ] = None,
    sampler: Annotated[
        str, typer.Option("--sampler", help="meta (warm-started by the meta-learner), or cold: gp, tpe, random.")
    ] = "meta",
    storage: Annotated[
        Optional[str],
        typer.Option(
            "--storage",
            help="Optuna RDB storage URL shared by cooperating processes \\[default: SQLite in the data dir].",
            show_default=False,
        ),
    ] = None,
    study: Annotated[
        Optional[str],
        typer.Option(
            "--study",
            help="Study name: processes with the same --storage and --study share one search \\[default: new].",
            show_default=False,
        ),
    ] = None,
    prefer: PreferOption = "accuracy",
    max_memory: MaxMemoryOption = None,
    max_time: MaxTimeOption = None,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune/--no-prune",
            help="Stop bad trials early from their learning curves (with --objectives accuracy only).",
        ),
    ] = True,
    eval_size: Annotated[
        int,
        typer.Option(
            "--eval-size",
            help="Held-out examples evaluated at each trial's learning-curve points (the pruner reads them).",
        ),
    ] = 300,
    final_eval_size: Annotated[
        int,
        typer.Option(
            "--final-eval-size",
            help="Held-out examples (at most) for each trial's final accuracy, which the pick compares (0 = all).",
        ),
    ] = 1000,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Sampler seed.", show_default=False)] = None,
    model: ModelOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
    text_column: TextColumn = None,
    pair_column: PairColumn = None,
    label_column: LabelColumn = None,
    switch: SwitchOption = False,
    switch_threshold: SwitchThresholdOption = DEFAULT_SWITCH_THRESHOLD,
    data_rev: DataRevOption = None,
    backend: BackendOption = "torch",
) -> None:
    """Search methods and hyperparameters (Bayesian, warm-started by the meta-learner); Pareto set, plot and a pick.
    With a causal LM as --model, the task is generation, searched over the methods --backend has."""
    from .backends import is_causal_model, load_for_causal
    from .experience import ExperienceStore
    from .search import SearchConfig
    from .search import tune as run_tune
    from .training import RunConfig, SwitchPolicy

    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    run = _options(RunConfig, model=model, eval_size=eval_size, final_eval_size=final_eval_size, backend=backend)
    causal = backend != "torch" or is_causal_model(model)
    if causal and (switch or data_rev):
        raise MetapeftError(
            f"{'--switch' if switch else '--data-rev'}: not available for causal LMs yet (a classification encoder as "
            "--model takes it)"
        )
    if causal and not is_causal_model(model):
        raise MetapeftError(
            f"--backend {backend} trains causal LMs: give --model (a Llama folder, e.g. from `metapeft model "
            "import-llama2c`)"
        )
    config = _options(
        SearchConfig,
        trials=trials,
        time_budget=time_budget,
        objectives=_objectives(objectives),
        methods=names,
        max_steps=max_steps,
        sampler=sampler,
        storage=storage,
        study_name=study,
        prefer=prefer,
        max_memory_mb=max_memory,
        max_time_s=max_time,
        prune=prune,
        seed=seed,
        run=run,
        switch=_options(SwitchPolicy, {"threshold": "switch_threshold"}, threshold=switch_threshold)
        if switch
        else None,
    )
    task = load_for_causal(data) if causal else _load(data, text_column, pair_column, label_column, data_rev=data_rev)
    with console.status(f"searching {task.name}…") as status:

        def on_trial(t) -> None:
            _print_trial(t)
            status.update(f"searching {task.name}… {t.number + 1} trials done")

        result = run_tune(task, config, store=ExperienceStore(store), on_trial=on_trial)
    if as_json:
        _print_json(result.as_dict())
        return
    out.print(
        _trial_table(
            result.pareto, result.pick, f"Pareto set of {result.study} ({len(result.trials)} trials; ★ = pick)"
        )
    )
    if result.files:
        console.print(f"plot and table: {result.files[-1]}")


@app.command()
def autotune(
    data: DataArgument,
    trials: Annotated[int, typer.Option("--trials", "-n", help="Search trials.")] = 4,
    search_steps: Annotated[
        Optional[int],
        typer.Option(
            "--search-steps",
            help="Training steps of each search trial \\[default: about 5 epochs, 80..320 steps].",
            show_default=False,
        ),
    ] = None,
    final_steps: Annotated[
        Optional[int],
        typer.Option(
            "--final-steps",
            help="Training steps of the final run of the pick \\[default: about 5 epochs, 80..320 steps].",
            show_default=False,
        ),
    ] = None,
    time_budget: Annotated[
        Optional[float],
        typer.Option("--time-budget", help="Stop starting search trials after this many seconds.", show_default=False),
    ] = None,
    objectives: ObjectivesOption = "accuracy,train_time,peak_memory",
    prefer: PreferOption = "accuracy",
    max_memory: MaxMemoryOption = None,
    max_time: MaxTimeOption = None,
    name: Annotated[
        Optional[str],
        typer.Option("--name", help="Registered model name \\[default: metapeft-<task>].", show_default=False),
    ] = None,
    model: ModelOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
    text_column: TextColumn = None,
    pair_column: PairColumn = None,
    label_column: LabelColumn = None,
    meta_init: MetaInitOption = True,
    switch: SwitchOption = False,
    switch_threshold: SwitchThresholdOption = DEFAULT_SWITCH_THRESHOLD,
    data_rev: DataRevOption = None,
) -> None:
    """Profile → recommend → tune → train the pick → register it in MLflow's model registry with the decision."""
    from .experience import ExperienceStore
    from .search import SearchConfig
    from .search import autotune as run_autotune
    from .training import SwitchPolicy

    config = _options(
        SearchConfig,
        {"max_steps": "search_steps"},
        trials=trials,
        time_budget=time_budget,
        objectives=_objectives(objectives),
        max_steps=search_steps,
        prefer=prefer,
        max_memory_mb=max_memory,
        max_time_s=max_time,
        run=_options(SearchConfig.trial_run, model=model),
        switch=_options(SwitchPolicy, {"threshold": "switch_threshold"}, threshold=switch_threshold)
        if switch
        else None,
    )
    task = _load(data, text_column, pair_column, label_column, data_rev=data_rev)
    with console.status(f"autotuning {task.name}…") as status:
        result = run_autotune(
            task,
            config,
            final_steps=final_steps,
            store=ExperienceStore(store),
            registered_name=name,
            meta_init=meta_init,
            on_stage=lambda text: status.update(text + "…"),
            on_trial=_print_trial,
        )
    if as_json:
        _print_json(result.as_dict())
        return
    f = result.final
    if result.search is None:
        out.print(
            f"{f['method']} adapted from the meta-initialisation ({f['hyperparameters']['shots']} examples per "
            f"label): accuracy {f['metrics']['accuracy']:.4f}; adapter {f['adapter_path']}",
            highlight=False,
        )
    else:
        out.print(
            _trial_table(
                result.search.pareto, result.search.pick, f"Pareto set ({len(result.search.trials)} trials; ★ = pick)"
            )
        )
        out.print(
            f"recommended: {result.recommended['method']} (P(best) {result.recommended['confidence']:.2f}); picked: "
            f"{f['method']} — accuracy {f['metrics']['accuracy']:.4f} after {f['metrics']['steps']} steps; adapter "
            f"{f['adapter_path']}",
            highlight=False,
        )
    if result.registered:
        out.print(
            f"registered as {result.registered['name']} version {result.registered['version']} in MLflow's model "
            "registry",
            highlight=False,
        )


@app.command()
def adapt(
    data: DataArgument,
    shots: Annotated[
        int, typer.Option("--shots", "-k", help="Training examples drawn per label (seeded, stratified).")
    ] = 8,
    init: Annotated[
        str,
        typer.Option(
            "--init",
            help="meta (the shipped meta-initialisation), random (the method's own), or a folder `meta-train` wrote.",
        ),
    ] = "meta",
    method: Annotated[
        Optional[str],
        typer.Option("--method", "-m", help="PEFT method \\[default: the initialisation's].", show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Draws the examples and the adaptation's batches.")] = 0,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            help="New or empty folder for the adapter \\[default: a new run folder].",
            show_default=False,
        ),
    ] = None,
    model: ModelOption = None,
    store: StoreOption = None,
    track: TrackOption = True,
    as_json: JsonOption = False,
    text_column: TextColumn = None,
    pair_column: PairColumn = None,
    label_column: LabelColumn = None,
) -> None:
    """Learn a task from a few examples per label, starting from a meta-learned PEFT initialisation."""
    from .experience import ExperienceStore

    if shots < 1:
        raise MetapeftError(f"--shots must be at least 1, got {shots}")
    task = _load(data, text_column, pair_column, label_column)
    _adapt_few_shot(
        task,
        seed=seed,
        model=model,
        output=output,
        store=ExperienceStore(store),
        track=track,
        as_json=as_json,
        shots=shots,
        init=init,
        method=method,
    )


@app.command()
def serve(
    host: Annotated[
        str, typer.Option("--host", help="Interface to bind; 0.0.0.0 exposes the server to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    store: StoreOption = None,
    alias: Annotated[
        str, typer.Option("--alias", help="Registry alias of the selector version to serve.")
    ] = "champion",
    reload_s: Annotated[
        float, typer.Option("--reload-s", help="Seconds between looks at the alias for a new version.")
    ] = 30.0,
) -> None:
    """Serve the selector over HTTP: /v1/recommend, /v1/similar, /v1/methods, /v1/experiences (token), /health, \
/metrics."""
    from .serving import SelectorHolder, ServeConfig, create_app

    config = ServeConfig(host=host, port=port, store=store, alias=alias, reload_s=reload_s)
    import uvicorn
    from threadpoolctl import threadpool_limits

    # concurrency comes from the requests, each ranked in a thread of its own: a BLAS pool per call oversubscribes
    threadpool_limits(1)

    with console.status("loading the selector from the model registry…"):
        holder = SelectorHolder(config.alias)
        served = holder.current()
    console.print(
        f"serving metapeft-selector version {served.version} (@{config.alias}) on http://{config.host}:{config.port} "
        "(docs at /docs); writes "
        f"{'need the token in METAPEFT_API_TOKEN' if config.token else 'are disabled: METAPEFT_API_TOKEN is not set'}",
        highlight=False,
        soft_wrap=True,
    )
    # uvicorn picks uvloop and httptools (dependencies) over asyncio and h11 (part of what took a remembered answer's
    # p95 from 104 to 16 ms at concurrency 16, BENCHMARKS.md)
    uvicorn.run(create_app(config, holder), host=config.host, port=config.port, log_level="warning", access_log=False)


def _champion_tags() -> dict:
    """The @champion selector's tags (its offline figures set the alert thresholds); empty, with a note, when the
    tracking store cannot be read (monitoring then uses the shipped selector's figures)."""
    from .serving import version_tags

    try:
        return version_tags()
    except Exception as exc:  # the registry is a refinement here, not a requirement
        console.print(
            "[yellow]note:[/] thresholds from the shipped selector's figures: the model registry could not be read "
            f"({type(exc).__name__})"
        )
        return {}


@app.command()
def monitor(
    store: StoreOption = None,
    window: Annotated[int, typer.Option("--window", help="Most recent values each figure is taken over.")] = 50,
    min_matches: Annotated[int, typer.Option("--min-matches", help="Values a figure needs before it can alert.")] = 10,
    webhook: Annotated[
        Optional[str],
        typer.Option("--webhook", help="POST the alert as JSON to this URL when one fires.", show_default=False),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Compare the selector's recorded predictions with the runs that followed; exit 3 and suggest retraining when
    a figure is past its threshold."""
    from .experience import ExperienceStore
    from .monitoring import Thresholds, send_alert
    from .monitoring import monitor as run_monitor

    if webhook is not None and not webhook.startswith(("http://", "https://")):
        raise MetapeftError(f"--webhook must be an http(s) URL, got {webhook!r}")
    report = run_monitor(
        ExperienceStore(store), Thresholds.for_selector(_champion_tags(), window=window, min_matches=min_matches)
    )
    if as_json:
        _print_json(report.as_dict())
    else:
        table = Table(
            title=f"selector monitoring: {report.predictions} predictions, {report.matched_runs} runs after them"
        )
        for column in ("figure", "value", "over", "threshold", "state"):
            table.add_column(column)
        for f in report.figures:
            state = (
                "[red]ALERT[/]" if f.alert else ("ok" if f.value is not None and f.count >= min_matches else "too few")
            )
            table.add_row(
                f.name,
                "—" if f.value is None else f"{f.value:.3g}",
                str(f.count),
                f"{'≥' if f.direction == 'min' else '≤'} {f.threshold:.3g}",
                state,
            )
        out.print(table)
    if report.alerts:
        for alert in report.alerts:
            console.print(f"[bold red]alert:[/] {alert}", highlight=False, soft_wrap=True)
        console.print(report.suggestion, highlight=False, soft_wrap=True)
        if webhook:
            send_alert(report, webhook)
        raise typer.Exit(3)


def _experience(store: str | None, prior: bool | None, own: bool, experience: Path | None) -> list:
    """The runs a command learns from: the prior (unless switched off) and the store's or an export file's runs."""
    from .experience import ExperienceStore, read_jsonl
    from .prior import experiences

    if experience is not None:
        return experiences(None, include_prior=prior, include_own=False) + (read_jsonl(experience) if own else [])
    return experiences(ExperienceStore(store) if own else None, include_prior=prior, include_own=own)


@app.command()
def fit(
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Folder to write the selector to (surrogate.safetensors, experience.jsonl.gz)."
        ),
    ],
    store: StoreOption = None,
    prior: PriorOption = None,
    own: Annotated[
        bool, typer.Option("--own/--no-own", help="Include your own runs (from the store or --experience).")
    ] = True,
    experience: ExperienceFileOption = None,
) -> None:
    """Fit the selector on experience and write it as files (what a DVC pipeline versions; `register-selector`
    registers them)."""
    from .meta import MetaPEFT

    records = _experience(store, prior, own, experience)
    with console.status(f"fitting the selector on {len(records)} runs…"):
        meta = MetaPEFT(experiences=records).fit()
        meta.save(output)
    console.print(f"selector fitted on {len(meta.experiences())} runs written to {output}", highlight=False)


@app.command(name="register-selector")
def register_selector(
    folder: Annotated[Path, typer.Argument(help="Selector folder written by `metapeft fit`.")],
    alias: Annotated[
        str, typer.Option("--alias", help="Registry alias to set on the new version: challenger or champion.")
    ] = "challenger",
    as_json: JsonOption = False,
) -> None:
    """Register a fitted selector (from `metapeft fit`) as a new version of metapeft-selector in MLflow's registry."""
    from .meta import MetaPEFT
    from .serving import CHALLENGER, CHAMPION, log_selector

    if alias not in (CHALLENGER, CHAMPION):
        raise MetapeftError(f"--alias must be {CHALLENGER} or {CHAMPION}, got {alias!r}")
    version = log_selector(MetaPEFT.load(folder), tags={"metapeft.origin": "register-selector"}, alias=alias)
    if as_json:
        _print_json({"version": version, "alias": alias})
    else:
        out.print(f"registered metapeft-selector version {version} as @{alias}", highlight=False)


@app.command()
def retrain(
    store: StoreOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Promote the new selector to @champion whatever the comparison says.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Refit the selector on all experience, compare it with @champion on tasks the champion never saw, register it
    as @challenger and promote it to @champion if it is not worse."""
    from .experience import ExperienceStore
    from .serving import retrain as run_retrain

    with console.status("retraining the selector…") as status:
        result = run_retrain(ExperienceStore(store), force=force, progress=lambda text: status.update(text + "…"))
    if as_json:
        _print_json(result.as_dict())
        return
    verdict = (
        f"promoted: version {result.challenger_version} is @champion"
        if result.promoted
        else f"version {result.challenger_version} is @challenger; version {result.champion_version} stays @champion"
    )
    out.print(f"{result.reason}\n{verdict}", highlight=False)


@app.command(name="meta-train")
def meta_train_command(
    suite: Annotated[Path, typer.Argument(help="Suite manifest (MANIFEST.json) or the folder holding it.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder of the meta-initialisation (a killed run resumes there).")
    ],
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config", help="YAML file of options (any option below; the command line wins).", show_default=False
        ),
    ] = None,
    method: Annotated[
        Optional[str], typer.Option("--method", "-m", help="PEFT method \\[default: lora].", show_default=False)
    ] = None,
    shots: Annotated[
        Optional[str],
        typer.Option(
            "--shots",
            help="K per episode, drawn from these (comma-separated) \\[default: 4,8,16].",
            show_default=False,
        ),
    ] = None,
    exclude: Annotated[
        Optional[str],
        typer.Option(
            "--exclude", help="Comma-separated suite tasks never used (your evaluation tasks).", show_default=False
        ),
    ] = None,
    iterations: Annotated[
        Optional[int], typer.Option("--iterations", help="Outer updates \\[default: 300].", show_default=False)
    ] = None,
    algorithm: Annotated[
        Optional[str], typer.Option("--algorithm", help="reptile or fomaml \\[default: reptile].", show_default=False)
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option("--seed", help="Seeds episodes, batches and dropout \\[default: 0].", show_default=False),
    ] = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Log to MLflow and register the result.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Meta-learn a PEFT initialisation over a suite's tasks (Reptile), for `adapt`."""
    from .fewshot import MetaTrainConfig, meta_train

    overrides = {
        "method": method,
        "iterations": iterations,
        "algorithm": algorithm,
        "seed": seed,
        "shots": [int(k) for k in shots.split(",") if k.strip()] if shots else None,
        "exclude": [t.strip() for t in exclude.split(",") if t.strip()] if exclude else None,
    }
    cfg = (
        MetaTrainConfig.from_yaml(config, **overrides)
        if config
        else MetaTrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    )
    with _progress("meta-train", transient=as_json) as bar:
        job = bar.add_task("meta-train", total=cfg.iterations, info="")

        def update(i: int, total: int, numbers: dict) -> None:
            info = f"query acc {numbers['query_accuracy']:.3f}" + (
                f" · validation {numbers['validation_accuracy']:.3f}" if "validation_accuracy" in numbers else ""
            )
            bar.update(job, completed=i, total=total, info=info)

        result = meta_train(suite, cfg, output, track=track, on_iteration=update)
    if as_json:
        _print_json({k: v for k, v in vars(result).items() if k != "history"})
        return
    curve = "  ".join(f"{v['iteration']}:{v['accuracy']:.3f}" for v in result.validation)
    console.print(
        f"meta-initialisation in {result.output} after {result.iterations} iterations; validation accuracy by "
        f"iteration: {curve}"
        + (
            f"; registered as {result.model_version and 'metapeft-fewshot-init version ' + result.model_version}"
            if result.model_version
            else ""
        )
    )


@experience_app.command("list")
def experience_list(
    store: StoreOption = None,
    method: Annotated[Optional[str], typer.Option(help="Only this method.", show_default=False)] = None,
    task: Annotated[Optional[str], typer.Option(help="Only this task name.", show_default=False)] = None,
    status: Annotated[
        Optional[str], typer.Option(help="finished, failed, interrupted or running.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest).")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List stored experiences."""
    from .experience import STATUSES, ExperienceStore

    if status is not None and status not in STATUSES:
        raise MetapeftError(f"--status must be one of {', '.join(STATUSES)}, got {status!r}")
    if limit < 1:
        raise MetapeftError(f"--limit must be at least 1, got {limit}")
    records = ExperienceStore(store).query(method=method, task=task, status=status)[-limit:]
    if as_json:
        _print_json([r.as_dict() for r in records])
        return
    table = Table(title=f"{len(records)} experiences")
    for column in ("id", "created", "status", "task", "method", "model", "accuracy", "train s", "peak MB"):
        table.add_column(column)
    for r in records:
        m = r.metrics
        fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "—"  # noqa: E731
        table.add_row(
            r.id[:8],
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            r.status,
            r.task_name,
            r.method,
            r.model,
            fmt(m.get("accuracy"), ".4f"),
            fmt(m.get("train_time_s"), ".1f"),
            fmt(m.get("peak_memory_mb"), ".0f"),
        )
    out.print(table)


@model_app.command("import-llama2c")
def model_import_llama2c(
    source: Annotated[
        Path, typer.Argument(help="llama2.c checkpoint (.bin) or the folder holding it and its tokenizer (tok*.bin).")
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="New folder for the Hugging Face Llama checkpoint (safetensors + tokenizer.json)."
        ),
    ],
    checkpoint: Annotated[
        Optional[str],
        typer.Option(
            "--checkpoint", help="The checkpoint's file name, when the folder holds several.", show_default=False
        ),
    ] = None,
    tokenizer: Annotated[
        Optional[str],
        typer.Option(
            "--tokenizer", help="The tokenizer's file name \\[default: the folder's tok*.bin].", show_default=False
        ),
    ] = None,
) -> None:
    """Convert a llama2.c checkpoint (e.g. tinyllamas stories260K) into a Hugging Face Llama folder that transformers
    and mlx-lm load (`--model DIR`)."""
    from .models import import_llama2c

    with console.status(f"converting {source}…"):
        folder = import_llama2c(source, output, checkpoint=checkpoint, tokenizer=tokenizer)
    console.print(f"wrote {folder} (config.json, model.safetensors, tokenizer.json)", highlight=False)


@data_app.command("track")
def data_track(path: Annotated[Path, typer.Argument(help="Dataset file or folder to version.")]) -> None:
    """Version a dataset with `dvc add` (a DVC repository is initialised when none holds it: at the git root, or with
    --no-scm beside the data outside git) and print its .dvc file."""
    from .tasks import track

    dvcfile = track(path)
    sys.stdout.write(dvcfile.read_text())
    console.print(
        f"wrote {dvcfile}; in git, commit it (and .gitignore) so that --data-rev can read this version later",
        highlight=False,
    )


@experience_app.command("export")
def experience_export(
    path: Annotated[Path, typer.Argument(help="JSONL file to write.")], store: StoreOption = None
) -> None:
    """Write every experience to a JSONL file (gzip-compressed if the name ends in .gz)."""
    from .experience import ExperienceStore

    n = ExperienceStore(store).export_jsonl(path)
    console.print(f"exported {n} experiences to {path}")


@experience_app.command("import")
def experience_import(
    path: Annotated[Path, typer.Argument(help="JSONL (or .jsonl.gz) file written by `experience export`.")],
    store: StoreOption = None,
) -> None:
    """Add experiences from a JSONL export (records already present are skipped)."""
    from .experience import ExperienceStore

    added, skipped = ExperienceStore(store).import_jsonl(path)
    console.print(f"imported {added} experiences ({skipped} already present)")


@experience_app.command("import-peft-results")
def experience_import_peft(
    folder: Annotated[
        Path, typer.Argument(help="Folder of HF PEFT method-comparison result JSONs (searched recursively).")
    ],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import Hugging Face PEFT method-comparison results as experiences."""
    from .experience import ExperienceStore, read_peft_results

    records = read_peft_results(folder)
    added = ExperienceStore(store).add_many(records)
    summary = {"files": len(records), "added": added, "already_present": len(records) - added}
    if as_json:
        _print_json(summary)
    else:
        console.print(
            f"read {len(records)} result files: {added} new experiences, {len(records) - added} already present"
        )


def run() -> None:
    """Console-script entry point. Typer's standalone mode prints usage errors itself (exit 2); our errors
    and unusable paths become one line (exit 2); anything else is a bug, reported in one line too (exit 1)."""
    interrupt_once()  # Ctrl-C or SIGTERM → KeyboardInterrupt → run marked interrupted
    try:
        app()
    except SystemExit as exc:
        if exc.code == 130:  # Typer turns KeyboardInterrupt into a silent exit 130: say why the work stopped
            console.print("[yellow]interrupted[/]")
        raise
    except MetapeftError as exc:
        # a library option error names the field (eval_size); here the user typed its flag (--eval-size)
        message = f"--{exc.option.replace('_', '-')} {exc.problem}" if isinstance(exc, OptionError) else str(exc)
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("METAPEFT_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.filename is not None:  # a path given that cannot be read or written
            console.print(
                f"[bold red]error:[/] cannot use {escape(str(exc.filename))}: {escape(exc.strerror or str(exc))}; "
                "check the path and its permissions",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(2)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {first} (set METAPEFT_DEBUG=1 for the traceback; "
            "please report it)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
