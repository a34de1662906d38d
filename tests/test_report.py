"""Figures and reports: each figure from a small hand-made input shows the right points, series, axes and marks;
each report is valid HTML that references only what exists."""

import csv
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from html_check import check_page

from tfclip_cli.cli import app
from tfclip_cli.errors import DataError
from tfclip_cli.evaluate import evaluate
from tfclip_cli.report import plots
from tfclip_cli.index import build_index, load_index
from tfclip_cli.report.calibration import error_rates, pair_scores
from tfclip_cli.report.evaluation import break_down
from tfclip_cli.report.training import read_history, write_run_report
from tfclip_cli.tables import Embeddings, read_embeddings, write_embeddings


def _is_drawn(figure) -> bool:
    """Not blank: the PNG has many non-white pixels and more than two colours."""
    pixels = np.asarray(Image.open(io.BytesIO(plots.png(figure))).convert("RGB")).astype(int)
    ink = (pixels < 200).any(axis=2).mean()
    return ink > 0.01 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2


def test_training_curves_draw_each_loss_part_the_lr_and_both_scores_per_epoch():
    losses = {"total": [3.0, 2.0, 1.5, 1.2], "id": [1.0, 0.8, 0.6, 0.5], "triplet": [0.5, 0.4, 0.3, 0.2],
              "v2m": [1.5, 0.8, 0.6, 0.5]}
    figure = plots.training_curves([1, 2, 3, 4], losses, [1e-4, 1e-3, 1e-3, 1e-4], eval_epochs=[2, 4],
                                   mean_ap=[0.25, 0.5], rank1=[0.4, 0.75])
    loss_axes, lr_axes, score_axes = figure.axes
    assert [line.get_label() for line in loss_axes.lines] == ["total", "identity (ID)", "triplet", "video-to-memory"]
    assert all(list(line.get_xdata()) == [1, 2, 3, 4] for line in loss_axes.lines)
    assert list(loss_axes.lines[3].get_ydata()) == [1.5, 0.8, 0.6, 0.5]
    assert lr_axes.get_yscale() == "log" and list(lr_axes.lines[0].get_ydata()) == [1e-4, 1e-3, 1e-3, 1e-4]
    assert [list(line.get_ydata()) for line in score_axes.lines] == [[25, 50], [40, 75]]
    assert score_axes.get_ylim() == (0, 100) and loss_axes.get_xlim() == (0.5, 4.5)
    assert all(axes.get_xlabel() == "epoch" and axes.get_ylabel() and axes.get_title() for axes in figure.axes)
    assert _is_drawn(figure)


def test_person_timeline_has_a_row_per_camera_a_bar_per_visit_and_the_key_frames_above_them():
    from matplotlib.offsetbox import AnnotationBbox

    frame = np.zeros((40, 20, 3), np.uint8)
    frame[5:35, 5:15] = (200, 40, 40)
    # camera 3 first, then 1, then 3 again (the walker came back); the second visit has no key frame
    figure = plots.person_timeline([3, 1, 3], [0.0, 6.0, 14.0], [4.0, 9.5, 16.0],
                                   key_frames=[frame, None, frame], queried=0, time_label="seconds after 12:00:01")
    (axes,) = figure.axes
    assert [label.get_text() for label in axes.get_yticklabels()] == ["camera 3", "camera 1"]
    assert len(axes.collections) == 3  # one bar per visit
    extents = [collection.get_paths()[0].get_extents() for collection in axes.collections]
    spans = sorted((extent.x0, extent.x1, extent.y0) for extent in extents)
    assert [(round(a, 3), round(b, 3)) for a, b, _ in spans] == [(0.0, 4.0), (6.0, 9.5), (14.0, 16.0)]
    assert [round(y + 0.12, 3) for _, _, y in spans] == [0.0, 1.0, 0.0]  # rows: camera 3, camera 1, camera 3
    queried_colour = tuple(axes.collections[0].get_facecolor()[0])
    assert queried_colour != tuple(axes.collections[1].get_facecolor()[0])  # the query's visit stands out
    assert len([a for a in axes.artists if isinstance(a, AnnotationBbox)]) == 2
    left, right = axes.get_xlim()
    assert left < 0.0 and right > 16.0 and axes.get_ylim()[0] > axes.get_ylim()[1]  # first camera on top
    assert axes.get_xlabel() == "time (seconds after 12:00:01)" and axes.get_title()
    assert _is_drawn(figure)


