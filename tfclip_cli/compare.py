"""``tfclip compare``: a set of training runs side by side, runs that differ only in their seed grouped.

Each run folder is read as training leaves it (``recipe.yaml``, ``metrics.csv``, ``last.ckpt``): the recipe keys in
which the runs differ, best and last mAP / rank-1 / mINP per test set, epochs, training time and parameter count.
Runs whose recipes are equal except ``run.seed`` (and ``run.output_dir``) form a group, reported as mean ± std
(sample standard deviation) over its runs. A run that has not reached its last epoch (still training, or stopped)
shows its latest evaluation and is marked unfinished.
"""

from __future__ import annotations

import csv
import math
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from tfclip_cli.checkpoint import CheckpointError, load_checkpoint
from tfclip_cli.errors import UserError
from tfclip_cli.model import ModelConfig, build_model

IGNORED_KEYS = ("run.output_dir", "run.seed")  # what runs of one group may differ in
LEGACY_TEST_SET = "test"  # eval rows written before metrics.csv named their test set
SCORES = ("mAP", "rank1", "mINP")


@dataclass(frozen=True)
class Stat:
    """A value over the runs of a row: the mean, the sample std (0 for one run) and how many runs had it."""

    mean: float
    std: float
    count: int


@dataclass(frozen=True)
class RunRecord:
    """One run folder as compare reads it."""

    path: Path
    recipe: dict[str, Any]  # flattened dotted keys of recipe.yaml
    epochs_done: int
    epochs: int
    elapsed_s: float | None  # wall-clock time of the run so far (None: metrics.csv predates elapsed_s)
    num_parameters: int | None  # None before the first checkpoint
    scores: dict[str, float]  # "TEST_SET best mAP" / "TEST_SET last rank1" ... -> value

    @property
    def is_finished(self) -> bool:
        return self.epochs_done >= self.epochs


@dataclass(frozen=True)
class ComparisonRow:
    """A run, or a group of runs that differ only in their seed."""

    label: str
    runs: tuple[Path, ...]
    seeds: tuple[int, ...]
    settings: dict[str, str]  # the differing recipe keys -> this row's value
    scores: dict[str, Stat]  # "TEST_SET best mAP" ... -> over the runs
    epochs_done: int  # the fewest among the runs
    epochs: int
    is_finished: bool  # every run reached its last epoch
    elapsed_s: Stat | None
    num_parameters: int | None


@dataclass(frozen=True)
class Comparison:
    """The rows of ``tfclip compare`` and what their columns are."""

    rows: tuple[ComparisonRow, ...]
    differing_keys: tuple[str, ...]
    score_names: tuple[str, ...]  # "TEST_SET best mAP", ... in column order

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return {
            "differing_keys": list(self.differing_keys),
            "score_names": list(self.score_names),
            "rows": [
                {"label": row.label, "runs": [str(p) for p in row.runs], "seeds": list(row.seeds),
                 "settings": row.settings, "epochs_done": row.epochs_done, "epochs": row.epochs,
                 "is_finished": row.is_finished, "num_parameters": row.num_parameters,
                 "elapsed_s": None if row.elapsed_s is None else vars(row.elapsed_s),
                 "scores": {name: vars(stat) for name, stat in row.scores.items()}}
                for row in self.rows
            ],
        }


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _scores(eval_rows: list[dict[str, str]]) -> dict[str, float]:
    """Best (highest mAP + rank-1, the rule of best.ckpt) and last evaluation of each test set."""
    by_test_set: dict[str, list[dict[str, str]]] = {}
    for row in eval_rows:
        by_test_set.setdefault(row.get("test_set") or LEGACY_TEST_SET, []).append(row)
    scores = {}
    for test_set, rows in by_test_set.items():
        best = max(rows, key=lambda row: float(row["mAP"]) + float(row["rank1"]))
        for which, row in (("best", best), ("last", rows[-1])):
            for name in SCORES:
                scores[f"{test_set} {which} {name}"] = float(row[name])
    return scores


def count_parameters(checkpoint: Path) -> int | None:
    """Parameters of the model a checkpoint describes (built on the meta device: no memory, no weights read)."""
    try:
        config = ModelConfig.from_dict(load_checkpoint(checkpoint).model_config)
    except (CheckpointError, TypeError, UserError):
        return None
    with torch.device("meta"):
        model = build_model(config)
    return sum(parameter.numel() for parameter in model.parameters())


def read_run(path: Path) -> RunRecord:
    """One run folder.

    Raises:
        UserError: the folder has no recipe.yaml or metrics.csv (not a run of ``tfclip train``).
    """
    path = Path(path)
    recipe_path, metrics_path = path / "recipe.yaml", path / "metrics.csv"
    for required in (recipe_path, metrics_path):
        if not required.is_file():
            raise UserError(f"{path} is not a training run: {required.name} not found",
                            hint="pass folders written by `tfclip train` (run.output_dir)")
    recipe = flatten(yaml.safe_load(recipe_path.read_text()) or {})
    rows = _rows(metrics_path)
    epoch_rows = [row for row in rows if row["kind"] == "epoch"]
    elapsed = epoch_rows[-1].get("elapsed_s") if epoch_rows else None
    last = path / "last.ckpt"
    return RunRecord(
        path=path, recipe=recipe, epochs_done=int(epoch_rows[-1]["epoch"]) if epoch_rows else 0,
        epochs=int(recipe.get("solver.epochs", 0)), elapsed_s=float(elapsed) if elapsed else None,
        num_parameters=count_parameters(last) if last.exists() else None,
        scores=_scores([row for row in rows if row["kind"] == "eval"]),
    )


