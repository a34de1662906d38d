"""Everything a person sees: rich consoles (results on stdout, logs and progress on stderr), progress bars, logging."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
from rich.console import Console, ConsoleDimensions, Group
from rich.logging import RichHandler
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    ProgressColumn,
    Task,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

T = TypeVar("T")

OKABE_ITO = {
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
    "black": "#000000",
}
"""The Okabe-Ito palette (Okabe & Ito, "Color Universal Design", 2008): colours told apart by people with any
common colour-vision deficiency; every figure and drawn video takes its colours from it."""

PLAIN_WIDTH = 100_000
"""Line width off a terminal: a pipe, a log file or a test's capture gets every line whole, whatever COLUMNS says."""


class _Console(Console):
    """A rich console that lays out at the terminal's width, and off a terminal as wide as the lines are."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(PLAIN_WIDTH, size.height)


stdout = _Console()
stderr = _Console(stderr=True)


def plain(value: object) -> str:
    """``value`` as text safe to print: the bytes of a name that is not UTF-8 as ``\\xNN``, and control characters
    (ESC, newlines) as escapes, so a file name can neither break the output's encoding nor drive the terminal."""
    text = str(value)
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no file name produced
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


def plain_text(value: object, style: str = "") -> Text:
    """:func:`plain` as a rich Text: never read as markup (``[/x]`` in a name stays text) and never wrapped."""
    return Text(plain(value), style=style, no_wrap=True, overflow="ignore")


def is_main_process() -> bool:
    """False on every torchrun rank but rank 0: only rank 0 logs and shows progress."""
    return int(os.environ.get("RANK", "0")) == 0


