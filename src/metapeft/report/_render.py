"""Pictures and pages of the analysis: PNG plots, one self-contained HTML page and a markdown summary."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd

from ._analysis import frame


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def render(summary: dict, records, out_dir: str | Path) -> list[Path]:
    """Write the plots, ``index.html`` and ``summary.md`` into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = frame(records)
    if df.empty:
        raise ValueError("no finished runs to plot")
    plt = _plt()
    methods = sorted(df.method.unique())
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    files = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)

    # 1. How often each method wins a (task, size) cell.
    fig, ax = plt.subplots(figsize=(7, 3.6))
    wins = pd.Series(summary["wins"]).reindex(methods).fillna(0).sort_values()
    ax.barh(wins.index, wins.values, color=[colours[m] for m in wins.index])
    ax.set_xlabel(f"cells won (of {summary['cells']} task × train-size × step-budget × seed cells; ties shared)")
    ax.set_title("Which method wins")
    save(fig, "wins.png")

    # 2. Accuracy against train-set size.
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for m, by_size in summary["accuracy_by_size"].items():
        sizes = sorted(by_size, key=int)
        ax.plot([int(s) for s in sizes], [by_size[s] for s in sizes], marker="o", label=m, color=colours[m])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training examples")
    ax.set_ylabel("mean accuracy over tasks (best run per cell)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Accuracy against train-set size")
    save(fig, "accuracy_by_size.png")

    # 3. Trade-offs: accuracy relative to the cell, against time and memory.
    rel = df.accuracy - df.groupby(["task", "size", "seed"]).accuracy.transform("max")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for m in methods:
        sel = df.method == m
        axes[0].scatter(df.train_time_s[sel], rel[sel], s=10, alpha=0.6, color=colours[m], label=m)
        axes[1].scatter(df.peak_memory_mb[sel], rel[sel], s=10, alpha=0.6, color=colours[m])
    axes[0].set_xlabel("train time (s)")
    axes[1].set_xlabel("peak memory (MB)")
    axes[0].set_ylabel("accuracy − best in its cell")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("Accuracy / time / memory trade-off (every run)")
    save(fig, "tradeoffs.png")

    # 4. Gap of every method to the best, per task.
    gaps = pd.DataFrame(
        {t: {m: v["gap"] for m, v in d["by_method"].items()} for t, d in summary["per_task"].items()}
    ).T.reindex(columns=methods)
    fig, ax = plt.subplots(figsize=(8, max(4, 0.22 * len(gaps))))
    points = gaps.values.astype(float) * 100
    image = ax.imshow(points, aspect="auto", cmap="magma_r", vmin=0, vmax=max(1.0, float(np.nanmax(points))))
    for (i, j), value in np.ndenumerate(points):
        if not np.isnan(value):
            ax.text(
                j,
                i,
                f"{value:.0f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if value > 0.6 * np.nanmax(points) else "black",
            )
    ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(gaps)), gaps.index, fontsize=7)
    fig.colorbar(image, ax=ax, label="accuracy points behind the task's best method")
    ax.set_title("Gap to the best method, per task")
    save(fig, "gaps.png")

    # 5. Learning-rate sensitivity per method.
    cols = 4
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.6 * rows), squeeze=False)
    relative = df.accuracy - df.groupby(["task", "size", "seed"]).accuracy.transform("mean")
    for ax, m in zip(axes.flat, methods):
        sel = df.method == m
        lr = pd.to_numeric(
            pd.Series(
                [
                    h.get("learning_rate") if m != "head_only" else h.get("head_learning_rate")
                    for h in df.hyperparameters[sel]
                ],
                index=df.index[sel],
            ),
            errors="coerce",
        )
        ax.scatter(lr, relative[sel], s=8, alpha=0.6, color=colours[m])
        ax.set_xscale("log")
        ax.set_title(m, fontsize=9)
        ax.axhline(0, color="grey", lw=0.5)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    fig.supxlabel("learning rate (head learning rate for head_only)")
    fig.supylabel("accuracy − cell mean")
    save(fig, "lr_sensitivity.png")

    md = markdown(summary)
    (out / "summary.md").write_text(md)
    files.append(out / "summary.md")
    (out / "index.html").write_text(_html(summary, files))
    files.append(out / "index.html")
    return files