def test_cmc_curve_has_a_point_per_rank_from_one_and_percent_axes():
    figure = plots.cmc_curve([0.5, 0.7, 0.8, 0.9, 1.0])
    (axes,) = figure.axes
    line, marks = axes.lines
    assert list(line.get_xdata()) == [1, 2, 3, 4, 5] and list(line.get_ydata()) == [50, 70, 80, 90, 100]
    assert list(marks.get_xdata()) == [1, 5] and list(marks.get_ydata()) == [50, 100]  # rank-1 and rank-5
    assert axes.get_xlim() == (1, 5) and axes.get_ylim() == (0, 101)
    assert [text.get_text() for text in axes.texts] == ["rank-1: 50.0%\nrank-5: 100.0%"]
    svg = plots.svg(plots.cmc_curve([0.5, 0.7, 0.8, 0.9, 1.0]))
    assert svg.startswith("<svg") and "Cumulative matching characteristic" in svg


def test_score_distributions_share_bins_and_mark_the_threshold():
    figure = plots.score_distributions([0.8, 0.9, 0.85], [0.1, 0.2, 0.3, 0.9], threshold=0.7)
    (axes,) = figure.axes
    assert len(axes.patches) == 2 * 50  # 50 bars per series on the same 50 bins
    xs = sorted({round(patch.get_x(), 6) for patch in axes.patches})
    assert len(xs) == 50 and xs[0] == pytest.approx(0.1)
    (threshold,) = axes.lines
    assert list(threshold.get_xdata()) == [0.7, 0.7]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [
        "different people (4 pairs)", "same person (3 pairs)", "threshold 0.700"]
    assert _is_drawn(figure)


def test_camera_pair_map_shows_each_cell_and_leaves_pairs_without_matches_blank():
    values = np.array([[np.nan, 0.5], [0.25, np.nan]])
    figure = plots.camera_pair_map(values, [1, 2])
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.texts] == ["n/a", "50", "25", "n/a"]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["1", "2"]
    assert axes.images[0].get_array().mask.tolist() == [[True, False], [False, True]]
    assert _is_drawn(figure)


def test_det_curve_is_log_fpir_against_fnir_with_the_chosen_point_marked():
    thresholds = np.array([0.9, 0.7, 0.5, 0.3, 0.1])
    fpir = np.array([0.0, 0.001, 0.01, 0.1, 1.0])
    fnir = np.array([0.9, 0.5, 0.2, 0.05, 0.0])
    figure = plots.det_curve(fpir, fnir, thresholds, chosen_threshold=0.5)
    (axes,) = figure.axes
    curve, point = axes.lines
    assert list(curve.get_xdata()) == [0.001, 0.01, 0.1, 1.0]  # FPIR 0 cannot sit on a log axis
    assert list(curve.get_ydata()) == [50, 20, 5, 0]
    assert list(point.get_xdata()) == [0.01] and list(point.get_ydata()) == [20]
    assert axes.get_xscale() == "log" and axes.get_xlim()[0] < 0.001 and axes.get_ylim() == (0, 101)
    assert "FNIR" in axes.get_ylabel() and "FPIR" in axes.get_xlabel()
    assert _is_drawn(figure)


