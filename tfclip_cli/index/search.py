"""Search a gallery, and ``query``: embed clips with the gallery's checkpoint, search, read key frames.

With an exported model (``-c M.onnx``) nothing on this path imports torch or open_clip: frames are decoded,
sampled and transformed in numpy (:mod:`tfclip_cli.frames`) and embedded by onnxruntime (:mod:`tfclip_cli.runtime`);
a checkpoint loads the PyTorch model, which embeds the same numpy clips.

A hit's ``match`` verdict compares its score with the threshold in force: ``min_score`` when one is given, else
the gallery's calibrated threshold (``tfclip calibrate``), else none (``match`` is None). ``min_score`` also drops
the hits below it, so a query with no hit left has no match.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Literal, Sequence

import faiss
import numpy as np
import pandas as pd

from tfclip_cli.errors import DataError, GalleryError, UserError
from tfclip_cli.frames import FrameTransform, read_frames, read_key_frames, tracklet_from_path
from tfclip_cli.index.calibrate import warn_if_stale
from tfclip_cli.index.store import Gallery, load_index, normalized
from tfclip_cli.runtime import (
    Backend,
    ClipBatchEmbedder,
    OnnxEmbedder,
    backend_for,
    embed_crop_tracklets,
    embed_tracklet_files,
    has_cuda,
)
from tfclip_cli.tables import PERSON_COLUMN, FootageOrigin, Tracklet, row_to_tracklet

if TYPE_CHECKING:
    import torch

    from tfclip_cli.inference import Embedder

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


def _allowed_rows(gallery: Gallery, camids: Collection[int] | None) -> np.ndarray | None:
    """Boolean ``[count]``: rows a search may return (not removed, and of an allowed camera); None when all are
    (a mask of 10 million rows costs a query milliseconds)."""
    if not gallery.info.removed and camids is None:
        return None
    allowed = gallery.live
    if camids is not None:
        allowed &= gallery.rows["camid"].isin(list(camids)).to_numpy()
    return allowed


def _search_params(gallery: Gallery, allowed: np.ndarray | None) -> tuple[Any, Any]:
    """FAISS search parameters restricted to ``allowed`` rows (None when all are), and the selector they hold.

    The selector is returned so the caller keeps it alive while faiss holds a raw pointer to it.
    """
    if allowed is None or allowed.all():
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
    if gallery.info.type == "ivfpq-norescore":
        return faiss.SearchParametersIVF(sel=selector, nprobe=params["nprobe"]), selector
    if gallery.info.type.startswith("ivfpq"):
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
    searchable = gallery.info.count if allowed is None else int(allowed.sum())
    if searchable == 0:
        return [[] for _ in vectors]
    in_base = gallery.index.base.ntotal  # the selector speaks of base rows; the log's rows are masked apart
    params, _selector = _search_params(gallery, None if allowed is None else allowed[:in_base])
    scores, ids = gallery.index.search(normalized(vectors), min(top_k, searchable), params=params,
                                       appended_allowed=None if allowed is None else allowed[in_base:])
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
    return read_frames(video, [origin.key_frame])


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
    """The model that made a gallery's embeddings, ready to embed query clips the same way: numpy clips
    (:mod:`tfclip_cli.frames`) run by onnxruntime for an exported model, by PyTorch for a checkpoint."""

    model: Embedder
    transform: FrameTransform
    sampling: str
    device: torch.device | None
    """Where a PyTorch model runs; None for an exported model run by onnxruntime."""
    checkpoint: Path
    seq_len: int
    checkpoint_sha256: str
    embedding: str
    """The model's embedding (its ``ModelConfig.embedding``), recorded in the provenance of what it embeds."""

    def _batch(self) -> ClipBatchEmbedder:
        if isinstance(self.model, OnnxEmbedder):
            return self.model.embed_array
        from tfclip_cli.inference import batch_embedder  # torch is loaded already: the model is a torch module

        return batch_embedder(self.model, self.device)

    def embed(self, tracklets: Sequence[Tracklet]) -> np.ndarray:
        """Embeddings ``[N, D]`` of ``tracklets`` in one batch, without camera embedding (a query's is unknown).

        Raises:
            DataError: naming every tracklet that cannot be read.
        """
        return embed_tracklet_files(self._batch(), tracklets, sampling=self.sampling, seq_len=self.seq_len,
                                    transform=self.transform, dim=self.model.embedding_dim,
                                    batch_size=max(1, len(tracklets)))

    def embed_crops(self, tracklets: Sequence[Sequence[np.ndarray]], *, sampling: str | None = None) -> np.ndarray:
        """Embeddings ``[N, D]`` of tracklets held as RGB crops ``[h, w, 3]`` uint8 (people cut out of footage),
        all in batches, with ``sampling`` (default: the gallery's)."""
        return embed_crop_tracklets(self._batch(), tracklets, sampling=sampling or self.sampling,
                                    seq_len=self.seq_len, transform=self.transform,
                                    dim=self.model.embedding_dim)


@dataclass(frozen=True)
class _Loaded:
    """A query model as :func:`_load_embedder` found it, before the gallery checks."""

    model: Embedder
    checkpoint_sha256: str
    transform: FrameTransform
    seq_len: int
    device: torch.device | None
    embedding: str


