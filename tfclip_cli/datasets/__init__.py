"""From a layout on disk to a Manifest: the KINDS registry, :func:`prepare` and :func:`summarize`.

One parser per layout (``mars``, ``lsvid``, ``ilidsvid``, ``prid2011``, ``folder``, ``footage``); ``synthetic``
draws the embedded dataset in the ``folder`` layout and parses it, or (with ``synthetic_footage``) draws camera
footage with MOTChallenge ground truth and lists its ground-truth tracklets. Each kind records its evaluation
protocol (the gallery rule) in the manifest, so evaluation follows the benchmark's own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tfclip_cli.datasets import folder, footage, ilidsvid, lsvid, mars, prid2011
from tfclip_cli.datasets.common import Parsed, Problems
from tfclip_cli.datasets.synthetic import SyntheticOptions, generate_synthetic
from tfclip_cli.datasets.synthetic_footage import FootageOptions, generate_footage
from tfclip_cli.errors import DataError, UserError
from tfclip_cli.tables import (
    NON_UTF8_REASON,
    SPLITS,
    UNKNOWN_PID,
    GalleryRule,
    Manifest,
    ManifestInfo,
    Tracklet,
    manifest_from_tracklets,
    non_utf8_name,
)


def parse_synthetic(root: Path, *, problems: Problems, synthetic: SyntheticOptions | None = None,
                    synthetic_footage: FootageOptions | None = None) -> Parsed:
    """Draw the embedded synthetic dataset into ROOT (folder layout), then parse it as ``folder``; with
    ``synthetic_footage``, draw synthetic camera footage instead and return its ground-truth tracklets."""
    if synthetic_footage is not None:
        if synthetic is not None:
            raise UserError("the synthetic tracklet options do not apply to synthetic footage: pass one or the other")
        drawn = generate_footage(root, synthetic_footage)
        return Parsed(tracklets=drawn, extra={"footage": dataclasses.asdict(synthetic_footage)})
    options = synthetic or SyntheticOptions()
    generate_synthetic(root, options)
    parsed = folder.parse(root, problems=problems)
    return Parsed(tracklets=parsed.tracklets, extra={"synthetic": dataclasses.asdict(options)})


@dataclass(frozen=True)
class DatasetKind:
    """A layout tfclip can prepare: its parser, its official gallery rule and the options it takes."""

    name: str
    parse: Callable[..., Parsed]
    gallery_rule: GalleryRule
    options: frozenset[str] = frozenset()  # keyword options of prepare() this kind accepts besides strict


KINDS: dict[str, DatasetKind] = {
    kind.name: kind
    for kind in (
        DatasetKind("mars", mars.parse, "includes_query"),
        DatasetKind("lsvid", lsvid.parse, "includes_query", frozenset({"train_chunk"})),
        DatasetKind("ilidsvid", ilidsvid.parse, "includes_query", frozenset({"split_id", "window", "window_stride"})),
        DatasetKind("prid2011", prid2011.parse, "gallery_only", frozenset({"split_id"})),
        DatasetKind("folder", folder.parse, "gallery_only"),
        DatasetKind("synthetic", parse_synthetic, "gallery_only", frozenset({"synthetic", "synthetic_footage"})),
        DatasetKind("footage", footage.parse, "gallery_only"),
    )
}
OPTION_FLAGS = {"split_id": "--split-id", "train_chunk": "--train-chunk", "window": "--window",
                "window_stride": "--window-stride", "synthetic": "the synthetic options",
                "synthetic_footage": "--footage"}
OPTION_VERBS = {"synthetic": "do"}  # grammatical number of the flag's name; "does" otherwise


def _kind(name: str) -> DatasetKind:
    if name not in KINDS:
        raise UserError(f"unknown dataset kind {name!r}: expected one of {', '.join(KINDS)}")
    return KINDS[name]


def _check_options(kind: DatasetKind, given: dict) -> None:
    for option in given:
        if option not in kind.options:
            takers = [k.name for k in KINDS.values() if option in k.options]
            verb = OPTION_VERBS.get(option, "does")
            raise UserError(f"{OPTION_FLAGS[option]} {verb} not apply to {kind.name}: only to {', '.join(takers)}")


def prepare(
    kind: str,
    root: Path,
    *,
    split_id: int | None = None,
    train_chunk: int | None = None,
    window: int | None = None,
    window_stride: int | None = None,
    synthetic: SyntheticOptions | None = None,
    synthetic_footage: FootageOptions | None = None,
    strict: bool = False,
) -> Manifest:
    """Parse the dataset at ``root`` in layout ``kind`` into a Manifest (train, then query, then gallery rows).

    Args:
        kind: a key of :data:`KINDS`.
        root: the dataset folder (for ``synthetic``, where to draw it).
        split_id: ilidsvid and prid2011 only: which of the 10 splits (default 0).
        train_chunk: lsvid only: frames per training chunk, shorter tracklets left out (default 48, as the
            reference; 0 keeps whole tracklets).
        window, window_stride: ilidsvid only: cut every sequence into windows (default 8 and 4, as the reference;
            window 0 keeps whole sequences).
        synthetic: synthetic only: what to draw (default :class:`SyntheticOptions`).
        synthetic_footage: synthetic only: draw camera footage instead (:class:`FootageOptions`); the manifest
            lists its ground-truth tracklets.
        strict: an unusable file is an error instead of being reported and skipped.
    Raises:
        UserError: an unknown kind, or an option the kind does not take.
        DataError: a missing file or wrong layout (naming the path), no tracklets, or (strict) an unusable file.
    """
    spec = _kind(kind)
    options = {"split_id": split_id, "train_chunk": train_chunk, "window": window, "window_stride": window_stride,
               "synthetic": synthetic, "synthetic_footage": synthetic_footage}
    given = {name: value for name, value in options.items() if value is not None}
    _check_options(spec, given)
    root = Path(root).expanduser().resolve()
    problems = Problems(strict=strict)
    parsed = spec.parse(root, problems=problems, **given)
    tracklets = [tracklet for tracklet in parsed.tracklets if _is_storable(tracklet, problems)]
    problems.log()
    if not tracklets:
        raise DataError(f"{root}: no usable tracklets found for layout {kind}")
    extra = {**parsed.extra, "strict": strict, "skipped_files": len(problems)}
    rule = parsed.gallery_rule or spec.gallery_rule
    info = ManifestInfo(dataset=spec.name, gallery_rule=rule, root=str(root), extra=extra)
    return manifest_from_tracklets(tracklets, info)


def _is_storable(tracklet: Tracklet, problems: Problems) -> bool:
    """Whether a manifest can store the tracklet's names; a non-UTF-8 one is reported (or, strict, an error)."""
    name = non_utf8_name(tracklet)
    if name is not None:
        problems.add(name, NON_UTF8_REASON)
    return name is None


@dataclass(frozen=True)
class SplitSummary:
    """Counts of one split of a manifest (or of all rows, for ``split="total"``)."""

    split: str
    ids: int
    tracklets: int
    frames: int
    cameras: int


def summarize(manifest: Manifest) -> tuple[SplitSummary, ...]:
    """Per-split counts of identities (pid -1, unknown, not counted), tracklets, frames and cameras, then the total."""
    table = manifest.table
    parts = [(split, table[table["split"] == split]) for split in SPLITS] + [("total", table)]
    return tuple(
        SplitSummary(
            split=split,
            ids=int(rows.loc[rows["pid"] != UNKNOWN_PID, "pid"].nunique()),  # footage's unknown pid is no identity
            tracklets=len(rows),
            frames=int(rows["num_frames"].sum()),
            cameras=int(rows["camid"].nunique()),
        )
        for split, rows in parts
    )
