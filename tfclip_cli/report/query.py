"""The query report (``tfclip query --html``, the demo's ranked hits): each query's key frames, then its hits with
score, identity, camera, source and key frames (for a hit cut from footage, its key frame in the source video
with the box drawn)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tfclip_cli import display
from tfclip_cli.report.render import jpeg_data_uri, render

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


def render_query_report(results: Sequence[Any], *, gallery: str) -> str:
    """One self-contained HTML page (thumbnails embedded as base64 JPEG, no external resources) for the
    ``index.QueryResult`` values of a ``tfclip query --html`` call against the index ``gallery``."""
    return render("query.html.j2", title=f"tfclip query against {display.plain(gallery)}", subtitle="",
                  queries=[query_view(result) for result in results])
