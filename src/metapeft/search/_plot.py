"""The Pareto picture of a search: every trial's accuracy against training time, memory as colour, the Pareto set
ringed and the pick starred (PNG), and one HTML page with the table."""

from __future__ import annotations

import base64
import html
import textwrap
from pathlib import Path

from ..methods import BUDGET_FIELDS


def render_pareto(result, folder: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    done = [
        t for t in result.trials if t.metrics.get("accuracy") is not None and t.metrics.get("train_time_s") is not None
    ]
    pareto = {t.number for t in result.pareto}
    fig, ax = plt.subplots(figsize=(8, 5))
    points = ax.scatter(
        [t.metrics["train_time_s"] for t in done],
        [t.metrics["accuracy"] for t in done],
        c=[t.metrics.get("peak_memory_mb") or 0 for t in done],
        cmap="viridis",
        s=40,
        zorder=2,
    )
    fig.colorbar(points, ax=ax, label="peak memory (MB)")
    front = sorted((t for t in done if t.number in pareto), key=lambda t: t.metrics["train_time_s"])
    ax.scatter(
        [t.metrics["train_time_s"] for t in front],
        [t.metrics["accuracy"] for t in front],
        s=160,
        facecolors="none",
        edgecolors="crimson",
        label="Pareto set",
        zorder=3,
    )
    for t in done:
        ax.annotate(
            f"{t.number}:{t.method}",
            (t.metrics["train_time_s"], t.metrics["accuracy"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    if result.pick is not None and result.pick.metrics.get("train_time_s") is not None:
        ax.scatter(
            [result.pick.metrics["train_time_s"]],
            [result.pick.metrics["accuracy"]],
            marker="*",
            s=260,
            color="gold",
            edgecolors="black",
            label="pick",
            zorder=4,
        )
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("accuracy")
    title = f"{result.study}: {len(done)} trials, objectives {', '.join(result.objectives)}"
    ax.set_title(
        "\n".join(textwrap.wrap(title, 60)), fontsize=10, loc="left"
    )  # a long study name is wrapped, never cut
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out / "pareto.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)

    def row(t) -> str:
        m = t.metrics
        cells = [
            t.number,
            t.method,
            t.source or "",
            f"{m.get('accuracy', 0):.4f}",
            f"{m.get('train_time_s', 0):.1f}",
            f"{m.get('peak_memory_mb', 0):.0f}",
            ", ".join(f"{k}={v}" for k, v in t.hyperparameters.items() if k not in BUDGET_FIELDS),
            t.adapter_path or "",
        ]
        mark = " style='font-weight:bold'" if result.pick is not None and t.number == result.pick.number else ""
        return f"<tr{mark}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"

    shown = list(result.pareto)
    if result.pick is not None and result.pick.number not in {
        t.number for t in shown
    }:  # limits can keep the pick off the front
        shown.append(result.pick)
    page = out / "index.html"
    page.write_text(f"""<!doctype html><html><head><meta charset="utf-8">\
<title>metapeft search {html.escape(result.study)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}\
td,th{{padding:2px 8px;text-align:left;font-size:13px}}img{{max-width:100%}}</style></head><body>
<h1>Search {html.escape(result.study)}</h1><p>Sampler {html.escape(result.sampler)}; {len(result.trials)} trials; \
the pick (bold) is trial
{result.pick.number if result.pick else "—"}.</p>\
<img src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" alt="Pareto plot">
<h2>Pareto set{" and the pick (within the limits)" if len(shown) > len(result.pareto) else ""}</h2>\
<table><tr><th>trial</th><th>method</th><th>proposed by</th><th>accuracy</th><th>train s</th><th>peak MB</th>\
<th>settings</th><th>adapter</th></tr>
{"".join(row(t) for t in shown)}</table></body></html>""")
    return [png, page]
