"""FAISS gallery: build, append, add and remove under a lock, load, calibrate, search; ``query`` = embed + search.

``store`` owns the one-file gallery format and every write to it, ``calibrate`` the "no match" threshold at a
false-match rate, ``search`` the search itself and ``query`` (embed clips with the gallery's checkpoint, search,
read key frames). The names below are the package's API.
"""

from tfclip_cli.index.calibrate import Calibration, calibrate_gallery, calibrate_threshold
from tfclip_cli.index.search import (
    NO_FRAMES,
    QueryEmbedder,
    Hit,
    MinScore,
    QueryResult,
    SearchOptions,
    load_query_embedder,
    parse_min_score,
    query,
    query_tracklets,
    read_key_frames,
    read_source_key_frame,
    resolve_min_score,
    search,
    threshold_in_force,
    tracklet_key_frames,
)
from tfclip_cli.index.store import (
    IVFPQ_MIN_ROWS,
    Gallery,
    IndexInfo,
    IndexType,
    append_to_index,
    build_index,
    ivfpq_params,
    load_index,
    lock_path,
    normalized,
    remove_from_index,
    set_person_ids,
    writer_lock,
)

__all__ = [
    "Calibration", "QueryEmbedder", "Gallery", "Hit", "IVFPQ_MIN_ROWS", "IndexInfo", "IndexType", "MinScore",
    "NO_FRAMES", "QueryResult", "SearchOptions", "append_to_index", "build_index", "calibrate_gallery", "calibrate_threshold",
    "ivfpq_params", "load_query_embedder", "load_index", "lock_path", "normalized", "parse_min_score", "query",
    "query_tracklets", "read_key_frames", "read_source_key_frame", "remove_from_index", "resolve_min_score", "search", "threshold_in_force",
    "set_person_ids", "tracklet_key_frames", "writer_lock",
]