class _PlainMessages(logging.Filter):
    """Log messages through :func:`plain`: paths in them print escaped, never raw bytes or terminal codes."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = plain(record.getMessage()), None
        return True


class _LineHandler(logging.Handler):
    """Off a terminal: one ``LEVEL    message`` line per record (rich's handler pads lines to the width)."""

    def emit(self, record: logging.LogRecord) -> None:
        stderr.print(Text(f"{record.levelname:<8} {self.format(record)}"), soft_wrap=True, highlight=False)


def setup_logging(verbose: bool = False) -> None:
    """Route library logs to stderr, through rich on a terminal and as plain lines elsewhere; quiet on non-zero
    ranks."""
    level = logging.DEBUG if verbose else logging.INFO
    if not is_main_process():
        level = logging.WARNING
    if stderr.is_terminal:
        handler: logging.Handler = RichHandler(console=stderr, show_path=False, show_time=False, markup=False)
    else:
        handler = _LineHandler()
    handler.addFilter(_PlainMessages())
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # "Loading faiss with AVX512 support" on every run


class _RateColumn(ProgressColumn):
    """Items per second, e.g. ``12.3 tracklets/s``."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> str:
        return f"{task.speed:.1f} {self.unit}/s" if task.speed else f"- {self.unit}/s"


def _progress_columns(unit: str) -> list[ProgressColumn]:
    return [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]


def progress(
    items: Iterable[T], description: str, *, total: int | None = None, unit: str = "it"
) -> Iterator[T]:
    """Iterate ``items`` with a progress bar on stderr (items/s and ETA); silent off a terminal or off rank 0."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if not (stderr.is_terminal and is_main_process()):
        yield from items
        return
    columns = _progress_columns(unit)
    with Progress(*columns, console=stderr, transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


@contextlib.contextmanager
def progress_board(
    descriptions: Sequence[str], totals: Sequence[int | None], *, unit: str
) -> Iterator[Callable[[int, int], None]]:
    """One progress bar per job running at once (e.g. a video per worker process); yields ``advance(job, steps)``.
    Silent off a terminal or off rank 0."""
    if not (stderr.is_terminal and is_main_process()):
        yield lambda job, steps: None
        return
    with Progress(*_progress_columns(unit), console=stderr, transient=False) as bar:
        tasks = [bar.add_task(d, total=t) for d, t in zip(descriptions, totals)]
        yield lambda job, steps: bar.advance(tasks[job], steps)


class StatusBar:
    """A progress bar with a status line, for loops whose steps carry news (e.g. training losses and lr).

    Use as a context manager; :meth:`advance` moves the bar by ``steps`` (the rate column counts those steps, e.g.
    clips/s) and may replace the status text. Silent off a terminal and off rank 0, like :func:`progress`.
    """

    def __init__(self, description: str, *, total: int, unit: str) -> None:
        self._is_shown = stderr.is_terminal and is_main_process()
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            _RateColumn(unit),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=stderr,
            transient=False,
            disable=not self._is_shown,
        )
        self._task = self._bar.add_task(description, total=total, status="")

    def __enter__(self) -> "StatusBar":
        self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.stop()

    @property
    def is_shown(self) -> bool:
        """False where the bar stays silent: callers then log their news instead."""
        return self._is_shown

    def advance(self, steps: float, *, status: str | None = None) -> None:
        """Move by ``steps``; replace the status text unless ``status`` is None."""
        fields = {} if status is None else {"status": status}
        self._bar.update(self._task, advance=steps, **fields)


def query_table(result: Any) -> Table:
    """A rich table of one ``index.QueryResult``: rank, score, pid, camid, tracklet_id, source; for hits cut from
    footage also the time range and key frame in the source video (the ``footage`` column)."""
    table = Table(title=plain_text(f"query {result.source} ({result.num_frames} frames)"), title_justify="left")
    has_footage = any(hit.origin is not None for hit in result.hits)
    names = ("rank", "score", "pid", "camid", "tracklet_id", "source") + (("footage",) if has_footage else ())
    for name in names:
        table.add_column(name, justify="right" if name in ("rank", "score", "pid", "camid") else "left")
    for hit in result.hits:
        footage = (plain_text(footage_label(hit.origin)),) if has_footage else ()
        table.add_row(str(hit.rank), f"{hit.score:.4f}", str(hit.pid), str(hit.camid), plain_text(hit.tracklet_id),
                      plain_text(hit.source), *footage)
    if result.threshold is not None:
        matches = sum(bool(hit.match) for hit in result.hits)
        table.caption = (
            f"{matches} match(es) scoring >= {result.threshold:.4f}" if matches
            else f"no match: no hit scores >= {result.threshold:.4f}"
        )
    return table


def det_table(calibration: Any, *, gallery: str) -> Table:
    """The DET table of an ``index.SearchCalibration``: threshold, FPIR and FNIR at each target FPIR; the stored
    threshold in the title."""
    table = Table(
        "target FPIR", "threshold", "FPIR", f"FNIR (rank {calibration.rank})",
        title=plain_text(
            f"{gallery}: threshold {calibration.threshold:.4f} at FPIR {calibration.fpir:g} (measured "
            f"{calibration.measured_fpir:.4f}), FNIR {100 * calibration.fnir:.1f}% at rank {calibration.rank}"
        ),
        title_justify="left",
        caption=f"{calibration.nonmated_searches:,} non-mated and {calibration.mated_searches:,} mated searches; "
                f"the gallery held {calibration.gallery_rows:,} tracklets",
    )
    for point in calibration.det:
        unresolved = "" if point.is_resolved else " (too few searches)"
        table.add_row(f"{point.target_fpir:g}{unresolved}", f"{point.threshold:.4f}", f"{point.fpir:.4f}",
                      f"{100 * point.fnir:.1f}%")
    return table


def people_query_table(result: Any, people: Mapping[int, Any]) -> Table:
    """A rich table of one ``index.QueryResult`` on a linked gallery: the hits grouped by person (best rank first),
    each group headed by the person's timeline; hits of no person stand alone."""
    table = Table("person", "rank", "score", "camid", "tracklet_id", "footage / timeline (UTC)",
                  title=plain_text(f"query {result.source} ({result.num_frames} frames): people"),
                  title_justify="left")
    groups: dict[object, list] = {}
    for hit in result.hits:
        groups.setdefault(hit.person if hit.person is not None else ("hit", hit.rank), []).append(hit)
    for key, hits in groups.items():
        person = people.get(key) if isinstance(key, int) else None
        if person is not None:
            table.add_row(plain_text(str(key), "bold"), "", "", "", f"{len(hits)} hit(s)",
                          plain_text(visits_text(person), "bold"))
        for hit in hits:
            table.add_row("" if person is not None else "-", str(hit.rank), f"{hit.score:.4f}", str(hit.camid),
                          plain_text(hit.tracklet_id), plain_text(footage_label(hit.origin)))
        table.add_section()
    return table


def footage_label(origin: Any) -> str:
    """Where a ``tables.FootageOrigin`` is: video name, time range, key frame and its box; "-" for None."""
    if origin is None:
        return "-"
    box = ",".join(f"{v:.0f}" for v in origin.key_box)
    return (f"{os.path.basename(origin.source_video)} {origin.start_s:.1f}-{origin.end_s:.1f}s "
            f"key frame {origin.key_frame} box {box}")


def draw_box(frame: np.ndarray, box: Sequence[float], *, colour: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """A copy of ``frame`` [H, W, 3] with the x1, y1, x2, y2 pixel ``box`` outlined, 2 pixels wide."""
    out = frame.copy()
    height, width = out.shape[:2]
    x1, y1 = (max(0, int(round(v))) for v in box[:2])
    x2, y2 = min(width - 1, int(round(box[2]))), min(height - 1, int(round(box[3])))
    for edge in (np.s_[y1:y1 + 2, x1:x2 + 1], np.s_[max(y1, y2 - 1):y2 + 1, x1:x2 + 1],
                 np.s_[y1:y2 + 1, x1:x1 + 2], np.s_[y1:y2 + 1, max(x1, x2 - 1):x2 + 1]):
        out[edge] = colour
    return out


def tracking_table(summary: Any) -> Table:
    """One row per video of ``tfclip track``'s :class:`~tfclip_cli.footage.tracklets.TrackingSummary`."""
    how = "motion + appearance" if summary.relinked else "motion only"
    table = Table(
        "video", "camid", "frames", "tracks", "tracklets", "static", "frames/s",
        title=f"{summary.tracklets} tracklets under {summary.out} (detector {summary.detector}, {how}); "
        f"{summary.static} static left out",
        title_justify="left",
    )
    for video in summary.videos:
        table.add_row(
            os.path.basename(video.video), str(video.camid), f"{video.frames:,}", str(video.tracks),
            str(video.tracklets), str(video.static), f"{video.speed:.1f}",
        )
    return table


def track_scores_table(evaluation: Any, title: str) -> Table:
    """``tfclip evaluate-tracks``' :class:`~tfclip_cli.footage.metrics.NetworkEvaluation`: a row per camera, then
    the network's multi-camera scores (MOTA and switches are per camera only)."""
    table = Table("camera", "MOTA", "IDF1", "HOTA", "DetA", "AssA", "ID switches", title=title, title_justify="left")
    for camid, scores in evaluation.cameras.items():
        table.add_row(str(camid), *(f"{100 * getattr(scores, name):.1f}%" for name in ("mota", "idf1", "hota",
                      "deta", "assa")), str(scores.id_switches))
    network = evaluation.network
    table.add_section()
    table.add_row("network", "", *(f"{100 * getattr(network, name):.1f}%" for name in ("idf1", "hota", "deta",
                  "assa")), "", style="bold")
    return table


def clock_time(seconds: float | None) -> str:
    """Seconds since the epoch as a UTC time of day, ``12:03:05``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).strftime("%H:%M:%S")


def visits_text(person: Any) -> str:
    """A person's timeline on one line: ``cam2 12:03:05-12:03:20 → cam4 12:04:10-12:04:31``."""
    return " → ".join(f"cam{v.camid} {clock_time(v.start_time)}-{clock_time(v.end_time)}" for v in person.visits)


def link_table(summary: Any) -> Table:
    """One row per person of ``tfclip link``'s :class:`~tfclip_cli.people.link.LinkSummary`, seen by several
    cameras first."""
    people = sorted(summary.people, key=lambda p: (-len(p.cameras), p.person_id))
    table = Table("person", "cameras", "tracklets", "timeline (UTC)",
                  title=plain_text(f"{len(people)} people from {summary.tracklets} tracklets in {summary.out} "
                                   f"(threshold {summary.threshold:.3f}, {summary.threshold_from}; camera graph: "
                                   f"{summary.graph or 'none'})"), title_justify="left")
    for person in people:
        table.add_row(str(person.person_id), str(len(person.cameras)),
                      str(sum(len(v.tracklet_ids) for v in person.visits)), plain_text(visits_text(person)))
    return table


DEMO_NEXT_STEPS = """\
[bold]# MARS with OpenAI's CLIP ViT-B/16 weights (downloaded once; train on a GPU)[/]
tfclip prepare mars /data/MARS --out mars.parquet
tfclip train recipes/mars.yaml --set data.manifest=mars.parquet \\
    --set run.output_dir=runs/mars
tfclip extract -c runs/mars/best.ckpt --manifest mars.parquet \\
    --out mars-emb.parquet
tfclip evaluate mars-emb.parquet
tfclip index mars-emb.parquet --out mars.faiss
tfclip query person.mp4 --gallery mars.faiss --html report.html

[bold]# your own footage: ROOT/<split>/<pid>/<camid>/<video or frame folder>[/]
tfclip prepare folder /data/my-cameras --out mine.parquet
tfclip train recipes/mars.yaml --set data.manifest=mine.parquet \\
    --set run.output_dir=runs/mine
tfclip extract -c runs/mine/best.ckpt --manifest mine.parquet \\
    --out mine-emb.parquet
tfclip index mine-emb.parquet --out mine.faiss
tfclip query person.mp4 --gallery mine.faiss --html report.html

[bold]# raw camera video: track the people, index them, find each person[/]
tfclip track cam1_lobby.mp4 cam2_street.mp4 --out footage/
tfclip prepare footage footage/ --out footage.parquet
tfclip extract -c runs/mine/best.ckpt --manifest footage.parquet \\
    --out footage-emb.parquet
tfclip index footage-emb.parquet --out footage.faiss
tfclip query street.mp4 --gallery footage.faiss --person 1 --html report.html"""
"""Shown after the demo: the same pipeline on real data (rich markup; every line fits 80 columns)."""


def _demo_metrics_table(result: Any) -> Table:
    """Before/after training metrics of a ``demo.DemoResult`` on the held-out identities."""
    after = result.after
    table = Table(title=f"{after.num_query} held-out queries vs {after.num_gallery} gallery tracklets",
                  title_justify="left")
    for name in ("metric", "before training", "after training", "change"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    for name, label in (("mAP", "mAP"), ("rank1", "rank-1"), ("rank5", "rank-5"), ("mINP", "mINP")):
        before, trained = 100 * getattr(result.before, name), 100 * getattr(after, name)
        table.add_row(label, f"{before:.1f}%", f"[bold]{trained:.1f}%[/]", f"{trained - before:+.1f}")
    return table


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def demo_summary(result: Any) -> Group:
    """What ``tfclip demo`` prints for a ``demo.DemoResult``: metrics before and after training, the query's top
    hits, the report's path, the time each step took, and the commands to run on real data."""
    query = result.query_tracklet
    ranks = [hit.rank for hit in result.query.hits if hit.pid == query.pid]
    found = f"found at rank {ranks[0]}" if ranks else f"not in the top {len(result.query.hits)}"
    steps = " · ".join(f"{name} {_duration(seconds)}" for name, seconds in result.timings.items())
    return Group(
        _demo_metrics_table(result),
        Text(f"trained {result.training.epochs_done} epochs on {result.device}; time per step: {steps}", style="dim"),
        query_table(result.query),
        plain_text(f"the query is held-out identity {query.pid} ({query.tracklet_id}): {found}"),
        *_demo_footage(result.footage),
        plain_text(f"report: {result.paths.report}"),
        Panel(DEMO_NEXT_STEPS, title="what next", title_align="left", expand=False),
    )


def timeline_table(person: Any, *, title: str) -> Table:
    """A row per visit of a ``people.timeline.Person``: camera, from, to (UTC), seconds, tracklets."""
    table = Table("camera", "from (UTC)", "to (UTC)", "seconds", "tracklets", title=plain_text(title),
                  title_justify="left")
    for visit in person.visits:
        known = visit.start_time is not None and visit.end_time is not None
        table.add_row(f"cam{visit.camid}", clock_time(visit.start_time), clock_time(visit.end_time),
                      f"{visit.end_time - visit.start_time:.1f}" if known else "?",
                      plain_text(", ".join(visit.tracklet_ids)))
    return table


def _demo_footage(footage: Any) -> list[Any]:
    """The demo's footage step (a ``demo.FootageDemo``): how it was tracked and linked, the walker's hits grouped
    by person, and the timeline of the person found."""
    walker, person, link = footage.query_tracklet, footage.person, footage.link
    cameras = len({visit.camid for someone in link.people for visit in someone.visits})
    parts: list[Any] = [plain_text(
        f"camera network: {footage.tracklets} tracklets tracked in {cameras} cameras, linked into "
        f"{len(link.people)} people (threshold {link.threshold:.3f}, camera graph)")]
    if footage.detector == "gt":
        parts.append(Text("tracked with --detector gt: the ground truth replayed with a detector's faults (misses, "
                          "false alarms, jittered boxes); the bundled detectors (SSDLite, HOG) miss most drawn "
                          "walkers", style="yellow"))
    parts.append(people_query_table(footage.result, footage.answer.people))
    truth = ", ".join(map(str, footage.true_cameras))
    if person is None:
        parts.append(plain_text(f"walker {walker.pid} (cameras {truth}): the best hit is linked to no person"))
        return parts
    parts.append(timeline_table(person, title=f"walker {walker.pid}, searched as camera {walker.camid} saw them, is "
                                f"person {person.person_id}: {len(person.cameras)} camera(s) (the walker passes "
                                f"cameras {truth})"))
    return parts


def memory_table(inspection: Any) -> Table:
    """A rich table of an ``alignment.MemoryInspection``: distributions of norms and cosines, one row each."""
    table = Table("measure", "mean", "std", "min", "5%", "median", "95%", "max", "n",
                  title=plain_text(f"CLIP-Memory of {inspection.checkpoint}: {inspection.num_identities} identities "
                                   f"x {inspection.dim}"), title_justify="left")
    rows = [("memory norm", inspection.norms), ("cosine between identities", inspection.inter_identity_cosine)]
    rows += [(f"cosine to text {item.prompt!r}", item.cosine) for item in inspection.prompts]
    if inspection.random_cosine is not None:
        rows.append(("cosine to random directions", inspection.random_cosine))
    for name, values in rows:
        if values is None:
            table.add_row(plain_text(name), *["-"] * 8)
            continue
        table.add_row(plain_text(name), *(f"{getattr(values, f):.3f}" for f in
                                          ("mean", "std", "min", "p05", "median", "p95", "max")), str(values.count))
    table.caption = (f"a random direction's cosine with any vector: 0 ± {inspection.random_expected_std:.3f}"
                     if inspection.prompts else "pass --clip-weights (full CLIP with text tower) for text cosines")
    return table
