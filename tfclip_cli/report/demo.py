"""The demo's report: before / after metrics, the training curves, the CMC curve after training and the query's
ranked hits, on one page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfclip_cli import display
from tfclip_cli.evaluate import EvalResult
from tfclip_cli.report import plots
from tfclip_cli.report.evaluation import break_down
from tfclip_cli.report.query import query_view
from tfclip_cli.report.render import inline_svg, render, write_page
from tfclip_cli.report.training import METRICS_FILE, curves_caption, curves_svg, read_history
from tfclip_cli.tables import Embeddings


def _metrics(before: EvalResult, after: EvalResult) -> list[tuple[str, str, str]]:
    return [(label, f"{100 * getattr(before, name):.1f}%", f"{100 * getattr(after, name):.1f}%")
            for name, label in (("mAP", "mAP"), ("rank1", "rank-1"), ("rank5", "rank-5"), ("mINP", "mINP"))]


def write_demo_report(out: Path, *, run_dir: Path, before: EvalResult, after: EvalResult, embeddings: Embeddings,
                      query: Any) -> Path:
    """Write the demo's page to ``out`` (replacing an older one).

    Args:
        run_dir: the training run (its metrics.csv gives the curves).
        before, after: the held-out scores of the initial and the trained model.
        embeddings: the trained model's query and gallery embeddings (ranked again for the CMC curve).
        query: the ``index.QueryResult`` of the demo's query video.
    """
    history = read_history(Path(run_dir) / METRICS_FILE)
    cmc = break_down(embeddings, gallery_rule=after.gallery_rule).cmc  # type: ignore[arg-type]
    page = render(
        "demo.html.j2", title="tfclip demo", subtitle=display.plain(Path(out).parent),
        metrics=_metrics(before, after),
        curves=inline_svg(curves_svg(history)), curves_caption=curves_caption(history),
        cmc=inline_svg(plots.svg(plots.cmc_curve(cmc))),
        cmc_caption=f"{after.num_query - after.num_skipped_queries} held-out queries against {after.num_gallery} "
        "ranked tracklets: the share whose first true match is within the top k.",
        query=query_view(query),
    )
    return write_page(page, out)
