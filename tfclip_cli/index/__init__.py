"""FAISS gallery: build, append, add and remove under a lock, load, calibrate, search; ``query`` = embed + search.

``store`` owns the gallery format (a base file and its append log, ``appendlog``; the writers' ids cache,
``known_ids``) and every write to it, ``calibrate`` the "no match" threshold (per
search at an FPIR, or per pair at a false-match rate) and when it has gone stale, ``search`` the search itself and ``query`` (embed clips with the gallery's checkpoint, search,
read key frames). The names below are the package's API.
"""

from tfclip_cli.index.calibrate import (
    DET_FPIRS,
    STALE_GROWTH,
    Calibration,
    DetCurve,
    DetPoint,
    SearchCalibration,
    SearchScores,
    calibrate_gallery,
    calibrate_gallery_per_pair,
    calibrate_search_threshold,
    calibrate_threshold,
    det_curve,
    det_point,
    search_scores,
    stale_calibration,
    warn_if_stale,
)
from tfclip_cli.index.search import (
    NO_FRAMES,
    QueryEmbedder,
    Hit,
    MinScore,
    QueryClip,
    QueryResult,
    SearchOptions,
    load_query_embedder,
    parse_min_score,
    query,
    query_results,
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
    compact_index,
    gallery_files,
    gallery_stamp,
    ivfpq_params,
    load_index,
    lock_path,
    normalized,
    remove_from_index,
    set_person_ids,
    writer_lock,
)

__all__ = [
    "append_to_index", "build_index", "calibrate_gallery", "calibrate_gallery_per_pair",
    "calibrate_search_threshold", "calibrate_threshold", "Calibration", "compact_index", "det_curve", "DET_FPIRS", "det_point",
    "DetCurve", "DetPoint", "Gallery", "gallery_files", "gallery_stamp", "Hit", "IndexInfo", "IndexType", "IVFPQ_MIN_ROWS", "ivfpq_params",
    "load_index", "load_query_embedder", "lock_path", "MinScore", "NO_FRAMES", "normalized", "parse_min_score",
    "query", "query_results", "query_tracklets", "QueryClip", "QueryEmbedder", "QueryResult", "read_key_frames",
    "read_source_key_frame", "remove_from_index", "resolve_min_score", "search", "search_scores",
    "SearchCalibration", "SearchOptions", "SearchScores", "set_person_ids", "stale_calibration", "STALE_GROWTH",
    "threshold_in_force", "tracklet_key_frames", "warn_if_stale", "writer_lock",
]
