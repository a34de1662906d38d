"""The query report (``tfclip query --html``, the demo's ranked hits): each query's key frames, then its hits with
score, identity, camera, source and key frames (for a hit cut from footage, its key frame in the source video
with the box drawn); on a gallery linked by ``tfclip link``, the timeline of each person the hits name: a row per
camera, time across, each visit a bar with its key frame (box drawn) and its time range."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from tfclip_cli import display
from tfclip_cli.report.render import jpeg_data_uri, render

TIMELINE_WIDTH = 760  # pixels of the time axis
TIMELINE_ROW = 84  # pixels per camera row


def _hit_view(hit: Any, frames: np.ndarray | tuple) -> dict:
    if hit.origin is not None and len(frames):
        frames = np.stack([display.draw_box(frame, hit.origin.key_box) for frame in frames])
    return {
        "rank": hit.rank, "score": hit.score, "pid": hit.pid, "camid": hit.camid,
        "tracklet_id": display.plain(hit.tracklet_id), "source": display.plain(hit.source),
        "footage": display.plain(display.footage_label(hit.origin)) if hit.origin is not None else "",
        "key_frames": [jpeg_data_uri(frame) for frame in frames],
    }


def _caption(result: Any) -> str:
    if result.threshold is None:
        return ""
    matches = sum(bool(hit.match) for hit in result.hits)
    return (f"{matches} match(es) scoring at least {result.threshold:.4f}" if matches
            else f"no match: no hit scores at least {result.threshold:.4f}")


def query_view(result: Any) -> dict:
    """What the template shows of one ``index.QueryResult``."""
    hit_frames = result.hit_key_frames or [()] * len(result.hits)  # searched without hit frames
    return {
        "source": display.plain(result.source), "num_frames": result.num_frames,
        "key_frames": [jpeg_data_uri(frame) for frame in result.key_frames],
        "hits": [_hit_view(hit, frames) for hit, frames in zip(result.hits, hit_frames)],
        "caption": _caption(result),
    }


def timeline_view(person: Any, frames: Mapping[int, np.ndarray]) -> dict:
    """What the template shows of a ``people.timeline.Person``: a row per camera, each visit with a known time
    placed on the time axis (pixels); ``frames`` maps a visit's number to its key frame ``[1, H, W, 3]``."""
    timed = [v for v in person.visits if v.start_time is not None and v.end_time is not None]
    cameras = sorted({v.camid for v in person.visits})
    view = {"person_id": person.person_id, "text": display.plain(display.visits_text(person)),
            "cameras": [{"camid": c, "top": i * TIMELINE_ROW} for i, c in enumerate(cameras)],
            "height": len(cameras) * TIMELINE_ROW, "width": TIMELINE_WIDTH + 160, "visits": []}
    if not timed:
        return view
    first, last = min(v.start_time for v in timed), max(v.end_time for v in timed)
    span = max(last - first, 1.0)
    for number, visit in enumerate(person.visits):
        if visit.start_time is None or visit.end_time is None:
            continue
        frame = frames.get(number, np.zeros((0, 1, 1, 3), np.uint8))
        image = ""
        if len(frame) and visit.key_frame is not None:
            image = jpeg_data_uri(display.draw_box(frame[0], visit.key_frame.box))
        view["visits"].append({
            "camid": visit.camid, "left": round((visit.start_time - first) / span * TIMELINE_WIDTH),
            "top": cameras.index(visit.camid) * TIMELINE_ROW,
            "width": round(max(4.0, (visit.end_time - visit.start_time) / span * TIMELINE_WIDTH)),
            "image": image,
            "when": f"{display.clock_time(visit.start_time)}-{display.clock_time(visit.end_time)}",
        })
    return view


def _timelines(result: Any, people: Mapping[int, Any], frames: Mapping[tuple[int, int], np.ndarray]) -> list[dict]:
    """The timelines of the people a result's hits name, in order of their best hit."""
    named = list(dict.fromkeys(hit.person for hit in result.hits if getattr(hit, "person", None) in people))
    return [timeline_view(people[p], {n: f for (q, n), f in frames.items() if q == p}) for p in named]


def render_query_report(results: Sequence[Any], *, gallery: str, people: Mapping[int, Any] | None = None,
                        visit_frames: Mapping[tuple[int, int], np.ndarray] | None = None) -> str:
    """One self-contained HTML page (thumbnails embedded as base64 JPEG, no external resources) for the
    ``index.QueryResult`` values of a ``tfclip query --html`` call against the index ``gallery``; on a linked
    gallery, ``people`` (person id → ``people.timeline.Person``) adds each named person's timeline, with the
    visits' key frames from ``visit_frames`` ((person id, visit number) → frame)."""
    queries = []
    for result in results:
        view = query_view(result)
        view["timelines"] = _timelines(result, people or {}, visit_frames or {})
        queries.append(view)
    return render("query.html.j2", title=f"tfclip query against {display.plain(gallery)}", subtitle="",
                  queries=queries)
