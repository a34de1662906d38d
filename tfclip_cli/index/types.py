"""Gallery index types: their FAISS construction, their parameters, their memory, and ``--type auto``'s choice.

Every index holds L2-normalised embeddings and ranks by inner product (= cosine similarity), the score
used by ``evaluate``. Six types, row ``i`` of the index is row ``i`` of the rows table:

- ``flat``: ``IndexFlatIP``, exact; the right choice below ~100k tracklets.
- ``ivfpq``: ``IndexIVFPQFastScan`` (4-bit codes scanned with SIMD) wrapped in ``IndexRefineFlat``;
  :func:`ivfpq_params` maps the gallery size N and dimension D to its parameters: ``nlist = round(sqrt(N))``
  inverted lists (at most ``N // 39``: faiss wants ≥ 39 training points per centroid); ``m`` = the largest divisor
  of D that is at most D / 4 (sub-quantizers of ≥ 4 dimensions; a D with no such divisor above 1, a prime or
  D < 8, is refused: one sub-quantizer of all D dimensions with 16 centroids cannot rank), ``nbits = 4``;
  ``nprobe = clamp(nlist // 8, 16, nlist)``; k-means trains on a seeded sample of ``min(N, max(64 · nlist,
  IVFPQ_MIN_ROWS))`` rows. The PQ scan proposes ``k_factor · k`` candidates (``k_factor = 4``), re-scored exactly
  against the stored float vectors: recall@10 ≥ 0.95 in ``benchmarks/bench_index.py`` at the cost of keeping the
  raw vectors (memory as ``flat``, latency far lower). Galleries under ``IVFPQ_MIN_ROWS`` are refused: 2^4 PQ centroids need ≥ 39 points each.
- ``ivfpq-fp16`` / ``ivfpq-sq8``: the same IVF-PQ, its candidates re-scored on float16 vectors, or on 8-bit
  scalar-quantised ones (``IndexScalarQuantizer`` ``QT_8bit``, a min-max range per dimension trained on the
  k-means sample): 2 or 1 byte(s) per dimension instead of 4. ``ivfpq-norescore``: the PQ scan's own top k, no
  vectors kept (``m / 2 + 8`` bytes per tracklet). :func:`choose_index_type` (``tfclip index --type auto``) picks
  ``flat`` up to ``FLAT_MAX_ROWS`` tracklets, then the most accurate of these whose :func:`index_bytes` fits a
  memory budget.
- ``hnsw``: ``IndexHNSWFlat`` with ``M = 32`` links per node, ``efConstruction = 40`` (faiss's default; higher
  doubles build time for little recall on clustered data), ``efSearch = 64``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import faiss

from tfclip_cli.errors import GalleryError, UserError

IndexType = Literal["flat", "ivfpq", "ivfpq-fp16", "ivfpq-sq8", "ivfpq-norescore", "hnsw"]
RESCORE_BYTES = {"ivfpq": 4, "ivfpq-fp16": 2, "ivfpq-sq8": 1, "ivfpq-norescore": 0}
"""Bytes per dimension of the vectors an ``ivfpq*`` type keeps to re-score its candidates, most accurate first."""
_SCALAR_QUANTIZERS = {"ivfpq-fp16": "QT_fp16", "ivfpq-sq8": "QT_8bit"}
FLAT_MAX_ROWS = 100_000
"""``--type auto`` indexes up to this many tracklets exactly (``flat``) when the budget allows."""
DEFAULT_MEMORY_BUDGET = 8 * 2**30
"""``--type auto``'s budget unless given: a third of a 24 GiB machine."""

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 64
PQ_NBITS = 4
IVFPQ_MIN_ROWS = 39 * 2**PQ_NBITS
IVFPQ_K_FACTOR = 4.0


