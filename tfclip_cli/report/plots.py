"""Every figure tfclip draws: matplotlib on the Agg backend (no display), one function per figure, each taking plain
values (arrays, numbers) and returning the Figure, which :func:`svg` turns into inline SVG for a report.

Colours come from the Okabe-Ito palette (``display.OKABE_ITO``), told apart by people with any common
colour-vision deficiency; series also differ in line style or marker. Figures are 8 inches wide at
100 dpi, so an 800 px wide report shows them at their natural size with 10-11 pt text.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, no GUI toolkit

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.offsetbox import AnnotationBbox, OffsetImage  # noqa: E402

from tfclip_cli.display import OKABE_ITO  # noqa: E402

SERIES_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
"""Line and bar colours in order of use (Okabe-Ito, yellow left out: too pale on white)."""
LINE_STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 1)))
MATCH_COLOUR = OKABE_ITO["bluish green"]
MISMATCH_COLOUR = OKABE_ITO["vermillion"]
WIDTH_IN = 8.0
DPI = 100
HEATMAP = LinearSegmentedColormap.from_list("tfclip-heat", ["#FFFFFF", "#56B4E9", "#0072B2", "#00304F"])

plt.rcParams.update({
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "axes.grid": True, "grid.alpha": 0.3,
    "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False, "svg.fonttype": "none",
    "svg.hashsalt": "tfclip",  # the same figure gives the same SVG, run after run
})

LOSS_LABELS = {"total": "total", "id": "identity (ID)", "frame_id": "frame ID", "triplet": "triplet",
               "v2m": "video-to-memory"}


def _figure(rows: int = 1, columns: int = 1, *, height: float = 3.6) -> tuple[Figure, np.ndarray]:
    figure, axes = plt.subplots(rows, columns, figsize=(WIDTH_IN, height * rows), dpi=DPI, squeeze=False,
                                layout="constrained")
    return figure, axes.ravel()


def svg(figure: Figure) -> str:
    """The figure as an SVG document (text kept as text, so it stays sharp and searchable), then closed."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG goes inline into HTML


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes (for files beside a report or the README), then closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def training_curves(
    loss_epochs: Sequence[int],
    losses: Mapping[str, Sequence[float]],
    learning_rates: Sequence[float],
    *,
    eval_epochs: Sequence[int],
    mean_ap: Sequence[float],
    rank1: Sequence[float],
) -> Figure:
    """Three panels against the epoch: the mean loss parts, the learning rate (log scale), and mAP / rank-1 (%) at
    each evaluation.

    Args:
        loss_epochs: the epochs that have a loss row; ``losses`` maps a part (``total``, ``id``, ``triplet``,
            ``v2m``, ...) to one mean per epoch, ``learning_rates`` one value per epoch.
        eval_epochs, mean_ap, rank1: the evaluated epochs and their scores as fractions in 0..1.
    """
    figure, (loss_axes, lr_axes, score_axes) = _figure(3, 1, height=2.6)
    for number, (name, values) in enumerate(losses.items()):
        loss_axes.plot(loss_epochs, values, color=SERIES_COLOURS[number % 7], linestyle=LINE_STYLES[number % 7],
                       linewidth=2.2 if name == "total" else 1.5, label=LOSS_LABELS.get(name, name))
    loss_axes.set(title="Training loss per epoch (mean over its iterations)", ylabel="loss")
    loss_axes.legend(loc="upper right", ncols=min(3, max(1, len(losses))))
    lr_axes.plot(loss_epochs, learning_rates, color=SERIES_COLOURS[0], marker="." if len(loss_epochs) < 40 else None)
    lr_axes.set(title="Learning rate (weights; biases follow the same schedule)", ylabel="learning rate",
                yscale="log" if min(learning_rates, default=0) > 0 else "linear")
    score_axes.plot(eval_epochs, 100 * np.asarray(mean_ap, dtype=float), color=SERIES_COLOURS[0], marker="o",
                    label="mAP")
    score_axes.plot(eval_epochs, 100 * np.asarray(rank1, dtype=float), color=SERIES_COLOURS[1], marker="s",
                    linestyle="--", label="rank-1")
    score_axes.set(title="Held-out retrieval at each evaluation", ylabel="score (%)", ylim=(0, 100))
    if len(eval_epochs):
        score_axes.legend(loc="lower right")
        for values, name, offset in ((mean_ap, "mAP", 8), (rank1, "rank-1", -14)):
            score_axes.annotate(f"{name} {100 * values[-1]:.1f}%", (eval_epochs[-1], 100 * values[-1]),
                                xytext=(-8, offset), textcoords="offset points", ha="right", fontsize=9)
    else:
        score_axes.text(0.5, 0.5, "no evaluation yet", transform=score_axes.transAxes, ha="center", color="#666")
    last = max([*loss_epochs, *eval_epochs, 1])
    for axes in (loss_axes, lr_axes, score_axes):
        axes.set_xlim(0.5, last + 0.5)
        axes.set_xlabel("epoch")
    return figure