def test_genuine_impostor_histograms_put_the_threshold_where_it_is():
    figure = plots.genuine_impostor_histograms(np.linspace(0.5, 1, 30), np.linspace(-0.2, 0.6, 90), 0.55)
    (axes,) = figure.axes
    assert list(axes.lines[0].get_xdata()) == [0.55, 0.55]
    assert axes.get_xlim()[0] <= -0.2 and axes.get_xlim()[1] >= 1.0
    labels = [t.get_text() for t in axes.get_legend().get_texts()]
    assert labels == ["impostor (90 pairs)", "genuine (30 pairs)", "threshold 0.550"]


def _write_metrics(path: Path, epochs: int, evals: list[int]) -> None:
    fields = ["kind", "epoch", "iteration", "lr", "total", "id", "frame_id", "triplet", "v2m", "clips_per_s",
              "data_share", "mAP", "rank1", "rank5", "rank10", "rank20", "mINP"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for epoch in range(1, epochs + 1):
            writer.writerow({"kind": "iteration", "epoch": epoch, "iteration": 1, "lr": 0.1, "total": 9})
            writer.writerow({"kind": "epoch", "epoch": epoch, "lr": 1e-3 / epoch, "total": 4 - epoch, "id": 1,
                             "triplet": 0.5, "v2m": 2})
            if epoch in evals:
                writer.writerow({"kind": "eval", "epoch": epoch, "mAP": 0.1 * epoch, "rank1": 0.2 * epoch})


def test_run_report_reads_epoch_and_eval_rows_and_is_a_valid_page(tmp_path):
    _write_metrics(tmp_path / "metrics.csv", 3, evals=[2, 3])
    history = read_history(tmp_path / "metrics.csv")
    assert history.epochs == (1, 2, 3) and history.losses["total"] == (3, 2, 1)
    assert set(history.losses) == {"total", "id", "triplet", "v2m"}  # frame_id never logged: left out
    assert history.eval_epochs == (2, 3) and history.mean_ap == pytest.approx((0.2, 0.3))
    out = write_run_report(tmp_path)
    page = check_page(out)
    assert out == tmp_path / "report.html" and page.tags.count("svg") == 1
    text = out.read_text()
    assert "3 epochs trained, 2 evaluations" in text and "Best evaluation: epoch 3, mAP 30.0%" in text


def test_report_command_redraws_a_run_and_names_a_missing_metrics_file(tmp_path):
    _write_metrics(tmp_path / "metrics.csv", 2, evals=[])
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert "no evaluation yet" in (tmp_path / "r.html").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["report", str(empty)], terminal_width=300)
    assert result.exit_code == 2 and "metrics.csv not found" in result.output
    with pytest.raises(DataError, match="expected tfclip's metrics columns"):
        (empty / "metrics.csv").write_text("a,b\n1,2\n")
        read_history(empty / "metrics.csv")


# ---- evaluation report ---------------------------------------------------------------------------------------------


def _table(pids, camids, splits, vectors, *, frames=None) -> Embeddings:
    count = len(pids)
    rows = pd.DataFrame({
        "tracklet_id": [f"t{i}" for i in range(count)], "pid": pids, "camid": camids, "split": splits,
        "num_frames": [2] * count, "frames": frames or [None] * count, "video": [None] * count,
    })
    return Embeddings(rows=rows, vectors=np.asarray(vectors, dtype=np.float32), info={})


def _random_table(seed: int) -> Embeddings:
    rng = np.random.default_rng(seed)
    count = 60
    pids = rng.integers(-1, 8, count)
    splits = np.where(np.arange(count) < 15, "query", "gallery")
    pids[:15] = np.maximum(pids[:15], 0)
    vectors = rng.integers(-2, 3, (count, 4)).astype(np.float32)  # small integers: many tied scores
    vectors[vectors.sum(axis=1) == 0, 0] = 1
    return _table(pids, rng.integers(0, 3, count), splits, vectors)


