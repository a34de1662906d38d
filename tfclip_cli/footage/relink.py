"""Cut and re-link motion tracks by appearance: the identity switches and fragments a motion tracker leaves.

Each track is split into consecutive windows of a few frames, and each window embedded (with TF-CLIP in
``tfclip track --checkpoint``, through :func:`model_window_embedder`). Where two consecutive windows stop looking
alike, the track is cut: two people crossed and the box jumped from one to the other. Then fragments of one
camera that never overlap in time and whose mean embeddings are close are merged into one tracklet: a person the
motion tracker lost behind an obstacle and found again under a new id. The logic takes any embedder, so it is
tested with synthetic embeddings; without a checkpoint tracks pass through unchanged (:func:`unlinked`).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from tfclip_cli.footage.track import Track
from tfclip_cli.tables import UNKNOWN_PID, Tracklet

if TYPE_CHECKING:
    import torch

    from tfclip_cli.clips import ClipTransform
    from tfclip_cli.model import TFCLIP

Window = tuple[int, int]  # positions [start, stop) in a track's frames
WindowEmbedder = Callable[[Track, Sequence[Window]], np.ndarray]  # a track and its windows → [W, D]


@dataclass(frozen=True)
class RelinkConfig:
    """When windows differ enough to cut, and fragments agree enough to merge (cosine similarities)."""

    window: int = 8  # frames per embedded window (TF-CLIP's clip length)
    cut_similarity: float = 0.5  # consecutive windows less alike than this are two people
    merge_similarity: float = 0.75  # fragments at least this alike are one person


@dataclass(frozen=True)
class Piece:
    """A run of one motion track's frames: positions ``[start, stop)`` of track ``track_id``."""

    track_id: int
    start: int
    stop: int


@dataclass(frozen=True)
class Linked:
    """One person's tracklet after relinking, and the pieces of motion tracks it is made of, in time order."""

    track: Track
    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class _Fragment:
    piece: Piece
    camid: int
    first_frame: int
    last_frame: int
    vector: np.ndarray  # [D], unit length


def unlinked(tracks: Sequence[Track]) -> list[Linked]:
    """Motion only: each track is one tracklet, as it is."""
    return [Linked(track, (Piece(track.track_id, 0, track.num_frames),)) for track in tracks]


def window_bounds(num_frames: int, window: int) -> list[Window]:
    """Consecutive windows of ``window`` frames covering ``num_frames``; a short tail joins the last window."""
    starts = list(range(0, max(num_frames - window, 0) + 1, window))
    return [(start, nxt) for start, nxt in zip(starts, starts[1:] + [num_frames])]


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def cut_points(vectors: np.ndarray, min_similarity: float) -> list[int]:
    """Indices of the windows ``[W, D]`` (unit rows) that start a new fragment: less alike than ``min_similarity``
    with the window before."""
    similarity = np.sum(vectors[1:] * vectors[:-1], axis=1)
    return [int(i) + 1 for i in np.flatnonzero(similarity < min_similarity)]


def _fragments(track: Track, embed: WindowEmbedder, config: RelinkConfig) -> list[_Fragment]:
    """The track cut where its appearance changes, each fragment with its mean window embedding."""
    bounds = window_bounds(track.num_frames, config.window)
    vectors = _unit(np.asarray(embed(track, bounds), dtype=np.float64))
    edges = [0, *cut_points(vectors, config.cut_similarity), len(bounds)]
    fragments = []
    for first, last in zip(edges, edges[1:]):
        piece = Piece(track.track_id, bounds[first][0], bounds[last - 1][1])
        frames = track.frame_indices[piece.start : piece.stop]
        mean = _unit(vectors[first:last].mean(axis=0))
        fragments.append(_Fragment(piece, track.camid, frames[0], frames[-1], mean))
    return fragments


def _overlap(a: list[_Fragment], b: list[_Fragment]) -> bool:
    """Whether any fragment of ``a`` shares a moment with one of ``b``: one person is never in two places."""
    return any(x.first_frame <= y.last_frame and y.first_frame <= x.last_frame for x in a for y in b)