def _load_embedder(path: Path, backend: Backend | None, device: torch.device | str | None) -> _Loaded:
    """The model of :func:`load_query_embedder`; an ``.onnx`` file with the onnx backend loads without torch."""
    if backend_for(path, backend) == "onnx" and path.suffix.lower() == ".onnx":
        embedder = OnnxEmbedder(path, use_gpu=has_cuda() if device is None else str(device).startswith("cuda"))
        metadata = embedder.metadata
        return _Loaded(embedder, metadata.checkpoint_sha256, embedder.transform, metadata.seq_len, None,
                       metadata.model_config["embedding"])
    import torch

    from tfclip_cli.inference import load_model, process_device

    device = process_device() if device is None else torch.device(device)
    loaded = load_model(path, backend, device)
    test = FrameTransform(loaded.transform.image_size, normalization=loaded.transform.normalization)
    return _Loaded(loaded.model, loaded.checkpoint_sha256, test, loaded.model.config.seq_len, device,
                   loaded.model.config.embedding)


def _query_embedder(loaded: _Loaded, path: Path, sampling: str) -> QueryEmbedder:
    return QueryEmbedder(model=loaded.model, transform=loaded.transform, sampling=sampling, device=loaded.device,
                         checkpoint=path, seq_len=loaded.seq_len, checkpoint_sha256=loaded.checkpoint_sha256,
                         embedding=loaded.embedding)


def load_model_embedder(checkpoint: Path, device: torch.device | str | None = None, *,
                        backend: Backend | None = None) -> QueryEmbedder:
    """The model of ``checkpoint`` (a checkpoint, or an ``.onnx`` file run by onnxruntime without torch) ready to
    embed clips and crops with dense sampling, for a gallery that does not exist yet (``tfclip watch`` creating
    one); :func:`load_query_embedder` loads the model of an existing gallery and checks it against it."""
    return _query_embedder(_load_embedder(Path(checkpoint), backend, device), Path(checkpoint), "dense")


def load_query_embedder(
    gallery: Gallery, checkpoint: Path | None, device: torch.device | str | None = None, *,
    backend: Backend | None = None,
) -> QueryEmbedder:
    """The model (and its test transform) that made the gallery's embeddings: ``checkpoint`` (a checkpoint, or an
    ``.onnx`` file exported from it) or the recorded one. ``backend`` None follows the file (an ``.onnx`` file runs
    on onnxruntime, without torch; a checkpoint on PyTorch); ``device`` None is this process's (CUDA when there is
    one). Loading takes seconds (minutes for an onnx export of a large checkpoint, cached beside it): load once and
    pass the embedder to every search.

    Raises:
        GalleryError: when no checkpoint is given or recorded, or its sha256 or embedding dimension differs.
    """
    recorded = gallery.info.checkpoint
    if checkpoint is None and recorded is None:
        raise GalleryError(f"{gallery.path} records no checkpoint", hint="pass the one that made it: --checkpoint C")
    path = Path(checkpoint if checkpoint is not None else recorded)
    loaded = _load_embedder(path, backend, device)
    model = loaded.model
    expected = gallery.info.checkpoint_sha256
    if expected is not None and loaded.checkpoint_sha256 != expected:
        raise GalleryError(
            f"{path} is not the checkpoint {gallery.path} was built from (sha256 {expected[:12]}…, "
            f"recorded path {recorded})",
            hint="query with the checkpoint that extracted the gallery, or re-extract and re-index",
        )
    if model.embedding_dim != gallery.info.dim:
        raise GalleryError(
            f"{path} embeds in {model.embedding_dim} dimensions; {gallery.path} holds "
            f"{gallery.info.dim}-d embeddings"
        )
    sampling = gallery.info.embeddings_info.get("sampling", "dense")
    return _query_embedder(loaded, path, sampling)


@dataclass(frozen=True)
class SearchOptions:
    """How each query clip is embedded (``checkpoint``, ``device``, ``backend``: for :func:`load_query_embedder`)
    and searched."""

    checkpoint: Path | None = None
    """Default: the one the gallery records (a checkpoint, or an exported ``.onnx`` file)."""
    top_k: int = 10
    device: torch.device | str | None = "cpu"
    """None: this process's (CUDA when there is one)."""
    with_hit_frames: bool = False
    """Also read every hit's key frames (for the HTML report)."""
    min_score: MinScore = None
    """Drop hits below it (``"auto"``: the gallery's calibrated threshold); see the module docstring."""
    backend: Backend | None = None
    """None: the checkpoint's own (onnxruntime for an ``.onnx`` file, PyTorch for a checkpoint)."""
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


def search_with_tracklet(gallery: Gallery, tracklet_id: str, options: SearchOptions = SearchOptions()) -> QueryResult:
    """Search ``gallery`` with the embedding it holds for its own live tracklet ``tracklet_id``: nothing is embedded
    again, so the tracklet itself comes first (score 1) unless ``options`` filter it out. The result's source and
    key frames are the tracklet's.

    Raises:
        GalleryError: when the gallery holds no such tracklet, or as :func:`query_results`.
    """
    row = gallery.row_of(tracklet_id)
    if row is None:
        raise GalleryError(f"{gallery.path} holds no tracklet {tracklet_id}")
    record = gallery.rows.iloc[row]
    tracklet = row_to_tracklet(record)
    clip = QueryClip(tracklet.source if tracklet is not None else tracklet_id, int(record["num_frames"]),
                     _row_key_frames(gallery, row))
    (result,) = query_results(gallery, gallery.index.reconstruct(row)[None, :], [clip], options)
    return result