def ivfpq_params(count: int, dim: int) -> dict:
    """The documented IVF-PQ rule (module docstring) for ``count`` vectors of ``dim`` dimensions.

    Raises:
        GalleryError: when ``count`` is below ``IVFPQ_MIN_ROWS``, too few to train the PQ codebooks, or ``dim``
            has no divisor between 2 and ``dim / 4`` (a prime, or below 8) to split the vectors into sub-quantizers.
    """
    if count < IVFPQ_MIN_ROWS:
        raise GalleryError(
            f"ivfpq needs at least {IVFPQ_MIN_ROWS} tracklets to train its codebooks; the gallery has {count}",
            hint="use --type flat: exact search is fast at this size",
        )
    m = max(divisor for divisor in range(1, max(1, dim // 4) + 1) if dim % divisor == 0)
    if m == 1:
        raise GalleryError(
            f"ivfpq splits each vector into sub-quantizers of equal width; {dim}-d embeddings have no divisor "
            f"between 2 and {dim // 4}, so one sub-quantizer of 16 centroids would code all {dim} dimensions",
            hint="use --type hnsw (or flat), or embed with a model whose width has small divisors (e.g. 512)",
        )
    nlist = max(1, min(round(math.sqrt(count)), count // 39))
    return {
        "nlist": nlist,
        "m": m,
        "nbits": PQ_NBITS,
        "nprobe": min(nlist, max(16, nlist // 8)),
        "k_factor": IVFPQ_K_FACTOR,
        "train_rows": min(count, max(64 * nlist, IVFPQ_MIN_ROWS)),
    }


def index_bytes(index_type: IndexType, count: int, dim: int) -> int:
    """Estimated bytes of the FAISS index of ``count`` ``dim``-d vectors: what a process that opens the gallery
    holds in memory.

    ``flat``: 4 D per vector; ``hnsw``: that plus 2 M int32 level-0 links; ``ivfpq*``: ``m · nbits / 8`` bytes of
    PQ code and an 8-byte id per vector, the ``nlist`` float32 centroids, and ``RESCORE_BYTES`` per dimension of
    re-scoring vectors. The rows table comes on top (about 70 bytes per tracklet of plain manifest columns
    in memory, measured at 1e6 rows).

    Raises:
        GalleryError: for an ``ivfpq*`` type ``count`` and ``dim`` cannot make (see :func:`ivfpq_params`).
    """
    if index_type == "flat":
        return count * dim * 4
    if index_type == "hnsw":
        return count * (dim * 4 + 2 * HNSW_M * 4)
    params = ivfpq_params(count, dim)
    per_vector = params["m"] * params["nbits"] // 8 + 8 + dim * RESCORE_BYTES[index_type]
    return count * per_vector + params["nlist"] * dim * 4


@dataclass(frozen=True)
class IndexChoice:
    """The index type ``--type auto`` chose and why."""

    type: IndexType
    index_bytes: int
    reason: str


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def choose_index_type(count: int, dim: int, budget: int) -> IndexChoice:
    """``flat`` for up to ``FLAT_MAX_ROWS`` tracklets, else the most accurate ``ivfpq*`` type (float32, then fp16,
    then 8-bit re-scoring, then none) whose :func:`index_bytes` is at most ``budget`` bytes.

    ``hnsw`` is never chosen: it keeps the float32 vectors and a graph, more than ``ivfpq`` for less recall.

    Raises:
        GalleryError: when nothing fits the budget (naming the smallest type's size), or ``ivfpq`` cannot
            index ``count`` ``dim``-d vectors and flat does not fit.
    """
    flat = index_bytes("flat", count, dim)
    if count <= FLAT_MAX_ROWS and flat <= budget:
        return IndexChoice("flat", flat, f"{count:,} tracklets (at most {FLAT_MAX_ROWS:,}): exact search, "
                                         f"{_gib(flat)} of the {_gib(budget)} budget")
    if count < IVFPQ_MIN_ROWS:
        raise GalleryError(f"a flat index of {count:,} {dim}-d tracklets takes {_gib(flat)}, over the memory "
                           f"budget of {_gib(budget)}, and ivfpq needs at least {IVFPQ_MIN_ROWS} tracklets",
                           hint="raise --memory-budget")
    sizes = {index_type: index_bytes(index_type, count, dim) for index_type in RESCORE_BYTES}
    for index_type, size in sizes.items():
        if size <= budget:
            larger = [f"{other} {_gib(sizes[other])}" for other in sizes if sizes[other] > budget]
            why = f" (over it: {', '.join(larger)})" if larger else ""
            scale = "over" if count > FLAT_MAX_ROWS else "up to"
            return IndexChoice(index_type, size, f"{count:,} tracklets ({scale} {FLAT_MAX_ROWS:,}): the most "
                               f"accurate ivfpq type within the {_gib(budget)} budget, {_gib(size)}{why}")
    smallest = min(sizes, key=sizes.get)
    raise GalleryError(
        f"no index of {count:,} {dim}-d tracklets fits the memory budget of {_gib(budget)}: the smallest, "
        f"{smallest}, takes {_gib(sizes[smallest])}",
        hint=f"raise --memory-budget to at least {math.ceil(sizes[smallest] / 2**30)}GiB",
    )


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*", re.IGNORECASE)


def parse_memory_budget(text: str) -> int:
    """Bytes of a size such as ``4GiB``, ``512MiB``, ``8G`` (powers of 1024) or ``123`` (bytes).

    Raises:
        UserError: naming the text when it is not such a size.
    """
    match = _SIZE.fullmatch(text)
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"--memory-budget {text!r} is not a size", hint="write e.g. 4GiB, 512MiB or 8G")
    unit = (match.group(2) or "B").upper()[0]
    return int(float(match.group(1)) * 1024 ** "BKMGT".index(unit))


def index_params(index_type: IndexType, count: int, dim: int) -> dict:
    if index_type in RESCORE_BYTES:
        params = ivfpq_params(count, dim)
        if index_type == "ivfpq-norescore":
            del params["k_factor"]
        return params
    if index_type == "hnsw":
        return {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    return {}


def _owning(wrapper: Any, *parts: Any) -> Any:
    """``wrapper`` made the owner of its sub-indexes ``parts`` (freed with it, not by Python)."""
    wrapper.own_fields = True
    for part in parts:
        part.this.disown()
    return wrapper


def _ivfpq(dim: int, params: dict) -> Any:
    """An empty IVF-PQ fast-scan index, its coarse quantizer owned."""
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQFastScan(
        quantizer, dim, params["nlist"], params["m"], params["nbits"], faiss.METRIC_INNER_PRODUCT
    )
    index.nprobe = params["nprobe"]
    return _owning(index, quantizer)


def new_index(index_type: IndexType, dim: int, params: dict) -> Any:
    """An empty CPU index of ``index_type`` for inner product."""
    if index_type == "flat":
        return faiss.IndexFlatIP(dim)
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["efConstruction"]
        index.hnsw.efSearch = params["efSearch"]
        return index
    base = _ivfpq(dim, params)
    if index_type == "ivfpq-norescore":
        return base
    if index_type == "ivfpq":
        index = _owning(faiss.IndexRefineFlat(base), base)
    else:
        quantizer_type = getattr(faiss.ScalarQuantizer, _SCALAR_QUANTIZERS[index_type])
        rescore = faiss.IndexScalarQuantizer(dim, quantizer_type, faiss.METRIC_INNER_PRODUCT)
        index = _owning(faiss.IndexRefine(base, rescore), base, rescore)
    index.k_factor = params["k_factor"]
    return index