def merge_fragments(fragments: Sequence[_Fragment], min_similarity: float) -> list[list[_Fragment]]:
    """Groups of fragments of one person: the most alike pairs first (single linkage), joining two groups only when
    they share the camera and never overlap in time."""
    group_of = list(range(len(fragments)))
    members = {i: [f] for i, f in enumerate(fragments)}
    pairs = sorted(
        ((float(a.vector @ b.vector), i, j) for (i, a), (j, b) in itertools.combinations(enumerate(fragments), 2)),
        reverse=True,
    )
    for similarity, i, j in pairs:
        if similarity < min_similarity:
            break
        gi, gj = group_of[i], group_of[j]
        if gi == gj or fragments[i].camid != fragments[j].camid or _overlap(members[gi], members[gj]):
            continue
        members[gi] += members.pop(gj)
        group_of = [gi if g == gj else g for g in group_of]
    return [sorted(group, key=lambda f: f.first_frame) for group in members.values()]


def _assemble(group: list[_Fragment], by_id: dict[int, Track], track_id: int) -> Linked:
    parts = [(by_id[f.piece.track_id], f.piece) for f in group]
    track = Track(
        track_id=track_id,
        camid=group[0].camid,
        frame_indices=tuple(i for t, p in parts for i in t.frame_indices[p.start : p.stop]),
        boxes=np.concatenate([t.boxes[p.start : p.stop] for t, p in parts]),
        scores=np.concatenate([t.scores[p.start : p.stop] for t, p in parts]),
    )
    return Linked(track, tuple(f.piece for f in group))


def relink(tracks: Sequence[Track], embed: WindowEmbedder, config: RelinkConfig = RelinkConfig()) -> list[Linked]:
    """Cut every track where its windows stop looking alike, then merge the fragments of one person.

    Returns:
        the tracklets, numbered 1, 2, ... by first frame.
    """
    fragments = [f for track in tracks for f in _fragments(track, embed, config)]
    groups = sorted(merge_fragments(fragments, config.merge_similarity), key=lambda g: g[0].first_frame)
    by_id = {track.track_id: track for track in tracks}
    return [_assemble(group, by_id, number) for number, group in enumerate(groups, start=1)]


@dataclass(frozen=True)
class _LoadedModel:
    """A checkpoint's model in eval mode, with its test transform and device."""

    model: TFCLIP
    transform: ClipTransform
    device: torch.device


@functools.lru_cache(maxsize=1)  # one load per process, however many videos it tracks
def _load_model(checkpoint: Path) -> _LoadedModel:
    # the model stack (open_clip and the model code: seconds to import) loads only when relinking
    from tfclip_cli.checkpoint import load_checkpoint, model_from_checkpoint
    from tfclip_cli.inference import process_device, transform_for

    state = load_checkpoint(checkpoint)
    device = process_device()
    return _LoadedModel(model_from_checkpoint(state, device), transform_for(state), device)


def model_window_embedder(
    checkpoint: Path, crop_paths: Callable[[Track, Window], list[str]], *, batch: int = 32
) -> WindowEmbedder:
    """An embedder that runs the TF-CLIP model of ``checkpoint`` on each window's crops (dense sampling, no camera
    embedding), ``batch`` windows at a time.

    Args:
        checkpoint: a tfclip checkpoint.
        crop_paths: the crop image files of a window of a track, in time order.
    Raises:
        CheckpointError: when the checkpoint does not load.
    """
    from tfclip_cli.inference import embed_tracklets

    loaded = _load_model(Path(checkpoint).resolve())

    def embed(track: Track, windows: Sequence[Window]) -> np.ndarray:
        tracklets = []
        for window in windows:
            frames = tuple(crop_paths(track, window))
            name = f"{track.track_id}:{window[0]}"
            tracklets.append(Tracklet(name, UNKNOWN_PID, track.camid, "gallery", len(frames), frames=frames))
        chunks = [tracklets[i : i + batch] for i in range(0, len(tracklets), batch)]
        return np.concatenate([
            embed_tracklets(loaded.model, chunk, sampling="dense", transform=loaded.transform, device=loaded.device)
            for chunk in chunks
        ])

    return embed
