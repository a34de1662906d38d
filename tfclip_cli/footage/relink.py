"""Cut and re-link motion tracks by appearance: the identity switches and fragments a motion tracker leaves.

A track is cut only where it touched another track (a tracker can only jump from one person to another where they
meet) and the windows of a few frames after that contact stay unlike the mean of all the windows before it (the
person's appearance so far): one odd window is a bad crop, not another person. So only what those comparisons read
is embedded (with TF-CLIP in ``tfclip track --checkpoint``, through :func:`model_crop_embedder` on the crops the
pipeline holds), each span one clip of the model's ``seq_len`` crops sampled over it, the spans of every track in
one batched call (:func:`crop_span_embedder`): a track that touched nobody is one span, one clip; a span starts at
each window where a cut could fall (after a contact) and at the end of the windows compared with the ones before it,
and each span stands for every window it covers in a mean (:meth:`TrackSpans.mean`). Then each fragment's end is
linked to the start of the fragment that continues it, one to one (Hungarian assignment on the fragments' mean
embeddings), only between plausible pairs (same camera, starting soon after and near where the other ended; right
where and when it ended, a lower similarity will do) and only when no rival pairing is nearly as alike: an ambiguous
link is left out. A cut whose sides both found no other continuation is undone. The logic takes any embedder, so it
is tested with synthetic embeddings; without a checkpoint tracks pass through unchanged (:func:`unlinked`). Tracks
are told apart by their place in the list given, never by ``track_id`` (which repeats across videos), and only
tracks of one camera and one source video are ever linked.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from tfclip_cli.footage.track import Track, iou_matrix

Span = tuple[int, int]  # positions [start, stop) in a track's frames: a window, or a stretch of them
SpanEmbedder = Callable[[Sequence[Track], Sequence[Sequence[Span]]], Sequence[np.ndarray]]
"""Tracks and the spans of each → one ``[S, D]`` per track, each span one clip; all tracks' spans in one call."""
CropEmbedder = Callable[[Sequence[Sequence[np.ndarray]]], np.ndarray]  # clips of RGB crops [h, w, 3] → [N, D]


@dataclass(frozen=True)
class RelinkConfig:
    """When a track is cut (an identity switch) and when two fragments are merged (one person, found again)."""

    window: int = 8  # frames per window: cuts fall between windows, and one near a contact is one clip
    cut_similarity: float = 0.5  # the windows after a contact less alike than this with the ones before: cut
    cut_windows: int = 2  # windows on each side of a cut: one odd window (a bad crop) is not a switch
    contact: float = 0.3  # least IoU of the track's box with another track's for a contact (where switches happen)
    merge_similarity: float = 0.85  # fragments at least this alike may be one person
    merge_margin: float = 0.05  # ... and more alike than any rival pairing by this much, else not merged
    max_gap: int = 60  # most frames between a fragment's end and the next one's start
    max_speed: float = 0.05  # person heights per frame: how far a person can have walked during the gap
    near_gap: int = 10  # a fragment starting this few frames after another ended ...
    near_distance: float = 0.25  # ... and this near (person heights) to where it ended ...
    near_similarity: float = 0.7  # ... needs only this similarity: motion already says it is one person


@dataclass(frozen=True)
class Piece:
    """A run of one motion track's frames: positions ``[start, stop)`` of the track at position ``track`` of the
    list :func:`relink` was given."""

    track: int
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
    source: str
    first_frame: int
    last_frame: int
    vector: np.ndarray  # [D], unit length
    first_box: np.ndarray  # [4] x1, y1, x2, y2
    last_box: np.ndarray


def unlinked(tracks: Sequence[Track]) -> list[Linked]:
    """Motion only: each track is one tracklet, as it is."""
    return [Linked(track, (Piece(position, 0, track.num_frames),)) for position, track in enumerate(tracks)]


