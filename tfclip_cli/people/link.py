"""``tfclip link``: footage tracklets → people across cameras and time, written as a ``person_id`` column.

The "same person" threshold is ``--threshold``, else the one calibrated on labelled tracklets (``--labelled``:
the gallery's "no match" threshold at false-match rate ``LINK_FMR``, from ``index.calibrate``), else
``cluster.DEFAULT_THRESHOLD``. ``--onto P.parquet`` links incrementally: the rows of an earlier linked table keep
their people and the new rows join them or start new people, without re-clustering (``cluster.assign``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tfclip_cli.errors import GalleryError, UserError
from tfclip_cli.index import calibrate_threshold, set_person_ids
from tfclip_cli.people.cluster import DEFAULT_THRESHOLD, ClusterOptions, assign, cluster_people, pair_scores
from tfclip_cli.people.constraints import CameraGraph, TrackletTimes, cannot_link, plausible_moves, read_camera_graph
from tfclip_cli.people.export import ExportFormat, export_boxes
from tfclip_cli.people.timeline import UNLINKED, Person, build_people
from tfclip_cli.tables import PERSON_COLUMN, Embeddings, check_writable, read_embeddings, write_embeddings

log = logging.getLogger(__name__)

LINK_FMR = 0.01
"""False-match rate of the pairwise threshold calibrated on labelled tracklets (``--labelled``)."""


def _scores_and_rules(embeddings: Embeddings, graph: CameraGraph | None, options: ClusterOptions
                      ) -> tuple[np.ndarray, np.ndarray]:
    times = TrackletTimes.from_rows(embeddings.rows)
    if np.isnan(times.start_time).any():
        log.warning("%d of %d tracklets carry no absolute time: only the same-video rule applies to them",
                    int(np.isnan(times.start_time).sum()), len(times))
    moves = plausible_moves(times, graph) if graph is not None else None
    return pair_scores(embeddings.vectors, moves, options.move_bonus), cannot_link(times, graph)


def link_people(embeddings: Embeddings, *, graph: CameraGraph | None = None,
                options: ClusterOptions = ClusterOptions()) -> np.ndarray:
    """A person id ``[N]`` (0, 1, ...) for every row of ``embeddings``: constrained agglomerative clustering of
    their scores under the rules (``people.constraints``), refined by a Hungarian pass per camera."""
    scores, cannot = _scores_and_rules(embeddings, graph, options)
    times = TrackletTimes.from_rows(embeddings.rows)
    return cluster_people(scores, cannot, times=times, threshold=options.threshold)


def link_onto(embeddings: Embeddings, known: np.ndarray, *, graph: CameraGraph | None = None,
              options: ClusterOptions = ClusterOptions()) -> np.ndarray:
    """Person ids ``[N]``: rows with a ``known`` id (≥ 0) keep it; the others (``known`` -1), in time order, join
    the best allowed person or start new ones (``cluster.assign``)."""
    scores, cannot = _scores_and_rules(embeddings, graph, options)
    new = np.flatnonzero(np.asarray(known) < 0)
    starts = TrackletTimes.from_rows(embeddings.rows).start_time[new]
    order = new[np.argsort(np.nan_to_num(starts, nan=np.inf), kind="stable")]
    return assign(scores, cannot, known, order=order, threshold=options.threshold)


def labelled_threshold(labelled: Path) -> float:
    """The pairwise same-person threshold at false-match rate ``LINK_FMR`` on a labelled embeddings table."""
    return calibrate_threshold(read_embeddings(labelled), LINK_FMR).threshold


@dataclass(frozen=True)
class LinkRequest:
    """What ``tfclip link`` is asked to do (paths as given)."""

    embeddings: Path
    out: Path
    cameras: Path | None = None  # the camera graph (cameras.yaml)
    gallery: Path | None = None  # write the person ids into this gallery's rows too
    threshold: float | None = None
    labelled: Path | None = None  # calibrate the threshold on these labelled tracklets
    onto: Path | None = None  # an earlier linked table: link incrementally onto its people
    export: Path | None = None
    export_format: ExportFormat = "aicity"
    force: bool = False


@dataclass(frozen=True)
class LinkSummary:
    """What ``tfclip link`` did."""

    out: str
    tracklets: int
    new_tracklets: int  # linked this time (all of them without --onto)
    people: tuple[Person, ...]
    threshold: float
    threshold_from: str  # "--threshold", "--labelled", or "default"
    graph: str | None
    gallery: str | None
    export: str | None


def _threshold(request: LinkRequest) -> tuple[float, str]:
    if request.threshold is not None and request.labelled is not None:
        raise UserError("--threshold and --labelled both set the threshold: pass one of them")
    if request.threshold is not None:
        return request.threshold, "--threshold"
    if request.labelled is not None:
        return labelled_threshold(request.labelled), "--labelled"
    return DEFAULT_THRESHOLD, "default"


def _onto(embeddings: Embeddings, onto: Path) -> tuple[Embeddings, np.ndarray]:
    """The earlier linked table's rows (with their ids) followed by the new rows (id -1) not already in it."""
    earlier = read_embeddings(onto)
    if PERSON_COLUMN not in earlier.rows:
        raise GalleryError(f"{onto} has no {PERSON_COLUMN} column: expected a table written by tfclip link")
    if earlier.dim != embeddings.dim or earlier.info.get("checkpoint_sha256") != embeddings.info.get(
            "checkpoint_sha256"):
        raise GalleryError(f"{onto} holds embeddings of another model or dimension than {embeddings.dim}-d new rows",
                           hint="link tracklets extracted with the checkpoint of the earlier table")
    fresh = ~embeddings.rows["tracklet_id"].isin(set(earlier.rows["tracklet_id"])).to_numpy()
    rows = pd.concat([earlier.rows, embeddings.rows[fresh].drop(columns=[PERSON_COLUMN], errors="ignore")],
                     ignore_index=True)
    known = np.concatenate([earlier.rows[PERSON_COLUMN].fillna(UNLINKED).to_numpy(np.int64),
                            np.full(int(fresh.sum()), UNLINKED)])
    vectors = np.concatenate([earlier.vectors, embeddings.vectors[fresh]])
    return Embeddings(rows=rows, vectors=vectors, info=earlier.info), known