def _stat(values: Sequence[float]) -> Stat:
    return Stat(mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0,
                count=len(values))


def _group_key(record: RunRecord) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in record.recipe.items() if k not in IGNORED_KEYS))


def _label(paths: Sequence[Path]) -> str:
    """A run's folder name; for a group, the common start of its folder names without a trailing ``seed``."""
    names = [p.name for p in paths]
    if len(names) == 1:
        return names[0]
    common = re.sub(r"[-_. ]*(seed)?[-_. ]*$", "", os.path.commonprefix(names))
    return common or f"{names[0]} (+{len(names) - 1})"


def _setting(key: str, value: Any) -> str:
    if isinstance(value, str) and key.endswith(("manifest", "output_dir", "pretrained")) or "manifests." in key:
        return Path(str(value)).name
    return str(value)


def _row(records: Sequence[RunRecord], differing: Sequence[str], score_names: Sequence[str]) -> ComparisonRow:
    elapsed = [r.elapsed_s for r in records if r.elapsed_s is not None]
    return ComparisonRow(
        label=_label([r.path for r in records]),
        runs=tuple(r.path for r in records),
        seeds=tuple(int(r.recipe.get("run.seed", 0)) for r in records),
        settings={key: _setting(key, records[0].recipe.get(key, "-")) for key in differing},
        scores={name: _stat(values) for name in score_names
                if (values := [r.scores[name] for r in records if name in r.scores])},
        epochs_done=min(r.epochs_done for r in records),
        epochs=max(r.epochs for r in records),
        is_finished=all(r.is_finished for r in records),
        elapsed_s=_stat(elapsed) if elapsed else None,
        num_parameters=records[0].num_parameters,
    )


def compare_runs(paths: Sequence[Path]) -> Comparison:
    """Read the run folders and group runs that differ only in their seed.

    Raises:
        UserError: no folders, a folder given twice, or a folder that is not a training run.
    """
    if not paths:
        raise UserError("no run folders given", hint="tfclip compare runs/a runs/b ...")
    resolved = [Path(p).resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        raise UserError("a run folder is given twice")
    records = [read_run(path) for path in paths]
    groups: dict[tuple, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(_group_key(record), []).append(record)
    keys = sorted({key for r in records for key in r.recipe} - set(IGNORED_KEYS))
    differing = [k for k in keys if len({repr(r.recipe.get(k)) for r in records}) > 1]
    test_sets = list(dict.fromkeys(name.rsplit(" ", 2)[0] for r in records for name in r.scores))
    score_names = [f"{t} {which} {s}" for t in test_sets for which in ("best", "last") for s in SCORES]
    rows = tuple(_row(group, differing, score_names) for group in groups.values())
    return Comparison(rows=rows, differing_keys=tuple(differing), score_names=tuple(score_names))


def format_stat(stat: Stat | None, *, percent: bool = True) -> str:
    """``48.3`` for one run, ``48.3 ± 2.1`` for a group (percent of a 0-1 score); ``-`` when missing."""
    if stat is None or math.isnan(stat.mean):
        return "-"
    scale = 100 if percent else 1
    text = f"{scale * stat.mean:.1f}"
    return f"{text} ± {scale * stat.std:.1f}" if stat.count > 1 else text


def cells(comparison: Comparison, row: ComparisonRow) -> list[str]:
    """A row's cells in :func:`headers` order."""
    epochs = f"{row.epochs_done}/{row.epochs}" + ("" if row.is_finished else " (unfinished)")
    values = [row.label + ("" if row.is_finished else " *"), ", ".join(map(str, row.seeds)),
              *(row.settings[key] for key in comparison.differing_keys),
              *(format_stat(row.scores.get(name)) for name in comparison.score_names), epochs,
              format_stat(row.elapsed_s, percent=False),
              f"{row.num_parameters:,}" if row.num_parameters is not None else "-"]
    return values


def headers(comparison: Comparison) -> list[str]:
    """Column titles: run, seeds, the differing recipe keys, the scores in %, epochs, time, parameters."""
    return ["run", "seeds", *comparison.differing_keys, *(f"{name} %" for name in comparison.score_names),
            "epochs", "time s", "parameters"]


def markdown_table(comparison: Comparison) -> str:
    """The comparison as a Markdown table (``*``: a run that has not reached its last epoch)."""
    lines = ["| " + " | ".join(headers(comparison)) + " |", "|" + "---|" * len(headers(comparison))]
    lines += ["| " + " | ".join(cells(comparison, row)) + " |" for row in comparison.rows]
    return "\n".join(lines)