def cmc_curve(cmc: Sequence[float], *, title: str = "Cumulative matching characteristic (CMC)") -> Figure:
    """CMC: the share of queries (%) whose first true match is within the top k, for k = 1 .. len(cmc)."""
    values = 100 * np.asarray(cmc, dtype=float)
    ranks = np.arange(1, len(values) + 1)
    figure, (axes,) = _figure(height=3.6)
    axes.plot(ranks, values, color=SERIES_COLOURS[0], marker="o" if len(values) <= 20 else None, markersize=3,
              linewidth=2)
    marked = [k for k in (1, 5, 10, 20) if k <= len(values)]
    axes.plot(marked, values[np.array(marked, dtype=int) - 1], linestyle="none", marker="o", markersize=6,
              color=MISMATCH_COLOUR, clip_on=False, label="rank-1, 5, 10, 20")
    summary = "\n".join(f"rank-{k}: {values[k - 1]:.1f}%" for k in marked)
    axes.text(0.98, 0.05, summary, transform=axes.transAxes, ha="right", va="bottom", fontsize=9,
              bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "#CCCCCC"})
    axes.set(title=title, xlabel="rank k (gallery tracklets looked at)", ylabel="queries matched within k (%)",
             xlim=(1, max(2, len(values))), ylim=(0, 101))
    axes.set_xticks(sorted({1, *range(10, len(values) + 1, 10)}) if len(values) >= 10 else ranks)
    return figure


def score_distributions(same: Sequence[float], different: Sequence[float], *, threshold: float | None = None,
                        title: str = "Scores of same-person and different-person pairs",
                        labels: tuple[str, str] = ("same person", "different people")) -> Figure:
    """Two histograms of cosine scores on shared bins, each normalised to its own total (densities), so a few
    thousand same-person pairs stay visible beside millions of different-person ones; a vertical line at
    ``threshold`` when given."""
    same, different = np.asarray(same, dtype=float), np.asarray(different, dtype=float)
    both = np.concatenate([same, different])
    low, high = (float(both.min()), float(both.max())) if len(both) else (-1.0, 1.0)
    edges = np.linspace(low, high if high > low else low + 1e-3, 51)
    figure, (axes,) = _figure(height=3.4)
    for values, colour, hatch, label in ((different, MISMATCH_COLOUR, "//", labels[1]),
                                         (same, MATCH_COLOUR, None, labels[0])):
        axes.hist(values, bins=edges, density=len(values) > 0, color=colour, alpha=0.55, hatch=hatch,
                  edgecolor=colour, linewidth=0.8, label=f"{label} ({len(values):,} pairs)")
    if threshold is not None:
        axes.axvline(threshold, color=OKABE_ITO["black"], linestyle="--", linewidth=1.5,
                     label=f"threshold {threshold:.3f}")
    axes.set(title=title, xlabel="cosine score", ylabel="density (share per unit score)")
    axes.legend(loc="upper left")
    return figure


def camera_pair_map(mean_ap: np.ndarray, camids: Sequence[int]) -> Figure:
    """A heat map of mAP (%) for queries of camera row against gallery tracklets of camera column; blank (n/a)
    where no query of that camera has a true match in that camera."""
    values = 100 * np.asarray(mean_ap, dtype=float)
    size = len(camids)
    figure, (axes,) = _figure(height=min(6.5, 1.2 + 0.55 * size))
    image = axes.imshow(np.ma.masked_invalid(values), cmap=HEATMAP.with_extremes(bad="#EEEEEE"), vmin=0, vmax=100,
                        aspect="auto")
    axes.grid(False)
    axes.set_xticks(range(size), [str(c) for c in camids])
    axes.set_yticks(range(size), [str(c) for c in camids])
    if size <= 12:
        for row in range(size):
            for column in range(size):
                value = values[row, column]
                text = "n/a" if not np.isfinite(value) else f"{value:.0f}"
                colour = "white" if np.isfinite(value) and value > 60 else "black"
                axes.text(column, row, text, ha="center", va="center", fontsize=9, color=colour)
    axes.set(title="mAP (%) by query camera and gallery camera", xlabel="gallery camera", ylabel="query camera")
    figure.colorbar(image, ax=axes, label="mAP (%)", shrink=0.9)
    return figure


RATE_NAMES = {"FPIR": "false-positive identification rate", "FNIR": "false-negative identification rate",
              "FMR": "false-match rate of impostor pairs", "FNMR": "false-non-match rate of genuine pairs"}