@pytest.mark.parametrize("rule", ["gallery_only", "includes_query"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_break_down_agrees_with_evaluate_on_map_and_cmc(rule, seed):
    table = _random_table(seed)
    expected = evaluate(table, gallery_rule=rule)
    found = break_down(table, gallery_rule=rule)
    assert found.mean_ap == pytest.approx(expected.mAP, abs=1e-6)
    assert [found.cmc[k - 1] for k in (1, 5, 10, 20)] == pytest.approx(
        [expected.rank1, expected.rank5, expected.rank10, expected.rank20])
    assert found.num_skipped == expected.num_skipped_queries and len(found.cmc) == min(50, expected.num_gallery)


def test_break_down_of_a_hand_made_case():
    # q0 (pid 1, cam 0) ranks g3 (pid 2) above its match g2; q1 (pid 2, cam 1) finds its match g3 first.
    vectors = [[0, 1], [0.6, 0.8], [1, 1], [0.6, 0.8]]  # q0, q1, g2 (pid 1, cam 1), g3 (pid 2, cam 0)
    table = _table([1, 2, 1, 2], [0, 1, 1, 0], ["query", "query", "gallery", "gallery"], vectors)
    found = break_down(table, gallery_rule="gallery_only")
    assert found.cmc.tolist() == [0.5, 1.0]  # two ranked rows: the curve stops at rank 2
    assert sorted(found.same_scores.round(4)) == pytest.approx([0.7071, 1.0])
    assert sorted(found.different_scores.round(4)) == pytest.approx([0.8, 0.9899])
    assert found.camids == (0, 1) and found.mean_ap == pytest.approx(0.75)
    # within the other camera's rows alone each query's match comes first; same camera: excluded, so no value
    assert np.isnan(found.camera_map[0, 0]) and np.isnan(found.camera_map[1, 1])
    assert found.camera_map[0, 1] == 1.0 and found.camera_map[1, 0] == 1.0
    worst = found.worst[0]
    assert (worst.row, worst.first_match, worst.top_rows, worst.top_matches) == (0, 2, (3, 2), (False, True))
    assert worst.top_scores == pytest.approx((0.8, 0.7071), abs=1e-4) and worst.average_precision == 0.5


def _frame_folder(folder: Path, colour: tuple[int, int, int]) -> list[str]:
    folder.mkdir(parents=True)
    paths = []
    for number in range(2):
        path = folder / f"{number}.png"
        Image.fromarray(np.full((32, 16, 3), colour, np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_evaluate_report_draws_cmc_scores_cameras_and_the_worst_queries_mosaic(tmp_path):
    rng = np.random.default_rng(3)
    pids = [0, 1, 2, 3, 4] + [p for p in range(5) for _ in range(3)]
    camids = [0, 1, 2, 0, 1] + [c for _ in range(5) for c in (0, 1, 2)]
    splits = ["query"] * 5 + ["gallery"] * 15
    centres = rng.standard_normal((5, 8))
    vectors = centres[pids] + 0.9 * rng.standard_normal((20, 8))
    frames = [_frame_folder(tmp_path / f"t{i}", (10 * i, 200, 40)) for i in range(20)]
    table = _table(pids, camids, splits, vectors, frames=frames)
    table.rows["num_frames"] = 2
    write_embeddings(table, tmp_path / "emb.parquet")
    out = tmp_path / "evaluation.html"
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "emb.parquet"), "--report", str(out)],
                                terminal_width=300)
    assert result.exit_code == 0, result.output
    page = check_page(out)
    text = out.read_text()
    assert page.tags.count("svg") == 3  # CMC, score distributions, camera pairs
    assert "Cumulative matching characteristic" in text and "by query camera and gallery camera" in text
    tiles = re.findall(r'<div class="tile (query|match|mismatch)">', text)
    assert tiles.count("query") == 5 and len(tiles) == 5 * (1 + 10)  # 5 queries, each with its top 10
    breakdown = break_down(read_embeddings(tmp_path / "emb.parquet"), gallery_rule="gallery_only")
    assert tiles.count("match") == sum(sum(q.top_matches) for q in breakdown.worst)
    assert text.count("data:image/jpeg;base64,") == 55
    again = CliRunner().invoke(app, ["evaluate", str(tmp_path / "emb.parquet"), "--report", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    rerank = CliRunner().invoke(app, ["evaluate", str(tmp_path / "emb.parquet"), "--report", str(out), "--force",
                                      "--rerank"])
    assert rerank.exit_code == 2 and "drop --rerank" in rerank.output


# ---- calibration report --------------------------------------------------------------------------------------------


def test_error_rates_count_impostors_at_or_above_and_genuines_below_each_threshold():
    rates = error_rates(np.array([0.5, 0.7, 0.9]), np.array([0.1, 0.5, 0.6, 0.8]), extra=(0.65,))
    at = {round(float(t), 4): (fp, fn) for t, fp, fn in
          zip(rates.thresholds, rates.false_positive, rates.false_negative)}
    assert at[0.65] == (pytest.approx(0.25), pytest.approx(1 / 3))  # 0.8 lets through; 0.5 turned away
    assert at[0.5] == (pytest.approx(0.75), 0.0) and at[0.9] == (0.0, pytest.approx(2 / 3))
    assert list(rates.thresholds) == sorted(rates.thresholds)


def _calibration_gallery(tmp_path, seed: int) -> Embeddings:
    """12 identities seen 3 times each, written as val.parquet and indexed as g.faiss."""
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(12), 3)
    vectors = (rng.standard_normal((12, 8))[pids] + 0.8 * rng.standard_normal((36, 8))).astype(np.float32)
    info = {"checkpoint": "/runs/a.ckpt", "checkpoint_sha256": "a" * 64, "sampling": "dense"}
    table = _table(pids, pids % 3, ["gallery"] * 36, vectors)
    table = Embeddings(table.rows, table.vectors, info)
    write_embeddings(table, tmp_path / "val.parquet")
    build_index(table, tmp_path / "g.faiss")
    return table


def _calibration_report(tmp_path: Path, *rule: str) -> tuple:
    """``tfclip calibrate`` of the gallery in ``tmp_path`` under ``rule`` (e.g. ``--fmr 0.05``) with ``--report``:
    the report checked as a page, and its text."""
    out = tmp_path / "calibration.html"
    result = CliRunner().invoke(app, ["calibrate", str(tmp_path / "val.parquet"), "--gallery",
                                      str(tmp_path / "g.faiss"), *rule, "--report", str(out)], terminal_width=300)
    assert result.exit_code == 0, result.output
    return check_page(out), out.read_text()


def test_calibrate_report_draws_the_det_curve_and_histograms_at_the_stored_threshold(tmp_path):
    table = _calibration_gallery(tmp_path, 4)
    page, text = _calibration_report(tmp_path, "--fmr", "0.05")
    threshold = load_index(tmp_path / "g.faiss").info.calibration["threshold"]
    assert page.tags.count("svg") == 2 and f"{threshold:.4f}" in text
    assert f"chosen threshold {threshold:.3f}" in text and f"threshold {threshold:.3f}" in text
    assert "36 genuine and 594 impostor pairs" in text  # 12 x 3 pairs; 630 - 36
    scores = pair_scores(table)
    assert (len(scores.genuine), len(scores.impostor)) == (36, 594)


def test_calibrate_report_of_the_per_search_rule_draws_fnir_against_fpir_at_the_stored_threshold(tmp_path):
    _calibration_gallery(tmp_path, 5)
    page, text = _calibration_report(tmp_path, "--fpir", "0.1")
    stored = load_index(tmp_path / "g.faiss").info.calibration
    assert stored["rule"] == "per-search" and page.tags.count("svg") == 2
    assert f"chosen threshold {stored['threshold']:.3f}" in text and "FPIR" in text and "FNIR" in text
    assert "36 non-mated and 36 mated searches" in text  # every row searched once each way
    assert "mated search: best mate" in text and "non-mated search: best candidate" in text