def window_bounds(num_frames: int, window: int) -> list[Span]:
    """Consecutive windows of ``window`` frames covering ``num_frames``; a short tail joins the last window."""
    starts = list(range(0, max(num_frames - window, 0) + 1, window))
    return [(start, nxt) for start, nxt in zip(starts, starts[1:] + [num_frames])]


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def contacts(track: Track, others: Sequence[Track], min_iou: float) -> set[int]:
    """Frame indices at which ``track``'s box touches (IoU above ``min_iou``) the box of another track of the same
    camera and video: the only moments a motion tracker can jump from one person to another."""
    boxes = {}
    for other in others:
        if other is not track and other.camid == track.camid and other.source == track.source:
            for index, box in zip(other.frame_indices, other.boxes):
                boxes.setdefault(index, []).append(box)
    touching = set()
    for index, box in zip(track.frame_indices, track.boxes):
        if index in boxes and iou_matrix(box[None].astype(np.float64), np.array(boxes[index])).max() > min_iou:
            touching.add(index)
    return touching


def contact_windows(bounds: Sequence[Span], frames: Sequence[int], touching: set[int]) -> list[int]:
    """Indices of the windows that may start another person: the window holding a contact, and the one after it
    (a switch at a window's end shows only in the next one)."""
    touched = [i for i, (start, stop) in enumerate(bounds) if touching.intersection(frames[start:stop])]
    return sorted({j for i in touched for j in (i, i + 1) if 0 < j < len(bounds)})


def _sides_long_enough(k: int, start: int, num_windows: int, *, cut_windows: int) -> bool:
    """Whether a cut before window ``k`` leaves at least ``cut_windows`` windows on each side (since ``start``)."""
    return k - start >= cut_windows and num_windows - k >= cut_windows


def span_edges(num_windows: int, candidates: Sequence[int], cut_windows: int) -> list[int]:
    """Window indices where the spans to embed start, then ``num_windows``: a span edge at each candidate cut and
    ``cut_windows`` windows after it, what :func:`cut_points` compares (the mean of the windows since the last
    cut, a candidate too, with the mean of the ``cut_windows`` windows from the candidate on). ``[]`` candidates
    give ``[0, num_windows]``: the whole track, one span."""
    edges = {0, num_windows} | {edge for k in candidates for edge in (k, k + cut_windows) if edge < num_windows}
    return sorted(edges)


@dataclass(frozen=True)
class TrackSpans:
    """What relinking embeds of one track: its windows (a cut falls between two), the windows a new fragment may
    start at (after a contact), and the spans embedded one clip each, as window indices: span ``i`` covers
    windows ``edges[i]`` to ``edges[i + 1]`` (exclusive)."""

    windows: tuple[Span, ...]
    candidates: tuple[int, ...]
    edges: tuple[int, ...]

    @property
    def spans(self) -> list[Span]:
        """Each span's positions ``[start, stop)`` in the track's frames."""
        return [(self.windows[a][0], self.windows[b - 1][1]) for a, b in itertools.pairwise(self.edges)]

    def mean(self, vectors: np.ndarray, first: int, last: int) -> np.ndarray:
        """The unit mean of the span vectors ``[S, D]`` (unit rows) over windows ``first`` to ``last`` (both span
        edges), each span weighted by the windows it covers: the mean over those windows, one clip standing for
        every window of a stretch."""
        i, j = self.edges.index(first), self.edges.index(last)
        return _unit(np.average(vectors[i:j], axis=0, weights=np.diff(self.edges[i : j + 1])))


def plan_spans(track: Track, touching: set[int], config: RelinkConfig) -> TrackSpans:
    """The spans of ``track`` to embed, given the frames it touches another track: spans start only where a cut
    could fall after a contact and where its comparison ends (:func:`span_edges`); a track touching nobody is one
    span."""
    windows = window_bounds(track.num_frames, config.window)
    candidates = [k for k in contact_windows(windows, track.frame_indices, touching)
                  if _sides_long_enough(k, 0, len(windows), cut_windows=config.cut_windows)]
    edges = span_edges(len(windows), candidates, config.cut_windows)
    return TrackSpans(tuple(windows), tuple(candidates), tuple(edges))


