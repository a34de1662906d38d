"""FAISS gallery: build, append, load with its sidecar, search; ``query`` = embed clips + search + key frames.

Every index holds L2-normalised embeddings and ranks by inner product (= cosine similarity), the score
used by ``evaluate``. Three types, row ``i`` of the index is row ``i`` of the sidecar:

- ``flat``: ``IndexFlatIP``, exact; the right choice below ~100k tracklets.
- ``ivfpq``: ``IndexIVFPQFastScan`` (4-bit codes scanned with SIMD) wrapped in ``IndexRefineFlat``;
  :func:`ivfpq_params` maps the gallery size N and dimension D to its parameters: ``nlist = round(sqrt(N))``
  inverted lists (at most ``N // 39``: faiss wants ≥ 39 training points per centroid); ``m`` = the largest divisor
  of D that is at most D / 4 (sub-quantizers of ≥ 4 dimensions), ``nbits = 4``; ``nprobe = clamp(nlist // 8, 16,
  nlist)``; k-means trains on a seeded sample of ``min(N, max(64 · nlist, IVFPQ_MIN_ROWS))`` rows. The PQ scan
  proposes ``k_factor · k`` candidates (``k_factor = 4``), re-scored exactly against the stored float vectors:
  recall@10 ≥ 0.95 in ``benchmarks/bench_index.py`` at the cost of keeping the raw vectors (memory as ``flat``,
  latency far lower). Galleries under ``IVFPQ_MIN_ROWS`` are refused: 2^4 PQ centroids need ≥ 39 points each.
- ``hnsw``: ``IndexHNSWFlat`` with ``M = 32`` links per node, ``efConstruction = 40`` (faiss's default; higher
  doubles build time for little recall on clustered data), ``efSearch = 64``.

Beside ``idx.faiss`` live ``idx.faiss.meta.parquet`` (one row per indexed tracklet: tracklet_id, pid, camid,
split, num_frames, frames, video) and ``idx.faiss.json`` (:class:`IndexInfo`). The three files are written
through ``tables.atomic_output`` and checked against each other on load.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tfclip_cli import __version__
from tfclip_cli.checkpoint import file_sha256, load_checkpoint, model_from_checkpoint
from tfclip_cli.clips import ClipTransform, read_frames
from tfclip_cli.errors import DataError, GalleryError, UserError
from tfclip_cli.inference import embed_tracklets, tracklet_from_path, transform_for
from tfclip_cli.model import TFCLIP
from tfclip_cli.tables import (
    EMBEDDING_ROW_COLUMNS,
    Embeddings,
    FootageOrigin,
    Tracklet,
    atomic_output,
    row_columns,
    row_schema,
    row_to_tracklet,
)

log = logging.getLogger(__name__)

IndexType = Literal["flat", "ivfpq", "hnsw"]

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 64
PQ_NBITS = 4
IVFPQ_MIN_ROWS = 39 * 2**PQ_NBITS
IVFPQ_K_FACTOR = 4.0
TRAIN_SEED = 1234


@dataclass(frozen=True)
class IndexInfo:
    """The JSON header beside an index: what it holds and where its embeddings came from."""

    type: IndexType
    dim: int
    count: int
    params: dict
    checkpoint: str | None
    checkpoint_sha256: str | None
    embeddings_info: dict = field(default_factory=dict)
    """Provenance of the embeddings table (sampling, embedding settings, gallery rule)."""
    tfclip_version: str = __version__


@dataclass(frozen=True)
class Gallery:
    """A loaded index with its sidecar rows (row ``i`` ↔ index id ``i``) and header."""

    path: Path
    index: Any
    rows: pd.DataFrame
    info: IndexInfo


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
    origin: FootageOrigin | None = None  # where in which video, for a gallery tracklet cut from footage

    def to_dict(self) -> dict:
        """JSON-ready; a footage origin as its video, frames, times and key frame with its box (not every box)."""
        fields = {name: value for name, value in asdict(self).items() if name != "origin"}
        if self.origin is not None:
            origin = self.origin
            fields["origin"] = {"source_video": origin.source_video, "first_frame": origin.first_frame,
                                "last_frame": origin.last_frame, "start_s": origin.start_s, "end_s": origin.end_s,
                                "key_frame": origin.key_frame, "key_box": list(origin.key_box)}
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

    def to_dict(self) -> dict:
        """JSON-ready: the query source, its frame count and the hits."""
        return {"query": self.source, "num_frames": self.num_frames, "hits": [hit.to_dict() for hit in self.hits]}


def sidecar_paths(path: Path) -> tuple[Path, Path]:
    """The rows table and the JSON header that belong to the index at ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.parquet"), path.with_name(path.name + ".json")


