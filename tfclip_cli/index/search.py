"""Search a gallery, and ``query``: embed clips with the gallery's checkpoint, search, read key frames.

A hit's ``match`` verdict compares its score with the threshold in force: ``min_score`` when one is given, else
the gallery's calibrated threshold (``tfclip calibrate``), else none (``match`` is None). ``min_score`` also drops
the hits below it, so a query with no hit left has no match.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Collection, Literal, Sequence

import faiss
import numpy as np
import pandas as pd
import torch

from tfclip_cli.clips import ClipTransform, read_frames, read_key_frames
from tfclip_cli.errors import DataError, GalleryError, UserError
from tfclip_cli.index.calibrate import warn_if_stale
from tfclip_cli.index.store import Gallery, load_index, normalized
from tfclip_cli.inference import Backend, Embedder, embed_tracklets, load_model, tracklet_from_path
from tfclip_cli.tables import PERSON_COLUMN, FootageOrigin, Tracklet, row_to_tracklet

log = logging.getLogger(__name__)

MinScore = float | Literal["auto"] | None
"""A score floor: a number, ``"auto"`` (the gallery's calibrated threshold) or None (off)."""


@dataclass(frozen=True)
class Hit:
    """One gallery tracklet returned for a query, ``rank`` 1 = most similar."""

    rank: int
    score: float
    tracklet_id: str
    pid: int
    camid: int
    split: str
    source: str
    row: int
    match: bool | None = None
    """Score at or above the threshold in force; None when there is none."""
    start_s: float | None = None
    end_s: float | None = None
    """The tracklet's time range in its source video, when its row records one (footage tracklets)."""
    origin: FootageOrigin | None = None
    """Where in which video, for a gallery tracklet cut from footage."""
    person: int | None = None
    """The person (across cameras) ``tfclip link`` put this tracklet in; None in an unlinked gallery or row."""

    def to_dict(self) -> dict:
        """JSON-ready; a footage origin as its video, frames, times and key frame with its box (not every box),
        ``"origin": null`` for a tracklet not cut from footage (the keys are always the same)."""
        fields = {name: value for name, value in asdict(self).items() if name != "origin"}
        fields["origin"] = None
        if self.origin is not None:
            origin = self.origin
            fields["origin"] = {
                "source_video": origin.source_video, "first_frame": origin.first_frame,
                "last_frame": origin.last_frame, "start_s": origin.start_s, "end_s": origin.end_s,
                "key_frame": origin.key_frame, "key_box": list(origin.key_box),
            }
        return fields


@dataclass(frozen=True)
class QueryResult:
    """The hits of one query clip, with the clip's key frames (and the hits', when asked for) for a report.

    Key frames are the first, middle and last frame, uint8 ``[K, H, W, 3]``; a hit whose source cannot be read
    (moved, or a table without sources) has an empty ``[0, 1, 1, 3]`` array.
    """

    source: str
    num_frames: int
    key_frames: np.ndarray
    hits: tuple[Hit, ...]
    hit_key_frames: tuple[np.ndarray, ...] = ()
    threshold: float | None = None
    """The score a hit needs to be a match; None when neither calibrated nor given."""

    @property
    def is_match(self) -> bool | None:
        """Whether any hit is a match; None without a threshold."""
        return None if self.threshold is None else any(hit.match for hit in self.hits)

    def to_dict(self) -> dict:
        """JSON-ready: the query source, its frame count, the threshold, the verdict and the hits."""
        return {
            "query": self.source, "num_frames": self.num_frames, "threshold": self.threshold,
            "match": self.is_match, "hits": [hit.to_dict() for hit in self.hits],
        }


def parse_min_score(text: str) -> MinScore:
    """A score floor as users type it: a number, ``auto`` or ``off``.

    Raises:
        UserError: for anything else.
    """
    if text in ("auto", "off"):
        return None if text == "off" else "auto"
    try:
        return float(text)
    except ValueError:
        raise UserError(f"min score {text!r}: expected a number, 'auto' or 'off'") from None


def resolve_min_score(gallery: Gallery, min_score: MinScore) -> float | None:
    """``min_score`` as a number: ``"auto"`` is the gallery's calibrated threshold.

    Raises:
        GalleryError: for ``"auto"`` on a gallery that was never calibrated.
    """
    if min_score != "auto":
        return min_score
    if gallery.info.calibration is None:
        raise GalleryError(
            f"{gallery.path} has no calibrated threshold for --min-score auto",
            hint=f"calibrate it: tfclip calibrate VAL.parquet --gallery {gallery.path} --fpir 0.01",
        )
    return float(gallery.info.calibration["threshold"])


def _allowed_rows(gallery: Gallery, camids: Collection[int] | None) -> np.ndarray:
    """Boolean ``[count]``: rows a search may return (not removed, and of an allowed camera)."""
    allowed = gallery.live
    if camids is not None:
        allowed &= gallery.rows["camid"].isin(list(camids)).to_numpy()
    return allowed


def _search_params(gallery: Gallery, allowed: np.ndarray) -> tuple[Any, Any]:
    """FAISS search parameters restricted to ``allowed`` rows (None when all are), and the selector they hold.

    The selector is returned so the caller keeps it alive while faiss holds a raw pointer to it.
    """
    if allowed.all():
        return None, None
    excluded = np.flatnonzero(~allowed).astype(np.int64)
    if len(excluded) <= allowed.sum():  # the smaller id set makes the cheaper selector
        inner = faiss.IDSelectorBatch(excluded)
        selector = faiss.IDSelectorNot(inner)
        selector.inner = inner  # keep the wrapped selector alive as long as the outer one
    else:
        selector = faiss.IDSelectorBatch(np.flatnonzero(allowed).astype(np.int64))
    params = gallery.info.params
    if gallery.info.type == "hnsw":
        return faiss.SearchParametersHNSW(sel=selector, efSearch=params["efSearch"]), selector
    if gallery.info.type == "ivfpq":
        base = faiss.SearchParametersIVF(sel=selector, nprobe=params["nprobe"])
        return faiss.IndexRefineSearchParameters(k_factor=params["k_factor"], base_index_params=base), (selector, base)
    return faiss.SearchParameters(sel=selector), selector


def search(
    gallery: Gallery,
    vectors: np.ndarray,
    top_k: int,
    *,
    min_score: float | None = None,
    camids: Collection[int] | None = None,
) -> list[list[Hit]]:
    """The ``top_k`` most similar live gallery tracklets for each query embedding in ``vectors`` [Q, D].

    Args:
        min_score: drop hits scoring below it, and judge ``match`` by it instead of the calibrated threshold.
        camids: return only tracklets of these cameras.

    Raises:
        GalleryError: when the query dimension differs from the index's.
    """
    if vectors.shape[1] != gallery.info.dim:
        raise GalleryError(
            f"query embeddings have {vectors.shape[1]} dimensions; {gallery.path} holds {gallery.info.dim}-d"
        )
    allowed = _allowed_rows(gallery, camids)
    if not allowed.any():
        return [[] for _ in vectors]
    params, _selector = _search_params(gallery, allowed)
    scores, ids = gallery.index.search(normalized(vectors), min(top_k, int(allowed.sum())), params=params)
    threshold = threshold_in_force(gallery, min_score)
    floor = -math.inf if min_score is None else min_score
    found = [
        [(float(s), int(r)) for s, r in zip(row_s, row_i) if r >= 0 and s >= floor] for row_s, row_i in zip(scores, ids)
    ]
    return [
        [_hit(gallery.rows, row, rank, score, threshold) for rank, (score, row) in enumerate(pairs, start=1)]
        for pairs in found
    ]


def threshold_in_force(gallery: Gallery, min_score: float | None) -> float | None:
    """The score a hit needs to be a match: ``min_score`` if given, else the calibrated threshold, else None."""
    if min_score is not None:
        return min_score
    calibration = gallery.info.calibration
    return None if calibration is None else float(calibration["threshold"])


def _optional_float(record: pd.Series, name: str) -> float | None:
    value = record.get(name)
    return None if value is None or pd.isna(value) else float(value)


def _hit(rows: pd.DataFrame, row: int, rank: int, score: float, threshold: float | None) -> Hit:
    record = rows.iloc[row]
    tracklet = row_to_tracklet(record)
    return Hit(
        rank=rank,
        score=score,
        tracklet_id=str(record["tracklet_id"]),
        pid=int(record["pid"]),
        camid=int(record["camid"]),
        split=str(record["split"]),
        source=tracklet.source if tracklet is not None else "",
        row=row,
        match=None if threshold is None else score >= threshold,
        start_s=_optional_float(record, "start_s"),
        end_s=_optional_float(record, "end_s"),
        origin=tracklet.origin if tracklet is not None else None,
        person=_person(record),
    )


def _person(record: pd.Series) -> int | None:
    """The row's linked person id (``tables.PERSON_COLUMN``), None when unlinked (absent, NaN or -1)."""
    value = record.get(PERSON_COLUMN)
    return None if value is None or pd.isna(value) or int(value) < 0 else int(value)


NO_FRAMES = np.zeros((0, 1, 1, 3), dtype=np.uint8)


def read_source_key_frame(origin: FootageOrigin) -> np.ndarray:
    """The key frame of a footage tracklet in its source video, uint8 ``[1, H, W, 3]`` (the report draws the box).

    Raises:
        DataError: naming the video when it cannot be decoded.
    """
    video = Tracklet(origin.source_video, -1, -1, "gallery", origin.key_frame + 1, video=origin.source_video)
    return read_frames(video, [origin.key_frame]).permute(0, 2, 3, 1).numpy()


def _row_key_frames(gallery: Gallery, row: int) -> np.ndarray:
    """A gallery row's key frames (for footage, its key frame in the source video; for a live stream, which cannot
    be read again, the crops kept by ``tfclip watch``), or ``NO_FRAMES`` (logged) when its source is unknown or
    unreadable."""
    record = gallery.rows.iloc[row]
    tracklet = row_to_tracklet(record)
    if tracklet is None:
        return NO_FRAMES
    origin = tracklet.origin
    try:
        if origin is not None and Path(origin.source_video).is_file():
            return read_source_key_frame(origin)
        return read_key_frames(tracklet)
    except DataError as exc:
        log.warning("no key frames for gallery tracklet %s: %s", record["tracklet_id"], exc.message)
        return NO_FRAMES


def tracklet_key_frames(gallery: Gallery, tracklet_id: str) -> np.ndarray:
    """The key frames of a live gallery tracklet (``NO_FRAMES`` when its source cannot be read).

    Raises:
        GalleryError: when the gallery holds no such tracklet.
    """
    row = gallery.row_of(tracklet_id)
    if row is None:
        raise GalleryError(f"{gallery.path} holds no tracklet {tracklet_id}")
    return _row_key_frames(gallery, row)


@dataclass(frozen=True)
class QueryEmbedder:
    """The model that made a gallery's embeddings, ready to embed query clips the same way."""

    model: Embedder
    transform: ClipTransform
    sampling: str
    device: torch.device
    checkpoint: Path

    def embed(self, tracklets: Sequence[Tracklet]) -> np.ndarray:
        """Embeddings ``[N, D]`` of ``tracklets`` in one batch, without camera embedding (a query's is unknown).

        Raises:
            DataError: naming every tracklet that cannot be read.
        """
        return embed_tracklets(
            self.model, tracklets, sampling=self.sampling, transform=self.transform, device=self.device
        )


def load_query_embedder(
    gallery: Gallery, checkpoint: Path | None, device: torch.device | str, *, backend: Backend = "torch"
) -> QueryEmbedder:
    """The model (and its test transform) that made the gallery's embeddings: ``checkpoint`` (a checkpoint, or an
    ``.onnx`` file exported from it with the onnx backend) or the recorded one. Loading takes seconds (minutes for
    an onnx export of a large checkpoint, cached beside it): load once and pass the embedder to every search.

    Raises:
        GalleryError: when no checkpoint is given or recorded, or its sha256 or embedding dimension differs.
    """
    recorded = gallery.info.checkpoint
    if checkpoint is None and recorded is None:
        raise GalleryError(f"{gallery.path} records no checkpoint", hint="pass the one that made it: --checkpoint C")
    path = Path(checkpoint if checkpoint is not None else recorded)
    device = torch.device(device)
    loaded = load_model(path, backend, device)
    expected = gallery.info.checkpoint_sha256
    if expected is not None and loaded.checkpoint_sha256 != expected:
        raise GalleryError(
            f"{path} is not the checkpoint {gallery.path} was built from (sha256 {expected[:12]}…, "
            f"recorded path {recorded})",
            hint="query with the checkpoint that extracted the gallery, or re-extract and re-index",
        )
    if loaded.model.embedding_dim != gallery.info.dim:
        raise GalleryError(
            f"{path} embeds in {loaded.model.embedding_dim} dimensions; {gallery.path} holds "
            f"{gallery.info.dim}-d embeddings"
        )
    sampling = gallery.info.embeddings_info.get("sampling", "dense")
    return QueryEmbedder(model=loaded.model, transform=loaded.transform, sampling=sampling, device=device,
                         checkpoint=path)


@dataclass(frozen=True)
class SearchOptions:
    """How each query clip is embedded (``checkpoint``, ``device``, ``backend``: for :func:`load_query_embedder`)
    and searched."""

    checkpoint: Path | None = None
    """Default: the one the gallery records (a checkpoint, or with the onnx backend an exported ``.onnx`` file)."""
    top_k: int = 10
    device: torch.device | str = "cpu"
    with_hit_frames: bool = False
    """Also read every hit's key frames (for the HTML report)."""
    min_score: MinScore = None
    """Drop hits below it (``"auto"``: the gallery's calibrated threshold); see the module docstring."""
    backend: Backend = "torch"
    camids: frozenset[int] | None = None
    """Return only gallery tracklets of these cameras (None: all)."""


def query(gallery_path: Path, clips: Sequence[Path], options: SearchOptions = SearchOptions()) -> list[QueryResult]:
    """Embed each clip (video file or frame folder) in one batch and find its ``options.top_k`` gallery tracklets.

    Clips are embedded with the checkpoint recorded in the gallery (or ``options.checkpoint``) and the sampling the
    gallery was extracted with, without camera embedding (a query's camera is unknown).

    Raises:
        GalleryError: a missing, empty or inconsistent gallery, a checkpoint that does not match it, or
            ``"auto"`` on an uncalibrated gallery.
        DataError: naming a clip that is missing or cannot be decoded.
    """
    gallery = load_index(gallery_path)
    warn_if_stale(gallery)
    tracklets = [tracklet_from_path(Path(clip)) for clip in clips]
    embedder = load_query_embedder(gallery, options.checkpoint, options.device, backend=options.backend)
    return query_tracklets(gallery, tracklets, embedder, options)


def query_tracklets(
    gallery: Gallery, tracklets: Sequence[Tracklet], embedder: QueryEmbedder, options: SearchOptions = SearchOptions()
) -> list[QueryResult]:
    """:func:`query` for a loaded gallery and tracklets already described, embedded by ``embedder``
    (:func:`load_query_embedder`, loaded once by the caller; ``options.checkpoint``, ``device`` and ``backend`` are
    not read here)."""
    clips = [QueryClip(t.source, t.num_frames, read_key_frames(t)) for t in tracklets]
    return query_results(gallery, embedder.embed(tracklets), clips, options)


@dataclass(frozen=True)
class QueryClip:
    """What a result says of the clip searched for: its source, frame count and key frames ``[K, H, W, 3]``."""

    source: str
    num_frames: int
    key_frames: np.ndarray


def query_results(
    gallery: Gallery, vectors: np.ndarray, clips: Sequence[QueryClip], options: SearchOptions = SearchOptions()
) -> list[QueryResult]:
    """Search ``gallery`` for query embeddings ``vectors`` ``[N, D]`` already made (e.g. of people cut out of query
    footage, in memory), one result per clip.

    Raises:
        GalleryError: for ``"auto"`` on a gallery that was never calibrated.
    """
    floor = resolve_min_score(gallery, options.min_score)
    results = []
    for clip, hits in zip(clips, search(gallery, vectors, options.top_k, min_score=floor,
                                              camids=options.camids)):
        frames = tuple(_row_key_frames(gallery, hit.row) for hit in hits) if options.with_hit_frames else ()
        results.append(QueryResult(clip.source, clip.num_frames, clip.key_frames, tuple(hits), frames,
                                   threshold_in_force(gallery, floor)))
    return results