def cut_points(vectors: np.ndarray, spans: TrackSpans, config: RelinkConfig) -> list[int]:
    """Indices of the windows that start a new fragment, among ``spans.candidates``, given one unit vector per
    span ``[S, D]``: where the mean of the next ``cut_windows`` windows is less alike than ``cut_similarity``
    with the mean of all the windows since the last cut (the person's appearance so far), each side at least
    ``cut_windows`` long."""
    cuts, start = [], 0
    for k in spans.candidates:
        if not _sides_long_enough(k, start, len(spans.windows), cut_windows=config.cut_windows):
            continue
        before = spans.mean(vectors, start, k)
        after = spans.mean(vectors, k, k + config.cut_windows)
        if float(before @ after) < config.cut_similarity:
            cuts.append(k)
            start = k
    return cuts


def _fragments(track: Track, position: int, spans: TrackSpans, *, vectors: np.ndarray, config: RelinkConfig
               ) -> list[_Fragment]:
    """The track (at ``position`` of relink's list) cut where its appearance changes after a contact, each fragment
    with the mean embedding of its windows (``vectors``: ``[S, D]``, one unit row per span)."""
    edges = [0, *cut_points(vectors, spans, config), len(spans.windows)]
    fragments = []
    for first, last in itertools.pairwise(edges):
        piece = Piece(position, spans.windows[first][0], spans.windows[last - 1][1])
        frames = track.frame_indices[piece.start : piece.stop]
        ends = track.boxes[piece.start], track.boxes[piece.stop - 1]
        fragments.append(_Fragment(piece, track.camid, track.source, frames[0], frames[-1],
                                   spans.mean(vectors, first, last), *ends))
    return fragments


def crop_span_embedder(crops: Sequence[Sequence[np.ndarray]], embed: CropEmbedder) -> SpanEmbedder:
    """A span embedder for :func:`relink` over crops held in memory (``crops[i]``: one per frame of the ``i``-th
    track relink is given): every span of every track one clip of ``embed`` (which samples its model's
    ``seq_len`` crops from it), all in one call, which batches them."""

    def embedded(tracks: Sequence[Track], spans: Sequence[Sequence[Span]]) -> list[np.ndarray]:
        assert len(tracks) == len(crops), "relink was given other tracks than the crops are of"
        clips = [crops[number][start:stop] for number, track_spans in enumerate(spans)
                 for start, stop in track_spans]
        return np.split(embed(clips), np.cumsum([len(track_spans) for track_spans in spans])[:-1])

    return embedded


def _gap_and_distance(a: _Fragment, b: _Fragment) -> tuple[int, float]:
    """Frames from ``a``'s end to ``b``'s start, and how far ``b`` starts from ``a``'s last box centre, in ``a``'s
    person heights."""
    height = max(float(a.last_box[3] - a.last_box[1]), 1e-6)
    centre_a, centre_b = (a.last_box[:2] + a.last_box[2:]) / 2, (b.first_box[:2] + b.first_box[2:]) / 2
    return b.first_frame - a.last_frame, float(np.linalg.norm(centre_b - centre_a)) / height


def can_follow(a: _Fragment, b: _Fragment, config: RelinkConfig) -> bool:
    """Whether ``b`` can be ``a``'s person seen again: same camera and video, starting after ``a`` ends within
    ``max_gap`` frames, and no farther from where ``a`` was last seen than a walk of ``max_speed`` heights per frame
    (plus half a height for the box's own wobble)."""
    gap, distance = _gap_and_distance(a, b)
    return a.camid == b.camid and a.source == b.source and 0 < gap <= config.max_gap and distance <= 0.5 + config.max_speed * gap


