"""``tfclip query`` on a linked gallery: the hits answer with people, each with their timeline over every camera.

Each hit already names its person (``Hit.person``, the gallery row's ``person_id``); :func:`query_people` adds the
person's :class:`~tfclip_cli.people.timeline.Person` from the gallery's rows, and (for the HTML report) each visit's
key frame read from its source video. On a gallery that was never linked the answer is the plain query's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tfclip_cli.errors import DataError
from tfclip_cli.footage.query import FootageQuery, PersonPointer, query_clips, query_json
from tfclip_cli.index import NO_FRAMES, Gallery, QueryResult, SearchOptions, load_index, read_source_key_frame
from tfclip_cli.people.timeline import KeyFrame, Person, build_people
from tfclip_cli.tables import PERSON_COLUMN, FootageOrigin


@dataclass(frozen=True)
class PeopleAnswer:
    """The query's results (as ``footage.query.query_clips`` returns them) and every person a hit names."""

    results: tuple[QueryResult | FootageQuery, ...]
    people: dict[int, Person]
    visit_frames: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    """(person id, visit number) → the visit's key frame ``[1, H, W, 3]``, read only for the HTML report."""

    @property
    def per_query(self) -> tuple[QueryResult, ...]:
        """One result per query clip, or per person found in query footage."""
        return tuple(r for result in self.results for r in getattr(result, "results", (result,)))

    def to_json(self) -> dict:
        """The one ``tfclip query --json`` answer (:func:`~tfclip_cli.footage.query.query_json`) whose every hit
        carries ``person`` (None when unlinked) and that person's ``timeline`` (its visits, or None)."""
        answer = query_json(self.results)
        for query in answer["queries"]:
            for found in query["persons"]:
                add_timelines(found["hits"], self.people)
        return answer


def add_timelines(hits: Sequence[dict], people: Mapping[int, Person]) -> None:
    """Give each hit dict (``Hit.to_dict``) the ``timeline`` of its ``person`` (None when it has none)."""
    for hit in hits:
        person = people.get(hit["person"]) if hit.get("person") is not None else None
        hit["timeline"] = None if person is None else person.to_dict()["visits"]


def hit_people(gallery: Gallery, results: Sequence[QueryResult]) -> dict[int, Person]:
    """Every person the hits of ``results`` name, built from the gallery's live rows ({} when none is named)."""
    named = {hit.person for result in results for hit in result.hits if hit.person is not None}
    if not named:
        return {}
    rows = gallery.rows[gallery.live & gallery.rows[PERSON_COLUMN].isin(sorted(named)).to_numpy()]
    return build_people(rows)


def _visit_frame(key: KeyFrame | None) -> np.ndarray:
    """A visit's key frame from its source video, or ``NO_FRAMES`` when it has none or it cannot be read."""
    if key is None:
        return NO_FRAMES
    origin = FootageOrigin(key.source_video, key.frame, key.frame, 0.0, 0.0, (key.box,))
    try:
        return read_source_key_frame(origin)
    except DataError:
        return NO_FRAMES


def query_people(gallery_path: Path, clips: Sequence[Path], *, detector: str,
                 search: SearchOptions = SearchOptions(), person: int | None = None,
                 pointer: PersonPointer | None = None) -> PeopleAnswer:
    """``tfclip query``: :func:`~tfclip_cli.footage.query.query_clips`, then the people its hits name (with their
    visits' key frames when ``search.with_hit_frames``).

    Raises:
        as :func:`~tfclip_cli.footage.query.query_clips`.
    """
    results = tuple(query_clips(gallery_path, clips, detector=detector, search=search, person=person,
                                pointer=pointer))
    answer = PeopleAnswer(results, {})
    if not any(hit.person is not None for result in answer.per_query for hit in result.hits):
        return answer
    people = hit_people(load_index(gallery_path), answer.per_query)
    frames = {}
    if search.with_hit_frames:
        frames = {(p.person_id, number): _visit_frame(visit.key_frame)
                  for p in people.values() for number, visit in enumerate(p.visits)}
    return PeopleAnswer(results, people, frames)