def markdown(summary: dict) -> str:
    v = summary["variation"]
    lines = [
        f"**{summary['runs']} finished runs** ({summary['failed']} failed) over **{summary['tasks']} tasks**, "
        f"{summary['cells']} task × train-size × step-budget × seed cells, {len(summary['methods'])} methods "
        f"(at least {summary['min_methods_per_task']} per task)"
        + (
            f"; {summary['partial_cells']} more cell(s) with too few methods so far left out of the comparisons."
            if summary.get("partial_cells")
            else "."
        ),
        "",
        f"- Distinct winning methods: **{v['distinct_winners']}**; the most frequent winner, {v['top_method']}, wins "
        f"{100 * v['top_method_win_share']:.0f}% of cells.",
        f"- Best single method for every cell: {v['single_best_method']}, mean regret "
        f"{100 * v['single_best_mean_regret']:.1f} "
        f"accuracy points, worst {100 * v['single_best_max_regret']:.1f}; its gap lies within the "
        "evaluation's sampling noise "
        f"(two standard errors) in {100 * v['single_best_within_noise_share']:.0f}% of cells, and on average "
        f"{v['methods_within_noise_of_best']:.1f} methods per cell are that close to the best.",
        f"- Mean spread between best and worst method in a cell: {100 * v['mean_spread_in_cell']:.1f} points; "
        + (
            f"the winner changes with train size on {100 * v['winner_changes_with_size']:.0f}% of tasks with "
            "several sizes."
            if v["winner_changes_with_size"] is not None
            else "no task has several train sizes yet."
        ),
    ]
    n = summary.get("noise", {})
    if n.get("task_sizes"):
        lines.append(
            f"- Noise (a second seed: another initialisation and data order, on some pairs another training sample "
            f"too; {n['task_sizes']} task × size pairs): "
            f"a method's accuracy moves {100 * n['mean_abs_seed_difference']:.1f} points on average (90th percentile "
            f"{100 * n['p90_abs_seed_difference']:.1f}); the winner is the same on "
            f"{100 * n['winner_agreement']:.0f}%; "
            f"choosing by the other seed's winner costs {100 * n['replicate_regret']:.1f} points of regret."
        )
    lines += [
        "",
        "| task | best method | accuracy | runner-up (gap, points) | sizes |",
        "|---|---|---|---|---|",
    ]
    for task, d in sorted(summary["per_task"].items()):
        ranked = list(d["by_method"].items())
        runner = f"{ranked[1][0]} ({100 * ranked[1][1]['gap']:.1f})" if len(ranked) > 1 else "—"
        lines.append(
            f"| {task} | {d['best_method']} | {d['best_accuracy']:.3f} | {runner} | "
            f"{', '.join(map(str, d['sizes']))} |"
        )
    lines += [
        "",
        "| method | cells won (ties shared) | mean gap to best (points) | cells covered |",
        "|---|---|---|---|",
    ]
    for m, g in summary["mean_gap"].items():
        lines.append(
            f"| {m} | {summary['wins'].get(m, 0):.1f} | {100 * g:.1f} | {100 * summary['coverage'].get(m, 0):.0f}% |"
        )
    return "\n".join(lines) + "\n"


def _html(summary: dict, files: list[Path]) -> str:
    images = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}" '
        f'alt="{p.stem}"><figcaption>{p.stem}</figcaption></figure>'
        for p in files
        if p.suffix == ".png"
    )
    rows = "".join(
        f"<tr><td>{html.escape(t)}</td><td>{html.escape(d['best_method'])}</td><td>{d['best_accuracy']:.3f}</td>"
        + "".join(
            f"<td>{100 * d['by_method'][m]['gap']:.1f}</td>" if m in d["by_method"] else "<td>—</td>"
            for m in summary["methods"]
        )
        + "</tr>"
        for t, d in sorted(summary["per_task"].items())
    )
    head = "".join(f"<th>{html.escape(m)}</th>" for m in summary["methods"])
    v = summary["variation"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>metapeft report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}\
table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}\
figure{{display:inline-block;margin:1em}}img{{max-width:560px}}</style></head>
<body><h1>metapeft report</h1>
<p>{summary["runs"]} finished runs ({summary["failed"]} failed) over {summary["tasks"]} tasks and \
{summary["cells"]} task × size × step-budget cells\
{f" (and {summary['partial_cells']} begun, left out)" if summary.get("partial_cells") else ""}.
{v["distinct_winners"]} distinct winners; {html.escape(str(v["top_method"]))} wins \
{100 * v["top_method_win_share"]:.0f}% of cells;
always choosing {html.escape(v["single_best_method"])} costs {100 * v["single_best_mean_regret"]:.1f} points \
on average (worst {100 * v["single_best_max_regret"]:.1f}),
a gap within the evaluation's sampling noise in {100 * v["single_best_within_noise_share"]:.0f}% of cells; \
{v["methods_within_noise_of_best"]:.1f} methods per cell are within that noise of the best.</p>
{images}
<h2>Per task: best method, and every method's gap to it (accuracy points)</h2>
<table><tr><th>task</th><th>best</th><th>accuracy</th>{head}</tr>{rows}</table></body></html>"""


def render_map(points: list[dict], out_dir: str | Path) -> list[Path]:
    """The learned task map: every past task instance at its 2-D position, coloured by its best method, as
    ``map.png`` and an ``index.html`` that also lists the points."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    methods = sorted({p["best_method"] for p in points})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, ax = plt.subplots(figsize=(9, 7))
    for m in methods:
        sel = [p for p in points if p["best_method"] == m]
        ax.scatter([p["x"] for p in sel], [p["y"] for p in sel], s=36, color=colours[m], label=m, alpha=0.85)
    for p in points:
        ax.annotate(p["label"], (p["x"], p["y"]), fontsize=6, alpha=0.75, xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("embedding component 1")
    ax.set_ylabel("embedding component 2")
    ax.legend(title="best method", fontsize=7)
    ax.set_title("Past tasks in the learned embedding (near = the methods rank alike)")
    fig.tight_layout()
    png = out / "map.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    rows = "".join(
        f"<tr><td>{html.escape(p['label'])}</td><td>{html.escape(str(p.get('domain') or ''))}</td>"
        f"<td>{html.escape(p['best_method'])}</td>"
        f"<td>{p['best_accuracy']:.3f}</td><td>{p['x']:.3f}</td><td>{p['y']:.3f}</td></tr>"
        for p in sorted(points, key=lambda p: p["label"])
    )
    page = out / "index.html"
    page.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>metapeft task map</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:auto}}td,th{{padding:2px 8px;text-align:left}}\
img{{max-width:100%}}</style></head><body>
<h1>Task map</h1><p>{len(points)} past task instances placed by the learned task embedding: tasks close together \
are tasks on which the
methods performed alike. Colour: the best method measured on the task.</p>
<img src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" alt="task map">
<table><tr><th>task</th><th>domain</th><th>best method</th><th>best accuracy</th><th>x</th><th>y</th></tr>\
{rows}</table></body></html>""")
    return [png, page]