def least_similarity(a: _Fragment, b: _Fragment, config: RelinkConfig) -> float:
    """How alike ``a`` and ``b`` must be to be linked: ``near_similarity`` when ``b`` starts right where and when
    ``a`` ended (motion already says one person; appearance need only not contradict it), else
    ``merge_similarity``."""
    gap, distance = _gap_and_distance(a, b)
    near = gap <= config.near_gap and distance <= config.near_distance
    return config.near_similarity if near else config.merge_similarity


def link_fragments(fragments: Sequence[_Fragment], config: RelinkConfig) -> dict[int, int]:
    """Which fragment follows which (index → index): a one-to-one assignment of fragment ends to fragment starts
    (Hungarian, most total similarity) among the plausible pairs alike enough (:func:`least_similarity`); a pair
    is kept only when no rival pairing of either fragment comes within ``merge_margin`` of it (ambiguous: not
    merged)."""
    count = len(fragments)
    similarity = np.full((count, count), -np.inf)
    allowed = np.zeros((count, count), dtype=bool)
    for i, j in itertools.permutations(range(count), 2):
        a, b = fragments[i], fragments[j]
        if can_follow(a, b, config):
            similarity[i, j] = float(a.vector @ b.vector)
            allowed[i, j] = similarity[i, j] >= least_similarity(a, b, config)
    if not allowed.any():
        return {}
    rows, cols = linear_sum_assignment(np.where(allowed, -similarity, 1.0))
    links = {}
    for i, j in zip(rows.tolist(), cols.tolist()):
        if not allowed[i, j]:
            continue
        rivals = np.concatenate([np.delete(similarity[i], j), np.delete(similarity[:, j], i)])
        if not (rivals > similarity[i, j] - config.merge_margin).any():
            links[i] = j
    return links


def rejoin_unused_cuts(fragments: Sequence[_Fragment], links: dict[int, int]) -> dict[int, int]:
    """``links`` plus the two sides of every cut that found no other continuation: a cut stands only where
    appearance also found where the person went (else it would only add an identity switch)."""
    links = dict(links)
    followed = set(links.values())
    for i, (a, b) in enumerate(itertools.pairwise(fragments)):
        same_track = a.piece.track == b.piece.track and a.piece.stop == b.piece.start
        if same_track and i not in links and i + 1 not in followed:
            links[i] = i + 1
            followed.add(i + 1)
    return links


def chains(count: int, links: dict[int, int]) -> list[list[int]]:
    """The chains of fragment indices that ``links`` (one successor, one predecessor each) make, from each start."""
    followed = set(links.values())
    groups = []
    for head in (i for i in range(count) if i not in followed):
        group = [head]
        while group[-1] in links:
            group.append(links[group[-1]])
        groups.append(group)
    return groups


def _joined(pieces: Sequence[Piece]) -> list[Piece]:
    """``pieces`` with each run of one track's touching pieces (an undone cut) made one piece again."""
    joined = [pieces[0]]
    for piece in pieces[1:]:
        last = joined[-1]
        if piece.track == last.track and piece.start == last.stop:
            joined[-1] = Piece(last.track, last.start, piece.stop)
        else:
            joined.append(piece)
    return joined


def _assemble(group: list[_Fragment], tracks: Sequence[Track], track_id: int) -> Linked:
    parts = [(tracks[piece.track], piece) for piece in _joined([f.piece for f in group])]
    track = Track(
        track_id=track_id,
        camid=group[0].camid,
        frame_indices=tuple(i for t, p in parts for i in t.frame_indices[p.start : p.stop]),
        boxes=np.concatenate([t.boxes[p.start : p.stop] for t, p in parts]),
        scores=np.concatenate([t.scores[p.start : p.stop] for t, p in parts]),
        source=group[0].source,
    )
    return Linked(track, tuple(piece for _, piece in parts))


