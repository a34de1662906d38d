"""A training run's report: ``RUN/report.html`` with its loss parts, learning rate and evaluations against the
epoch, drawn from ``RUN/metrics.csv`` (which a resumed run continues, so the curves are one continuous line)."""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from tfclip_cli import display
from tfclip_cli.errors import DataError
from tfclip_cli.report import plots
from tfclip_cli.report.render import inline_svg, render, write_page

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"
REPORT_FILE = "report.html"


@dataclass(frozen=True)
class TrainingHistory:
    """The epoch and evaluation rows of a run's metrics.csv, as curves."""

    epochs: tuple[int, ...]  # epochs with a finished-epoch row, increasing
    losses: dict[str, tuple[float, ...]]  # loss part -> its mean per epoch (parts never logged are left out)
    learning_rates: tuple[float, ...]
    eval_epochs: tuple[int, ...]
    mean_ap: tuple[float, ...]  # fractions in 0..1
    rank1: tuple[float, ...]


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_history(path: Path) -> TrainingHistory:
    """The curves in a metrics.csv written by ``tfclip train`` (iteration rows are left out: epochs are enough).

    Raises:
        DataError: the file is missing or is not a tfclip metrics table.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: expected the metrics.csv of a tfclip train run",
                        hint="point at the run folder (the recipe's run.output_dir)")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"kind", "epoch"} <= set(reader.fieldnames):
            raise DataError(f"{path}: expected tfclip's metrics columns (kind, epoch, lr, losses, mAP...); "
                            f"found {', '.join(reader.fieldnames or []) or 'none'}")
        rows = [row for row in reader if row.get("kind") in ("epoch", "eval") and row.get("epoch")]
    epochs = [row for row in rows if row["kind"] == "epoch"]
    evals = [row for row in rows if row["kind"] == "eval"]
    losses = {name: tuple(_number(row.get(name)) for row in epochs) for name in plots.LOSS_LABELS}
    return TrainingHistory(
        epochs=tuple(int(row["epoch"]) for row in epochs),
        losses={name: values for name, values in losses.items() if any(math.isfinite(v) for v in values)},
        learning_rates=tuple(_number(row.get("lr")) for row in epochs),
        eval_epochs=tuple(int(row["epoch"]) for row in evals),
        mean_ap=tuple(_number(row.get("mAP")) for row in evals),
        rank1=tuple(_number(row.get("rank1")) for row in evals),
    )


def curves_svg(history: TrainingHistory) -> str:
    """The run's three panels (losses, learning rate, mAP / rank-1) as inline SVG."""
    return plots.svg(plots.training_curves(
        history.epochs, history.losses, history.learning_rates, eval_epochs=history.eval_epochs,
        mean_ap=history.mean_ap, rank1=history.rank1,
    ))


def curves_caption(history: TrainingHistory) -> str:
    """What the curves cover, in words."""
    evaluations = len(history.eval_epochs)
    return (f"{len(history.epochs)} epochs trained, {evaluations} evaluation{'s' * (evaluations != 1)}; "
            "losses are each epoch's mean over its iterations, mAP and rank-1 on the held-out query and gallery.")


def _best(history: TrainingHistory) -> dict | None:
    """The evaluation with the highest mAP + rank-1, as ``tfclip train`` picks best.ckpt."""
    scored = [(m + r, e, m, r) for e, m, r in zip(history.eval_epochs, history.mean_ap, history.rank1)]
    if not scored:
        return None
    _, epoch, mean_ap, rank1 = max(scored, key=lambda item: (item[0], -item[1]))
    return {"epoch": epoch, "mAP": mean_ap, "rank1": rank1}


def write_run_report(run_dir: Path, out: Path | None = None) -> Path:
    """Draw ``run_dir``'s metrics.csv into ``out`` (default ``run_dir/report.html``), replacing an older report.

    Raises:
        DataError: ``run_dir`` holds no readable metrics.csv.
    """
    run_dir = Path(run_dir)
    history = read_history(run_dir / METRICS_FILE)
    page = render("training.html.j2", title="tfclip training run", subtitle=display.plain(run_dir.resolve()),
                  curves=inline_svg(curves_svg(history)), caption=curves_caption(history), best=_best(history))
    out = write_page(page, out or run_dir / REPORT_FILE)
    log.debug("wrote %s", out)
    return out