def det_curve(fpir: Sequence[float], fnir: Sequence[float], thresholds: Sequence[float], *,
              chosen_threshold: float, names: tuple[str, str] = ("FPIR", "FNIR"),
              title: str = "Detection error trade-off (DET)") -> Figure:
    """FNIR (%) against FPIR on a log x axis, one point per entry of ``thresholds``, the operating point of
    ``chosen_threshold`` marked: the point of the lowest listed threshold at or above it, whose rates are the
    chosen threshold's when every score reached is listed (a score just below it is not: it counts one more false
    positive). Points with FPIR 0 cannot sit on a log axis and are left out of the curve. ``names`` relabels the
    two rates (e.g. per-pair FMR and FNMR)."""
    fpir, fnir = np.asarray(fpir, dtype=float), np.asarray(fnir, dtype=float)
    listed = np.asarray(thresholds, dtype=float)
    chosen = int(np.argmin(np.where(listed >= chosen_threshold, listed, np.inf))) if (
        listed >= chosen_threshold).any() else int(np.argmax(listed))
    shown = fpir > 0
    figure, (axes,) = _figure(height=3.8)
    axes.plot(fpir[shown], 100 * fnir[shown], color=SERIES_COLOURS[0], linewidth=2, label="one point per threshold")
    point = (max(fpir[chosen], 1e-12), 100 * fnir[chosen])
    axes.plot(*point, linestyle="none", marker="D", markersize=9, color=MISMATCH_COLOUR,
              label=f"chosen threshold {chosen_threshold:.3f}")
    axes.annotate(f"{names[0]} {fpir[chosen]:.2g}, {names[1]} {100 * fnir[chosen]:.1f}%", point, xytext=(8, 8),
                  textcoords="offset points", fontsize=9)
    low = min(fpir[shown].min(), point[0]) if shown.any() else point[0]
    axes.set_xscale("log")
    axes.set(title=title, xlabel=f"{RATE_NAMES.get(names[0], names[0])} ({names[0]}, log scale)",
             ylabel=f"{RATE_NAMES.get(names[1], names[1])} ({names[1]}, %)", xlim=(low / 1.5, 1.5), ylim=(0, 101))
    axes.legend(loc="upper right")
    return figure


def genuine_impostor_histograms(genuine: Sequence[float], impostor: Sequence[float], threshold: float) -> Figure:
    """The calibration's genuine and impostor score histograms with its threshold."""
    return score_distributions(genuine, impostor, threshold=threshold, labels=("genuine", "impostor"),
                               title="Genuine and impostor scores with the chosen threshold")


def person_timeline(camids: Sequence[int], starts: Sequence[float], ends: Sequence[float], *,
                    key_frames: Sequence[np.ndarray | None], queried: int | None = None,
                    title: str = "One person across cameras", time_label: str = "seconds") -> Figure:
    """A person's visits to cameras: a row per camera (in order of first visit, top down), time across, each
    visit a bar from its start to its end with its key frame (``[H, W, 3]`` uint8, or None) above the bar's
    middle; the visit ``queried`` (an index) is drawn in the match colour and named "query".

    Args:
        camids, starts, ends: one entry per visit; times in seconds from any origin ``time_label`` names.
    """
    rows = list(dict.fromkeys(int(c) for c in camids))
    starts, ends = np.asarray(starts, dtype=float), np.asarray(ends, dtype=float)
    figure, (axes,) = _figure(height=0.8 + 1.6 * max(1, len(rows)))
    span = float(ends.max() - starts.min()) if len(starts) else 1.0
    for number, (camid, start, end) in enumerate(zip(camids, starts, ends)):
        row = rows.index(int(camid))
        colour = MATCH_COLOUR if number == queried else SERIES_COLOURS[0]
        axes.broken_barh([(start, max(end - start, span / 200))], (row - 0.12, 0.24), facecolors=colour)
        axes.annotate("query" if number == queried else f"{end - start:.1f} s", (end, row), xytext=(4, 0),
                      textcoords="offset points", va="center", fontsize=8, color=colour)
        frame = key_frames[number] if number < len(key_frames) else None
        if frame is not None and frame.size:
            zoom = 0.8 * DPI / max(1, frame.shape[0])  # 0.8 inch tall, whatever the crop's size
            picture = AnnotationBbox(OffsetImage(frame, zoom=zoom), ((start + end) / 2, row - 0.14),
                                     box_alignment=(0.5, 0.0), frameon=True, pad=0.1,
                                     bboxprops={"edgecolor": colour, "linewidth": 1.5})
            axes.add_artist(picture)
    axes.set_yticks(range(len(rows)), [f"camera {c}" for c in rows])
    axes.set_ylim(len(rows) - 0.5, -1.0)  # first camera on top, room above it for its key frames
    margin = 0.04 * max(span, 1.0)
    if len(starts):
        axes.set_xlim(starts.min() - margin, ends.max() + 3 * margin)
    axes.grid(axis="y", visible=False)
    axes.set(title=title, xlabel=f"time ({time_label})")
    return figure