def relink(tracks: Sequence[Track], embed: SpanEmbedder, config: RelinkConfig = RelinkConfig()) -> list[Linked]:
    """Cut tracks where their appearance changes after touching another track, then link each fragment's end to
    the start of the fragment that continues it.

    Args:
        embed: called once, with ``tracks`` and the spans of each (:func:`plan_spans`) to embed as one clip each.
    Returns:
        the tracklets, numbered 1, 2, ... by first frame.
    """
    if not tracks:
        return []
    plans = [plan_spans(track, contacts(track, tracks, config.contact), config) for track in tracks]
    vectors = embed(tracks, [plan.spans for plan in plans])
    fragments = [
        f for position, (track, plan, track_vectors) in enumerate(zip(tracks, plans, vectors, strict=True))
        for f in _fragments(track, position, plan, vectors=_unit(np.asarray(track_vectors, dtype=np.float64)),
                            config=config)
    ]
    links = rejoin_unused_cuts(fragments, link_fragments(fragments, config))
    groups = sorted(([fragments[i] for i in chain] for chain in chains(len(fragments), links)),
                    key=lambda g: g[0].first_frame)
    return [_assemble(group, tracks, number) for number, group in enumerate(groups, start=1)]


SPAN_SAMPLING = "rrs"  # a span (a window or a whole stretch of them) is one clip of the model's seq_len crops


GPU_BATCH = 32
"""Clips per forward pass on a GPU."""
CPU_BATCH = 1
"""Clips per forward pass on the CPU, where larger batches only hold more activations in memory and run no faster
(ViT-B/16 int8 on one thread, ``bench_footage.py --appearance``: 0.67x real time per core at 1 clip a pass, 0.65x
at 4)."""


@functools.lru_cache(maxsize=1)  # one load per process, however many videos it tracks
def _load_crop_embedder(checkpoint: Path, threads: int) -> tuple[CropEmbedder, bool]:
    """The model's crop embedder, and whether it runs on a GPU."""
    # the model stack (open_clip and the model code: seconds to import) loads only when relinking, and an exported
    # .onnx file never loads it: onnxruntime runs it on the numpy crops
    from tfclip_cli.frames import FrameTransform
    from tfclip_cli.runtime import OnnxEmbedder, backend_for, embed_crop_tracklets

    if backend_for(checkpoint) == "onnx":
        embedder = OnnxEmbedder(checkpoint, threads=threads)
        return functools.partial(embed_crop_tracklets, embedder.embed_array, seq_len=embedder.seq_len,
                                 transform=embedder.transform, dim=embedder.embedding_dim), False
    from tfclip_cli.inference import batch_embedder, load_model, process_device

    device = process_device()
    loaded = load_model(checkpoint, "torch", device)
    transform = FrameTransform(loaded.transform.image_size, normalization=loaded.transform.normalization)
    return functools.partial(embed_crop_tracklets, batch_embedder(loaded.model, device),
                             seq_len=loaded.model.config.seq_len, transform=transform,
                             dim=loaded.model.embedding_dim), device.type == "cuda"


def model_crop_embedder(checkpoint: Path, *, batch: int | None = None, threads: int = 0) -> CropEmbedder:
    """An embedder that runs the TF-CLIP model of ``checkpoint`` (a checkpoint on PyTorch, or an exported ``.onnx``
    file on onnxruntime) on clips of crops, without camera embedding, ``batch`` clips at a time (default
    :data:`GPU_BATCH` on a GPU, :data:`CPU_BATCH` on the CPU): one clip of the
    model's ``seq_len`` crops sampled over each clip of crops it is given (:data:`SPAN_SAMPLING`), never every
    crop of a longer one.

    Args:
        threads: onnxruntime's intra-op threads for an ``.onnx`` file; 0 lets it choose (PyTorch keeps its own).

    Raises:
        CheckpointError: when the checkpoint does not load; UserError: an ONNX file that is not a tfclip export.
    """
    embed, on_gpu = _load_crop_embedder(Path(checkpoint).resolve(), threads)
    return functools.partial(embed, sampling=SPAN_SAMPLING, batch_size=batch or (GPU_BATCH if on_gpu else CPU_BATCH))