def ivfpq_params(count: int, dim: int) -> dict:
    """The documented IVF-PQ rule (module docstring) for ``count`` vectors of ``dim`` dimensions.

    Raises:
        GalleryError: when ``count`` is below ``IVFPQ_MIN_ROWS``, too few to train the PQ codebooks.
    """
    if count < IVFPQ_MIN_ROWS:
        raise GalleryError(
            f"ivfpq needs at least {IVFPQ_MIN_ROWS} tracklets to train its codebooks; the gallery has {count}",
            hint="use --type flat: exact search is fast at this size",
        )
    nlist = max(1, min(round(math.sqrt(count)), count // 39))
    m = max(divisor for divisor in range(1, max(1, dim // 4) + 1) if dim % divisor == 0)
    return {
        "nlist": nlist,
        "m": m,
        "nbits": PQ_NBITS,
        "nprobe": min(nlist, max(16, nlist // 8)),
        "k_factor": IVFPQ_K_FACTOR,
        "train_rows": min(count, max(64 * nlist, IVFPQ_MIN_ROWS)),
    }


def _index_params(index_type: IndexType, count: int, dim: int) -> dict:
    if index_type == "ivfpq":
        return ivfpq_params(count, dim)
    if index_type == "hnsw":
        return {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    return {}


def _new_index(index_type: IndexType, dim: int, params: dict) -> Any:
    """An empty CPU index of ``index_type`` for inner product (the IVF-PQ part alone, before refinement)."""
    if index_type == "flat":
        return faiss.IndexFlatIP(dim)
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["efConstruction"]
        index.hnsw.efSearch = params["efSearch"]
        return index
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQFastScan(
        quantizer, dim, params["nlist"], params["m"], params["nbits"], faiss.METRIC_INNER_PRODUCT
    )
    index.nprobe = params["nprobe"]
    index.own_fields = True
    quantizer.this.disown()
    return index


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Contiguous float32 copy of ``vectors`` [N, D] with unit L2 rows (zero rows stay zero)."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out /= np.maximum(norms, np.finfo(np.float32).tiny)
    return out


def _require_gpus(index_type: IndexType) -> int:
    """The number of GPUs faiss sees; raises UserError without faiss-gpu/CUDA or for a type with no GPU step."""
    count = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    if count == 0:
        raise UserError(
            "--gpu: faiss-gpu/CUDA is not available (this faiss build has no GPU support or sees no GPU)",
            hint="install faiss-gpu on a machine with CUDA GPUs, or drop --gpu to build on the CPU",
        )
    if index_type != "ivfpq":
        raise UserError(
            f"--gpu: a {index_type} index has no GPU build step (only ivfpq's k-means training runs on GPUs)",
            hint="drop --gpu, or use --type ivfpq",
        )
    return count


def _gpu_flat(dim: int) -> Any:
    """An empty inner-product flat index sharded over every visible GPU."""
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    return faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dim), options)


def _fill(index: Any, vectors: np.ndarray, *, train_rows: int, use_gpu: bool) -> None:
    """Train ``index`` when it needs it on a seeded sample of ``train_rows`` rows, then add ``vectors`` [N, D].

    With ``use_gpu`` the coarse k-means (the costly part of training) assigns points with a flat index sharded
    over every visible GPU; the index itself stays a CPU index, so the saved file loads anywhere.
    """
    if not index.is_trained:
        sample = np.random.default_rng(TRAIN_SEED).choice(len(vectors), size=train_rows, replace=False)
        ivf = faiss.extract_index_ivf(index)
        on_gpus = _gpu_flat(index.d) if use_gpu else None
        ivf.clustering_index = on_gpus  # the local keeps the GPU index alive while faiss holds a raw pointer
        index.train(vectors[np.sort(sample)])
        ivf.clustering_index = None
    index.add(vectors)


def _refined(base: Any, vectors: np.ndarray, k_factor: float) -> Any:
    """Wrap a filled IVF-PQ index so its ``k_factor · k`` candidates are re-scored exactly on ``vectors``."""
    index = faiss.IndexRefineFlat(base, faiss.swig_ptr(vectors))
    index.k_factor = k_factor
    return index


def _check_outputs(path: Path, *, force: bool) -> None:
    """Refuse before any work when the index or a sidecar file exists and ``force`` is false."""
    for target in (path, *sidecar_paths(path)):
        if target.exists() and not force:
            raise UserError(f"{target} already exists", hint="pass --force to overwrite it, or --append to extend it")


def _checked_rows(embeddings: Embeddings) -> pd.DataFrame:
    """The tracklet rows to index; raises GalleryError when there are none or an id repeats."""
    if len(embeddings.rows) == 0:
        raise GalleryError("the embeddings table has no rows: nothing to index")
    ids = embeddings.rows["tracklet_id"].astype(str)
    repeated = sorted(set(ids[ids.duplicated()]))
    if repeated:
        raise GalleryError(f"the embeddings table repeats tracklet ids {', '.join(repeated[:5])}: ids must be unique")
    return embeddings.rows[row_columns(embeddings.rows.columns)].reset_index(drop=True)


def _header_from(embeddings: Embeddings, index_type: IndexType, params: dict) -> IndexInfo:
    provenance = {k: v for k, v in embeddings.info.items() if k not in ("checkpoint", "checkpoint_sha256")}
    return IndexInfo(
        type=index_type,
        dim=embeddings.dim,
        count=len(embeddings.rows),
        params=params,
        checkpoint=embeddings.info.get("checkpoint"),
        checkpoint_sha256=embeddings.info.get("checkpoint_sha256"),
        embeddings_info=provenance,
    )


def build_index(
    embeddings: Embeddings,
    out: Path,
    *,
    index_type: IndexType = "flat",
    use_gpu: bool = False,
    force: bool = False,
) -> IndexInfo:
    """Index ``embeddings`` (L2-normalised, inner product) into ``out`` plus its two sidecar files.

    Raises:
        UserError: when an output exists without ``force``, or ``use_gpu`` without faiss-gpu/CUDA.
        GalleryError: on an empty table, repeated tracklet ids, or too few rows for ``ivfpq``.
    """
    out = Path(out)
    _check_outputs(out, force=force)
    if use_gpu:
        log.info("building on %d GPU(s)", _require_gpus(index_type))
    rows = _checked_rows(embeddings)
    params = _index_params(index_type, len(rows), embeddings.dim)
    vectors = normalized(embeddings.vectors)
    index = _new_index(index_type, embeddings.dim, params)
    _fill(index, vectors, train_rows=params.get("train_rows", 0), use_gpu=use_gpu)
    if index_type == "ivfpq":
        index = _refined(index, vectors, params["k_factor"])
    info = _header_from(embeddings, index_type, params)
    _write_gallery(index, rows, info, out, force=force)
    return info


def _check_appendable(gallery: Gallery, embeddings: Embeddings) -> None:
    """Same dimension, same checkpoint, no tracklet id twice; raises GalleryError naming the index otherwise."""
    if embeddings.dim != gallery.info.dim:
        raise GalleryError(
            f"{gallery.path} holds {gallery.info.dim}-d embeddings; the new table has {embeddings.dim}-d"
        )
    theirs, ours = embeddings.info.get("checkpoint_sha256"), gallery.info.checkpoint_sha256
    if theirs != ours:
        raise GalleryError(
            f"{gallery.path} holds embeddings of checkpoint sha256 {ours}; the new table's came from {theirs}",
            hint=f"extract the new tracklets with {gallery.info.checkpoint}, or build a new index",
        )
    new_ids = embeddings.rows["tracklet_id"].astype(str)
    repeated = sorted(set(new_ids[new_ids.duplicated()]) | (set(new_ids) & set(gallery.rows["tracklet_id"])))
    if repeated:
        raise GalleryError(f"{gallery.path}: tracklet ids already indexed or repeated: {', '.join(repeated[:5])}")


def append_to_index(embeddings: Embeddings, path: Path) -> IndexInfo:
    """Add new tracklets to the index at ``path`` and rewrite it and its sidecar atomically.

    Raises:
        GalleryError: on a missing/inconsistent index, another dimension or checkpoint, or a known tracklet id.
    """
    gallery = load_index(path)
    rows = _checked_rows(embeddings)
    _check_appendable(gallery, embeddings)
    gallery.index.add(normalized(embeddings.vectors))
    all_rows = pd.concat([gallery.rows, rows], ignore_index=True)
    info = IndexInfo(**{**asdict(gallery.info), "count": len(all_rows), "tfclip_version": __version__})
    _write_gallery(gallery.index, all_rows, info, gallery.path, force=True)
    return info


def _write_gallery(index: Any, rows: pd.DataFrame, info: IndexInfo, path: Path, *, force: bool) -> None:
    """Write the index, its rows table and its header; none is renamed into place unless all three are written."""
    assert index.ntotal == len(rows) == info.count, (index.ntotal, len(rows), info.count)
    meta, header = sidecar_paths(path)
    columns = row_columns(rows.columns)
    table = pa.Table.from_pandas(rows[columns], schema=row_schema(columns), preserve_index=False)
    with (
        atomic_output(path, force=force) as index_temp,
        atomic_output(meta, force=force) as meta_temp,
        atomic_output(header, force=force) as header_temp,
    ):
        faiss.write_index(index, str(index_temp))
        pq.write_table(table, meta_temp)
        header_temp.write_text(json.dumps(asdict(info), indent=2, sort_keys=True) + "\n")


def _read_header(path: Path) -> IndexInfo:
    try:
        return IndexInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise GalleryError(
            f"{path} is not a tfclip index header ({exc}): expected the JSON written by tfclip index"
        ) from exc


def _read_rows(path: Path) -> pd.DataFrame:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise GalleryError(f"{path} is not a readable Parquet sidecar ({exc})") from exc
    missing = [c for c in EMBEDDING_ROW_COLUMNS if c not in table.column_names]
    if missing:
        raise GalleryError(f"{path} lacks the column(s) {', '.join(missing)}: expected a tfclip index sidecar")
    return table.select(row_columns(table.column_names)).to_pandas()


def _read_faiss(path: Path) -> Any:
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise GalleryError(f"{path} is not a readable FAISS index ({str(exc).splitlines()[0]})") from exc


def load_index(path: Path) -> Gallery:
    """Load the index at ``path`` with its rows and header, checked against each other.

    Raises:
        GalleryError: naming the file, when the index or a sidecar is missing or corrupt, the index is empty,
            or the counts or dimensions disagree.
    """
    path = Path(path)
    meta, header = sidecar_paths(path)
    for target, what in ((path, "FAISS index"), (meta, "sidecar rows table"), (header, "sidecar JSON header")):
        if not target.is_file():
            raise GalleryError(
                f"{target} not found: expected the {what} written by tfclip index",
                hint=f"build it with: tfclip index E.parquet --out {path}",
            )
    info, rows, index = _read_header(header), _read_rows(meta), _read_faiss(path)
    if index.ntotal == 0:
        raise GalleryError(f"{path} is an empty index: nothing to search", hint="index some embeddings first")
    if not (index.ntotal == len(rows) == info.count):
        raise GalleryError(
            f"{path} holds {index.ntotal} vectors, {meta} {len(rows)} rows and {header} count {info.count}: "
            "expected one count",
            hint=f"rebuild the index: tfclip index E.parquet --out {path} --force",
        )
    if index.d != info.dim:
        raise GalleryError(f"{path} holds {index.d}-d vectors but {header} says {info.dim}-d")
    return Gallery(path=path, index=index, rows=rows, info=info)


def search(gallery: Gallery, vectors: np.ndarray, top_k: int) -> list[list[Hit]]:
    """The ``top_k`` most similar gallery tracklets for each query embedding in ``vectors`` [Q, D].

    Raises:
        GalleryError: when the query dimension differs from the index's.
    """
    if vectors.shape[1] != gallery.info.dim:
        raise GalleryError(
            f"query embeddings have {vectors.shape[1]} dimensions; {gallery.path} holds {gallery.info.dim}-d"
        )
    scores, ids = gallery.index.search(normalized(vectors), min(top_k, gallery.index.ntotal))
    found = [[(float(score), int(row)) for score, row in zip(s, i) if row >= 0] for s, i in zip(scores, ids)]
    return [
        [_hit(gallery.rows, row, rank, score) for rank, (score, row) in enumerate(pairs, start=1)]
        for pairs in found
    ]


def _hit(rows: pd.DataFrame, row: int, rank: int, score: float) -> Hit:
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
        origin=tracklet.origin if tracklet is not None else None,
    )


NO_FRAMES = np.zeros((0, 1, 1, 3), dtype=np.uint8)


def read_key_frames(tracklet: Tracklet) -> np.ndarray:
    """The first, middle and last frame of ``tracklet`` as uint8 ``[K, H, W, 3]`` (K ≤ 3 for short tracklets).

    Raises:
        DataError: naming the file when a frame cannot be decoded.
    """
    last = tracklet.num_frames - 1
    frames = read_frames(tracklet, sorted({0, last // 2, last}))  # [K, 3, H, W]
    return frames.permute(0, 2, 3, 1).numpy()


def read_source_key_frame(origin: FootageOrigin) -> np.ndarray:
    """The key frame of a footage tracklet in its source video, uint8 ``[1, H, W, 3]`` (the report draws the box).

    Raises:
        DataError: naming the video when it cannot be decoded.
    """
    video = Tracklet(origin.source_video, -1, -1, "gallery", origin.key_frame + 1, video=origin.source_video)
    return read_frames(video, [origin.key_frame]).permute(0, 2, 3, 1).numpy()


def _hit_key_frames(gallery: Gallery, hit: Hit) -> np.ndarray:
    """A hit's key frames (for footage, its key frame in the source video), or ``NO_FRAMES`` (logged) when its
    source is unknown or unreadable."""
    tracklet = row_to_tracklet(gallery.rows.iloc[hit.row])
    if tracklet is None:
        return NO_FRAMES
    try:
        return read_source_key_frame(hit.origin) if hit.origin is not None else read_key_frames(tracklet)
    except DataError as exc:
        log.warning("no key frames for gallery tracklet %s: %s", hit.tracklet_id, exc.message)
        return NO_FRAMES


def _query_model(
    gallery: Gallery, checkpoint: Path | None, device: torch.device
) -> tuple[TFCLIP, ClipTransform]:
    """The model (and its test transform) that made the gallery's embeddings: ``checkpoint`` or the recorded one.

    Raises:
        GalleryError: when no checkpoint is given or recorded, or its sha256 or embedding dimension differs.
    """
    recorded = gallery.info.checkpoint
    if checkpoint is None and recorded is None:
        raise GalleryError(f"{gallery.path} records no checkpoint", hint="pass the one that made it: --checkpoint C")
    path = Path(checkpoint if checkpoint is not None else recorded)
    expected = gallery.info.checkpoint_sha256
    if expected is not None and path.is_file() and file_sha256(path) != expected:
        raise GalleryError(
            f"{path} is not the checkpoint {gallery.path} was built from (sha256 {expected[:12]}…, "
            f"recorded path {recorded})",
            hint="query with the checkpoint that extracted the gallery, or re-extract and re-index",
        )
    state = load_checkpoint(path)
    model = model_from_checkpoint(state, device)
    if model.embedding_dim != gallery.info.dim:
        raise GalleryError(
            f"{path} embeds in {model.embedding_dim} dimensions; {gallery.path} holds {gallery.info.dim}-d embeddings"
        )
    return model, transform_for(state)


def query(
    gallery_path: Path,
    clips: list[Path],
    *,
    checkpoint: Path | None = None,
    top_k: int = 10,
    device: torch.device | str = "cpu",
    with_hit_frames: bool = False,
) -> list[QueryResult]:
    """Embed each clip (video file or frame folder) in one batch and find its ``top_k`` gallery tracklets.

    Clips are embedded with the checkpoint recorded in the index header (or ``checkpoint``) and the sampling the
    gallery was extracted with, without camera embedding (a query's camera is unknown).

    Args:
        with_hit_frames: also read the key frames of every hit (for the HTML report).

    Raises:
        GalleryError: a missing, empty or inconsistent index, or a checkpoint that does not match it.
        DataError: naming a clip that is missing or cannot be decoded.
    """
    gallery = load_index(gallery_path)
    tracklets = [tracklet_from_path(Path(clip)) for clip in clips]
    return query_tracklets(gallery, tracklets, checkpoint=checkpoint, top_k=top_k, device=device,
                           with_hit_frames=with_hit_frames)


def query_tracklets(
    gallery: Gallery,
    tracklets: list[Tracklet],
    *,
    checkpoint: Path | None = None,
    top_k: int = 10,
    device: torch.device | str = "cpu",
    with_hit_frames: bool = False,
) -> list[QueryResult]:
    """:func:`query` for tracklets already described (e.g. people cut out of a query video)."""
    device = torch.device(device)
    model, transform = _query_model(gallery, checkpoint, device)
    sampling = gallery.info.embeddings_info.get("sampling", "dense")
    vectors = embed_tracklets(model, tracklets, sampling=sampling, transform=transform, device=device)
    results = []
    for tracklet, hits in zip(tracklets, search(gallery, vectors, top_k)):
        frames = tuple(_hit_key_frames(gallery, hit) for hit in hits) if with_hit_frames else ()
        results.append(
            QueryResult(tracklet.source, tracklet.num_frames, read_key_frames(tracklet), tuple(hits), frames)
        )
    return results
