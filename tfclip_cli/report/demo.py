"""The demo's report: before / after metrics, the training curves, the CMC curve after training, the query's
ranked hits, and (the footage step) one walker's hits in the camera network with their timeline across cameras,
on one page."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

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


TIMELINE_CROP_MARGIN = 0.25  # share of the box added on each side of a key frame's person crop


def key_crop(frame: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray | None:
    """The person in ``frame`` (``[H, W, 3]``): ``box`` widened by :data:`TIMELINE_CROP_MARGIN` and clipped to the
    frame; None when nothing of it is inside."""
    x1, y1, x2, y2 = box
    dx, dy = TIMELINE_CROP_MARGIN * (x2 - x1), TIMELINE_CROP_MARGIN * (y2 - y1)
    height, width = frame.shape[:2]
    left, top = max(0, int(x1 - dx)), max(0, int(y1 - dy))
    right, bottom = min(width, int(np.ceil(x2 + dx))), min(height, int(np.ceil(y2 + dy)))
    return frame[top:bottom, left:right] if right > left and bottom > top else None


def timeline_figure(person: Any, frames: Mapping[int, np.ndarray], *, query: Any) -> str:
    """The SVG of ``person``'s timeline (a ``people.timeline.Person``): each visit with a known time on its
    camera's row, its key frame's person crop above it (``frames``: visit number → ``[1, H, W, 3]``), the visit
    that holds the ``query`` tracklet's time (a ``tables.Tracklet`` cut from footage) marked."""
    timed = [(n, v) for n, v in enumerate(person.visits) if v.start_time is not None and v.end_time is not None]
    origin = min((v.start_time for _, v in timed), default=0.0)
    crops = []
    for number, visit in timed:
        frame = frames.get(number)
        has_frame = frame is not None and len(frame) and visit.key_frame is not None
        crops.append(key_crop(frame[0], visit.key_frame.box) if has_frame else None)
    seen = query.origin
    queried = next((i for i, (_, v) in enumerate(timed) if seen is not None and v.camid == query.camid
                    and v.start_time < seen.end_time and seen.start_time < v.end_time), None)
    figure = plots.person_timeline([v.camid for _, v in timed], [v.start_time - origin for _, v in timed],
                                   [v.end_time - origin for _, v in timed], key_frames=crops, queried=queried,
                                   title=f"Person {person.person_id} across cameras (linked by tfclip link)",
                                   time_label=f"seconds after {display.clock_time(origin)} UTC")
    return plots.svg(figure)


def _footage_view(footage: Any) -> dict:
    """What the template shows of the demo's footage step (a ``demo.FootageDemo``)."""
    walker, person = footage.query_tracklet, footage.person
    found = "no linked person among the hits" if person is None else (
        f"the best hit is person {person.person_id}, seen by camera(s) {', '.join(map(str, person.cameras))}")
    frames = {} if person is None else {n: f for (p, n), f in footage.answer.visit_frames.items()
                                        if p == person.person_id}
    return {
        "detector": footage.detector, "tracklets": footage.tracklets, "people": len(footage.link.people),
        "threshold": footage.link.threshold,
        "walker": f"walker {walker.pid} as camera {walker.camid} saw them ({walker.num_frames} frames); "
                  f"the walker passes camera(s) {', '.join(map(str, footage.true_cameras))}; {found}",
        "query": query_view(footage.result),
        "timeline": None if person is None else inline_svg(timeline_figure(person, frames, query=walker)),
        "timeline_caption": "" if person is None else display.plain(display.visits_text(person)),
    }


def write_demo_report(out: Path, *, run_dir: Path, before: EvalResult, after: EvalResult, embeddings: Embeddings,
                      query: Any, footage: Any) -> Path:
    """Write the demo's page to ``out`` (replacing an older one).

    Args:
        run_dir: the training run (its metrics.csv gives the curves).
        before, after: the held-out scores of the initial and the trained model.
        embeddings: the trained model's query and gallery embeddings (ranked again for the CMC curve).
        query: the ``index.QueryResult`` of the demo's query video.
        footage: the ``demo.FootageDemo`` of the camera network.
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
        footage=_footage_view(footage),
    )
    return write_page(page, out)
