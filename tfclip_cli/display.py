"""Everything a person sees: rich consoles (results on stdout, logs and progress on stderr), progress bars, logging."""

from __future__ import annotations

import base64
import contextlib
import datetime
import html
import io
import logging
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
from PIL import Image
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


THUMBNAIL_SIZE = (128, 128)
"""Largest thumbnail (width, height) in the HTML report; frames keep their aspect ratio."""
REPORT_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #1d1d1f; background: #fafafa; }
section { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 16px; margin-bottom: 24px; }
table { border-collapse: collapse; } td, th { padding: 6px 10px; border-bottom: 1px solid #eee; text-align: left; }
img { height: 128px; margin-right: 4px; border-radius: 3px; vertical-align: middle; }
.score { font-variant-numeric: tabular-nums; } .source { color: #666; font-size: 0.85em; word-break: break-all; }
.missing { color: #999; font-style: italic; }
"""


def tracking_table(summary: Any) -> Table:
    """One row per video of ``tfclip track``'s :class:`~tfclip_cli.footage.tracklets.TrackingSummary`."""
    how = "motion + appearance" if summary.relinked else "motion only"
    table = Table(
        "video", "camid", "frames", "tracks", "tracklets", "frames/s",
        title=f"{summary.tracklets} tracklets under {summary.out} (detector {summary.detector}, {how})",
        title_justify="left",
    )
    for video in summary.videos:
        table.add_row(
            os.path.basename(video.video), str(video.camid), f"{video.frames:,}", str(video.tracks),
            str(video.tracklets), f"{video.speed:.1f}",
        )
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


def _jpeg_data_uri(frame: np.ndarray) -> str:
    """A uint8 ``[H, W, 3]`` frame as a ``data:`` URI holding a JPEG thumbnail."""
    image = Image.fromarray(frame).convert("RGB")
    image.thumbnail(THUMBNAIL_SIZE)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _frames_html(frames: np.ndarray, label: str) -> str:
    if len(frames) == 0:
        return '<span class="missing">frames unavailable</span>'
    alt = html.escape(plain(label), quote=True)
    return "".join(f'<img src="{_jpeg_data_uri(frame)}" alt="{alt}">' for frame in frames)


def _hit_frames_html(hit: Any, frames: np.ndarray) -> str:
    """A hit's key frames; for a hit cut from footage, its key frame in the source video with the box drawn."""
    if hit.origin is not None and len(frames):
        frames = np.stack([draw_box(frame, hit.origin.key_box) for frame in frames])
    return _frames_html(frames, hit.tracklet_id)


def _query_section(number: int, result: Any) -> str:
    """One query: its key frames, then a table of hits with their key frames and scores."""
    hit_frames = result.hit_key_frames or [np.zeros((0, 1, 1, 3), np.uint8)] * len(result.hits)
    rows = "".join(
        f"<tr><td>{hit.rank}</td><td class=\"score\">{hit.score:.4f}</td><td>{hit.pid}</td><td>{hit.camid}</td>"
        f"<td>{html.escape(plain(hit.tracklet_id))}<div class=\"source\">{html.escape(plain(hit.source))}</div>"
        f"{_footage_html(hit.origin)}</td><td>{_hit_frames_html(hit, frames)}</td></tr>"
        for hit, frames in zip(result.hits, hit_frames)
    )
    return (
        f"<section><h2>Query {number}: {html.escape(plain(result.source))}</h2>"
        f"<p>{result.num_frames} frames; first, middle and last:</p><p>{_frames_html(result.key_frames, 'query')}</p>"
        "<table><tr><th>rank</th><th>score</th><th>pid</th><th>camid</th><th>tracklet</th><th>key frames</th></tr>"
        f"{rows}</table></section>"
    )


TIMELINE_WIDTH = 760  # pixels of the time axis in the HTML report
TIMELINE_ROW = 84  # pixels per camera row


def timeline_html(person: Any, frames: Mapping[int, np.ndarray]) -> str:
    """A person's timeline as HTML: a row per camera, time across, each visit a bar with its key frame (box drawn)
    and its time range; ``frames`` maps a visit's number to its key frame ``[1, H, W, 3]``."""
    timed = [v for v in person.visits if v.start_time is not None and v.end_time is not None]
    if not timed:
        return f'<p class="source">person {person.person_id}: no visit with a known time</p>'
    first, last = min(v.start_time for v in timed), max(v.end_time for v in timed)
    span = max(last - first, 1.0)
    cameras = sorted({v.camid for v in person.visits})
    parts = []
    for number, visit in enumerate(person.visits):
        if visit.start_time is None or visit.end_time is None:
            continue
        left = (visit.start_time - first) / span * TIMELINE_WIDTH
        width = max(4.0, (visit.end_time - visit.start_time) / span * TIMELINE_WIDTH)
        top = cameras.index(visit.camid) * TIMELINE_ROW
        frame = frames.get(number, np.zeros((0, 1, 1, 3), np.uint8))
        image = ""
        if len(frame) and visit.key_frame is not None:
            image = f'<img src="{_jpeg_data_uri(draw_box(frame[0], visit.key_frame.box))}" alt="cam{visit.camid}">'
        parts.append(
            f'<div class="visit" style="left:{left:.0f}px;top:{top}px"><div class="bar" style="width:{width:.0f}px">'
            f'</div>{image}<div class="when">{clock_time(visit.start_time)}-{clock_time(visit.end_time)}</div></div>')
    labels = "".join(f'<div class="cam" style="top:{i * TIMELINE_ROW}px">cam{c}</div>' for i, c in enumerate(cameras))
    height = len(cameras) * TIMELINE_ROW
    return (f'<div class="timeline"><h3>person {person.person_id}: {html.escape(visits_text(person))}</h3>'
            f'<div class="axis" style="height:{height}px;width:{TIMELINE_WIDTH + 160}px">{labels}'
            f'<div class="lane" style="left:60px">{"".join(parts)}</div></div></div>')


TIMELINE_STYLE = """
.timeline .axis { position: relative; border-left: 1px solid #999; margin: 0.5em 0 1.5em; }
.timeline .cam { position: absolute; left: 4px; font-weight: bold; }
.timeline .lane { position: absolute; top: 0; }
.timeline .visit { position: absolute; }
.timeline .bar { height: 6px; background: #c0392b; margin-bottom: 2px; }
.timeline .visit img { height: 56px; display: block; }
.timeline .when { font-size: 0.75em; color: #555; white-space: nowrap; }
"""


def _people_html(result: Any, people: Mapping[int, Any], frames: Mapping[tuple[int, int], np.ndarray]) -> str:
    """The timelines of the people a result's hits name, in order of their best hit."""
    named = list(dict.fromkeys(hit.person for hit in result.hits if hit.person in people))
    if not named:
        return ""
    timelines = "".join(
        timeline_html(people[p], {n: f for (q, n), f in frames.items() if q == p}) for p in named)
    return f"<h3>People among the hits, across cameras</h3>{timelines}"


def _footage_html(origin: Any) -> str:
    return "" if origin is None else f'<div class="source">{html.escape(plain(footage_label(origin)))}</div>'


def render_query_report(results: Sequence[Any], *, gallery: str, people: Mapping[int, Any] | None = None,
                        visit_frames: Mapping[tuple[int, int], np.ndarray] | None = None) -> str:
    """One self-contained HTML page (thumbnails embedded as base64 JPEG, no external resources) for the
    ``index.QueryResult`` values of a ``tfclip query --html`` call against the index ``gallery``; on a linked
    gallery, ``people`` (person id → ``people.timeline.Person``) adds each named person's timeline, with the
    visits' key frames from ``visit_frames`` ((person id, visit number) → frame)."""
    title = f"tfclip query against {html.escape(plain(gallery))}"
    sections = "".join(
        _query_section(number, result) + _people_html(result, people or {}, visit_frames or {})
        for number, result in enumerate(results, start=1))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{REPORT_STYLE}{TIMELINE_STYLE}</style></head><body><h1>{title}</h1>{sections}</body></html>\n"
    )


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
        plain_text(f"report: {result.paths.report}"),
        Panel(DEMO_NEXT_STEPS, title="what next", title_align="left", expand=False),
    )