def link_file(request: LinkRequest) -> LinkSummary:
    """``tfclip link``: read the embeddings table, link its tracklets into people, write the table with a
    ``person_id`` column to ``request.out`` (and the gallery's rows, and the export, when asked).

    Raises:
        UserError: an output that exists without ``force``, or two sources of the threshold.
        GalleryError / DataError: unreadable inputs, a gallery without these tracklets, a malformed camera graph.
    """
    check_writable(request.out, force=request.force)
    threshold, source = _threshold(request)
    graph = read_camera_graph(request.cameras) if request.cameras is not None else None
    embeddings = read_embeddings(request.embeddings)
    options = ClusterOptions(threshold=threshold)
    if request.onto is not None:
        embeddings, known = _onto(embeddings, request.onto)
        person_ids = link_onto(embeddings, known, graph=graph, options=options)
    else:
        known = np.full(len(embeddings.rows), UNLINKED)
        person_ids = link_people(embeddings, graph=graph, options=options)
    linked = Embeddings(rows=embeddings.rows.assign(**{PERSON_COLUMN: person_ids}), vectors=embeddings.vectors,
                        info={**embeddings.info, "link": {"threshold": threshold, "threshold_from": source,
                                                          "cameras": None if graph is None else str(request.cameras)}})
    write_embeddings(linked, request.out, force=request.force)
    if request.gallery is not None:
        set_person_ids(request.gallery, dict(zip(linked.rows["tracklet_id"].astype(str), map(int, person_ids))))
    if request.export is not None:
        export_boxes(linked.rows, person_ids, request.export, layout=request.export_format, force=request.force)
    people = build_people(linked.rows)
    return LinkSummary(str(request.out), len(person_ids), int((known < 0).sum()), tuple(people.values()), threshold,
                       source, None if request.cameras is None else str(request.cameras),
                       None if request.gallery is None else str(request.gallery),
                       None if request.export is None else str(request.export))
