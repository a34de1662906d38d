"""The HTML page of ``tfclip compare --html``: the comparison table and one bar chart per score, with error bars
(sample std) for groups of seeds. Figures are drawn with matplotlib's Agg backend and embedded as PNG data URIs,
so the page is one self-contained file."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from tfclip_cli import __version__  # noqa: E402
from tfclip_cli.compare import Comparison, cells, headers  # noqa: E402
from tfclip_cli.tables import atomic_output  # noqa: E402

# Okabe & Ito's colour-blind-safe palette (black left out: it is the error-bar colour).
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
TEMPLATES = Path(__file__).resolve().parent / "templates"
CHARTED = ("best mAP", "best rank1", "best mINP")  # the scores that get a chart, per test set


def charted_scores(comparison: Comparison) -> list[str]:
    """The score columns drawn as charts: best mAP, rank-1 and mINP of every test set."""
    return [name for name in comparison.score_names if name.endswith(CHARTED)]


def bar_chart(comparison: Comparison, score: str) -> bytes:
    """PNG of one score: a bar per row (mean over its runs, %), error bar = sample std of a group."""
    rows = [row for row in comparison.rows if score in row.scores]
    figure, axes = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 1.5), 3.2), dpi=100)
    positions = range(len(rows))
    means = [100 * row.scores[score].mean for row in rows]
    errors = [100 * row.scores[score].std for row in rows]
    colours = [OKABE_ITO[index % len(OKABE_ITO)] for index in positions]
    axes.bar(positions, means, yerr=errors, capsize=4, color=colours, edgecolor="black", linewidth=0.5,
             error_kw={"ecolor": "black", "elinewidth": 1})
    axes.set_xticks(list(positions), [row.label for row in rows], rotation=30, ha="right", fontsize=8)
    axes.set_xlabel("run (groups of seeds: mean ± std)")
    axes.set_ylabel(f"{score.rsplit(' ', 1)[-1]} (%)")
    axes.set_title(score)
    axes.set_ylim(0, max([100.0 * 0.05, *(m + e for m, e in zip(means, errors))]) * 1.1)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def render_compare_html(comparison: Comparison) -> str:
    """The page as a string."""
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    charts = [{"title": score, "png": base64.b64encode(bar_chart(comparison, score)).decode()}
              for score in charted_scores(comparison)]
    return environment.get_template("compare.html.j2").render(
        headers=headers(comparison), rows=[cells(comparison, row) for row in comparison.rows],
        has_unfinished=any(not row.is_finished for row in comparison.rows), charts=charts, version=__version__,
    )


def write_compare_html(comparison: Comparison, out: Path, *, force: bool = False) -> None:
    """Write the page atomically (an existing file only with ``force``)."""
    html = render_compare_html(comparison)
    with atomic_output(out, force=force) as temp:
        temp.write_text(html, encoding="utf-8")
