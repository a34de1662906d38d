"""Calibrated "no match": the per-search (1:N) rule on a hand-worked case and against a plain loop over searches
(more rows than one block), the per-pair rule against every pair, `tfclip calibrate` (JSON keys, bad rates), and
the warning once a gallery has grown past its calibration (query, the service's log and `/stats`)."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from gallery_copy import copy_gallery
from test_index import CHECKPOINT_INFO, _embeddings, _rows, tiny_gallery  # noqa: F401  (module-scoped fixture)
from tfclip_cli import index
from tfclip_cli.cli import app
from tfclip_cli.errors import GalleryError, UserError
from tfclip_cli.index import calibrate
from tfclip_cli.serve.app import create_app
from tfclip_cli.serve.guard import allowed_hosts
from tfclip_cli.serve.service import ServeConfig, Service
from tfclip_cli.serve.uploads import UploadLimits
from tfclip_cli.tables import Embeddings, write_embeddings

# ------------------------------------------------------------------ per search (1:N): a hand-worked case

NAMES = ["a1", "a2", "a3", "b1", "b2", "c1", "c2", "d1"]
PIDS = [0, 0, 0, 1, 1, 2, 2, 3]  # identities A, B, C seen more than once; D only once (a stranger to all)
SCORES = {  # every cosine score between two rows that is not 0
    ("a1", "a2"): 0.9, ("a1", "a3"): 0.5, ("a2", "a3"): 0.6, ("b1", "b2"): 0.7, ("c1", "c2"): 0.4,
    ("a3", "b1"): 0.55, ("c1", "d1"): 0.45, ("a1", "d1"): 0.3, ("a2", "b1"): 0.1, ("b2", "c2"): 0.3,
}


def _hand_table() -> Embeddings:
    """Unit vectors whose cosine scores are :data:`SCORES` (a Cholesky factor of that Gram matrix), plus a row of
    unknown identity (pid -1) equal to a1, which calibration leaves out."""
    gram = np.eye(len(NAMES))
    for (first, second), score in SCORES.items():
        i, j = NAMES.index(first), NAMES.index(second)
        gram[i, j] = gram[j, i] = score
    vectors = np.linalg.cholesky(gram)
    assert np.allclose(vectors @ vectors.T, gram)
    rows = _rows(NAMES + ["unknown"])
    rows["pid"] = PIDS + [-1]
    return Embeddings(rows, np.vstack([vectors, vectors[:1]]).astype(np.float32), CHECKPOINT_INFO)


def test_search_scores_of_a_hand_worked_case():
    # mated searches (a probe and every other row): best mate, and 1 + the non-mates scoring above it
    #   a1: a2 .9 (non-mates: d1 .3) rank 1;  a2: a1 .9 (b1 .1) 1;  a3: a2 .6 (b1 .55) 1;  b1: b2 .7 (a3 .55) 1;
    #   b2: b1 .7 (c2 .3) 1;  c1: c2 .4 (d1 .45 above it) rank 2;  c2: c1 .4 (b2 .3) 1;  d1 has no mate
    # non-mated searches (the probe's identity left out): the best score of any other identity
    #   a1 .3 (d1), a2 .1 (b1), a3 .55 (b1), b1 .55 (a3), b2 .3 (c2), c1 .45 (d1), c2 .3 (b2), d1 .45 (c1)
    scores = index.search_scores(_hand_table())
    assert scores.mate_score == pytest.approx([0.9, 0.9, 0.6, 0.7, 0.7, 0.4, 0.4], abs=1e-6)
    assert scores.mate_rank.tolist() == [1, 1, 1, 1, 1, 2, 1]
    assert scores.nonmated_score == pytest.approx([0.3, 0.1, 0.55, 0.55, 0.3, 0.45, 0.3, 0.45], abs=1e-6)


@pytest.mark.parametrize(
    ("threshold", "fpir", "fnir_rank_1", "fnir_rank_2"),
    [
        (0.2, 7 / 8, 1 / 7, 0 / 7),  # every non-mated search but a2's returns someone; c1's mate is 2nd
        (0.35, 4 / 8, 1 / 7, 0 / 7),  # a3, b1, c1, d1 return someone
        (0.5, 2 / 8, 2 / 7, 2 / 7),  # a3, b1 (.55); c1's and c2's mates (.4) fall below
        (0.65, 0 / 8, 3 / 7, 3 / 7),  # no stranger returned; a3's mate (.6) falls below too
        (0.8, 0 / 8, 5 / 7, 5 / 7),  # only a1 and a2 (.9) are found
    ],
)
def test_fpir_and_fnir_of_a_hand_worked_case(threshold, fpir, fnir_rank_1, fnir_rank_2):
    scores = index.search_scores(_hand_table())
    assert scores.fpir(threshold) == pytest.approx(fpir)
    assert scores.fnir(threshold, rank=1) == pytest.approx(fnir_rank_1)
    assert scores.fnir(threshold, rank=2) == pytest.approx(fnir_rank_2)
    curve = index.det_curve(scores, rank=1)  # no score between the threshold and the curve's next point
    after = np.searchsorted(curve.threshold, threshold)
    assert (curve.fpir[after], curve.fnir[after]) == (pytest.approx(fpir), pytest.approx(fnir_rank_1))


def test_threshold_at_a_target_fpir_of_a_hand_worked_case():
    scores = index.search_scores(_hand_table())
    # 8 non-mated searches, best scores .55 .55 .45 .45 .3 .3 .3 .1: FPIR 0.25 lets 2 return someone, so the
    # threshold sits just above the third best (.45); 0.5 lets 4, just above .3; 0.1 lets none, just above .55
    quarter, half, tenth = (index.det_point(scores, target) for target in (0.25, 0.5, 0.1))
    assert 0.45 < quarter.threshold < 0.45 + 1e-6 and (quarter.fpir, quarter.fnir) == (0.25, pytest.approx(2 / 7))
    assert 0.3 < half.threshold < 0.3 + 1e-6 and (half.fpir, half.fnir) == (0.5, pytest.approx(1 / 7))
    assert index.det_point(scores, 0.5, rank=2).fnir == 0.0
    assert 0.55 < tenth.threshold < 0.55 + 1e-6 and (tenth.fpir, tenth.fnir) == (0.0, pytest.approx(2 / 7))
    assert quarter.is_resolved and half.is_resolved and not tenth.is_resolved  # 8 searches cannot measure 0.1
    result = index.calibrate_search_threshold(_hand_table(), 0.25)
    assert (result.threshold, result.measured_fpir, result.fnir) == (quarter.threshold, 0.25, quarter.fnir)
    assert (result.mated_searches, result.nonmated_searches) == (7, 8)
    assert [point.target_fpir for point in result.det] == [0.1, 0.01, 0.001]
    curve = result.curve  # from "everyone returns someone" to "no one found", thresholds ascending
    assert (curve.fpir[0], curve.fnir[-1], curve.fpir[-1]) == (1.0, 1.0, 0.0)
    assert np.all(np.diff(curve.threshold) > 0)
    assert np.all(np.diff(curve.fpir) <= 0) and np.all(np.diff(curve.fnir) >= 0)


def test_search_calibration_needs_two_identities_and_a_mate_and_rates_in_0_1():
    with pytest.raises(GalleryError, match="4 labelled rows of 4 identities, 0 of them with a mate"):
        index.calibrate_search_threshold(_embeddings(np.eye(4)), 0.01)  # every pid differs
    one_identity = _embeddings(np.eye(4))
    one_identity.rows["pid"] = 7
    with pytest.raises(GalleryError, match="of 1 identities"):
        index.calibrate_search_threshold(one_identity, 0.01)
    for bad in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(UserError, match="strictly between 0 and 1"):
            index.calibrate_search_threshold(_hand_table(), bad)


# ------------------------------------------------------------------ per search (1:N): the oracle


def _labelled_set(count: int, seed: int) -> Embeddings:
    """``count`` rows of identities seen 1 to 5 times, a tenth of them of unknown identity (pid -1)."""
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(count), rng.integers(1, 6, count))[:count]
    pids[rng.random(count) < 0.1] = -1
    centres = rng.standard_normal((count, 8))
    vectors = centres[np.maximum(pids, 0)] + 0.9 * rng.standard_normal((count, 8))
    rows = _rows([f"r{i}" for i in range(count)])
    rows["pid"] = pids
    return Embeddings(rows, vectors.astype(np.float32), CHECKPOINT_INFO)


def _oracle_searches(table: Embeddings) -> tuple[list[tuple[float, int]], list[float]]:
    """One search at a time, as a gallery would run it: (best mate score, its rank) per mated search, and the best
    score per non-mated search."""
    known = [i for i in range(len(table.rows)) if table.rows["pid"][i] >= 0]
    unit = {i: table.vectors[i] / np.linalg.norm(table.vectors[i]) for i in known}
    pid = {i: int(table.rows["pid"][i]) for i in known}
    mated, nonmated = [], []
    for probe in known:
        gallery = [j for j in known if j != probe]
        if any(pid[j] == pid[probe] for j in gallery):
            ranked = sorted(gallery, key=lambda j: (-float(unit[probe] @ unit[j]), pid[j] != pid[probe]))
            position = next(k for k, j in enumerate(ranked) if pid[j] == pid[probe])
            mated.append((float(unit[probe] @ unit[ranked[position]]), position + 1))
        strangers = [j for j in known if pid[j] != pid[probe]]
        nonmated.append(max(float(unit[probe] @ unit[j]) for j in strangers))
    return mated, nonmated


def test_vectorised_searches_match_a_loop_over_searches_across_blocks(monkeypatch):
    monkeypatch.setattr(calibrate, "BLOCK_ROWS", 16)
    table = _labelled_set(150, seed=5)
    assert (table.rows["pid"] >= 0).sum() > 4 * calibrate.BLOCK_ROWS  # several blocks and a ragged last one
    mated, nonmated = _oracle_searches(table)
    scores = index.search_scores(table)
    assert scores.mate_score == pytest.approx([score for score, _ in mated], abs=1e-5)
    assert scores.mate_rank.tolist() == [rank for _, rank in mated]
    assert scores.nonmated_score == pytest.approx(nonmated, abs=1e-5)
    assert sum(rank > 1 for _, rank in mated) >= 5  # the rank rule is exercised

    for rank in (1, 3):
        curve = index.det_curve(scores, rank=rank)
        for k in range(1, len(curve.threshold)):  # between two curve points nothing changes
            middle = (curve.threshold[k - 1] + curve.threshold[k]) / 2
            fpir = sum(best >= middle for best in nonmated) / len(nonmated)
            fnir = sum(not (score >= middle and position <= rank) for score, position in mated) / len(mated)
            assert (curve.fpir[k], curve.fnir[k]) == (pytest.approx(fpir), pytest.approx(fnir))
        result = index.calibrate_search_threshold(table, 0.05, rank=rank)
        allowed = int(0.05 * len(nonmated))
        ranked = sorted(nonmated, reverse=True)
        assert ranked[allowed] - 1e-5 < result.threshold <= ranked[allowed] + 1e-5
        assert result.measured_fpir == sum(s >= result.threshold for s in scores.nonmated_score) / len(nonmated)
        assert result.measured_fpir <= 0.05


# ------------------------------------------------------------------ per pair


def test_calibrated_threshold_admits_at_most_fmr_of_impostor_pairs_as_a_sorted_oracle_says(monkeypatch):
    monkeypatch.setattr(calibrate, "BLOCK_ROWS", 16)  # 120 rows: 8 blocks, the last one ragged
    rng = np.random.default_rng(4)
    pids = np.repeat(np.arange(30), 4)
    vectors = rng.standard_normal((30, 12))[pids] + 0.8 * rng.standard_normal((120, 12))
    rows = _rows([f"r{i}" for i in range(120)])
    rows["pid"] = pids
    result = index.calibrate_threshold(Embeddings(rows, vectors.astype(np.float32), {}), 0.01)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    genuine, impostor = [], []
    for i in range(120):  # the oracle: every pair, one by one
        for j in range(i + 1, 120):
            (genuine if pids[i] == pids[j] else impostor).append(float(unit[i] @ unit[j]))
    assert (result.genuine_pairs, result.impostor_pairs) == (len(genuine), len(impostor)) == (180, 6960)
    ranked = sorted(impostor, reverse=True)
    assert ranked[69] < result.threshold <= ranked[68] + 1e-6  # floor(0.01 * 6960) = 69 impostors allowed above
    assert result.false_match_rate == pytest.approx(sum(s >= result.threshold for s in impostor) / 6960)
    assert result.false_match_rate <= 0.01
    assert result.genuine_accept_rate == pytest.approx(np.mean([s >= result.threshold for s in genuine]))


def test_per_pair_calibration_needs_genuine_and_impostor_pairs_and_a_rate_in_0_1():
    with pytest.raises(GalleryError, match="0 genuine and 6 impostor pairs"):
        index.calibrate_threshold(_embeddings(np.eye(4)), 0.01)  # every pid differs
    with pytest.raises(UserError, match="strictly between 0 and 1"):
        index.calibrate_threshold(_embeddings(np.eye(4)), 1.0)


# ------------------------------------------------------------------ tfclip calibrate


def _gallery_and_table(tmp_path: Path) -> tuple[Path, Path]:
    """A 6-row gallery and the hand-worked table (padded to its dimension), both of checkpoint 'a'."""
    path, table = tmp_path / "g.faiss", tmp_path / "val.parquet"
    index.build_index(_embeddings(np.eye(8)[:6]), path)
    write_embeddings(_hand_table(), table)
    return path, table


def _calibrate(*arguments: str):
    return CliRunner().invoke(app, ["calibrate", *arguments], terminal_width=400)


def test_calibrate_cli_stores_the_per_search_threshold_with_the_gallery_size_and_prints_the_det_table(tmp_path):
    path, table = _gallery_and_table(tmp_path)
    result = _calibrate(str(table), "--gallery", str(path), "--fpir", "0.25", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert set(answer) == {"rule", "threshold", "fpir", "rank", "measured_fpir", "fnir", "mated_searches",
                           "nonmated_searches", "det", "embeddings", "gallery_rows"}
    assert (answer["rule"], answer["fpir"], answer["rank"], answer["gallery_rows"]) == ("per-search", 0.25, 1, 6)
    assert (answer["measured_fpir"], answer["fnir"]) == (0.25, pytest.approx(2 / 7))
    assert [set(point) for point in answer["det"]] == [{"target_fpir", "threshold", "fpir", "fnir", "is_resolved"}] * 3
    assert [point["target_fpir"] for point in answer["det"]] == [0.1, 0.01, 0.001]
    stored = index.load_index(path).info.calibration
    assert {key: stored[key] for key in answer} == answer and 0.45 < stored["threshold"] < 0.45 + 1e-6
    assert set(stored) - set(answer) == {"curve", "histograms"}  # what draws its pictures, kept beside it

    gallery = index.load_index(path)  # --min-score auto and the match verdict use it
    assert index.resolve_min_score(gallery, "auto") == stored["threshold"]
    exact, spread = index.search(gallery, np.array([np.eye(8)[0], np.ones(8)], np.float32), 1)
    assert exact[0].match is True and spread[0].match is False

    result = _calibrate(str(table), "--gallery", str(path), "--rank", "2")  # default --fpir 0.01: the table
    assert result.exit_code == 0, result.output
    assert "threshold" in result.stdout and "FNIR (rank 2)" in result.stdout and "too few searches" in result.stdout
    assert index.load_index(path).info.calibration["fpir"] == 0.01


def test_the_header_keeps_the_det_curve_and_the_best_score_histograms_of_a_hand_worked_case(tmp_path):
    path, table = _gallery_and_table(tmp_path)
    result = index.calibrate_gallery(path, table, fpir=0.25)
    stored = index.load_index(path).info.calibration
    curve = index.det_curve(index.search_scores(_hand_table()))  # 9 points: kept whole, under CURVE_POINTS
    assert stored["curve"] == {"threshold": pytest.approx(curve.threshold.tolist()),
                               "fpir": curve.fpir.tolist(), "fnir": curve.fnir.tolist()}
    assert stored["curve"]["fpir"] == [1.0, 7 / 8, 4 / 8, 4 / 8, 2 / 8, 0.0, 0.0, 0.0, 0.0]  # at .1 .3 .4 .45 .55 ...
    operating = stored["curve"]["threshold"].index(pytest.approx(0.55))  # the first point above the threshold
    assert (stored["curve"]["fpir"][operating], stored["curve"]["fnir"][operating]) == (0.25, result.fnir)
    histograms = stored["histograms"]  # best scores from .1 (a2's non-mated search) to .9: 50 bins of .016
    assert len(histograms["edges"]) == index.HISTOGRAM_BINS + 1
    assert (histograms["edges"][0], histograms["edges"][-1]) == (pytest.approx(0.1), pytest.approx(0.9))
    mated, nonmated = np.array(histograms["mated"]), np.array(histograms["nonmated"])
    assert np.flatnonzero(mated).tolist() == [18, 31, 37, 49] and mated[mated > 0].tolist() == [2, 1, 2, 2]
    assert np.flatnonzero(nonmated).tolist() == [0, 12, 21, 28] and nonmated[nonmated > 0].tolist() == [1, 3, 2, 2]


def test_a_long_det_curve_is_thinned_to_points_spread_over_every_decade_of_fpir():
    rng = np.random.default_rng(3)
    scores = index.SearchScores(mate_score=rng.normal(0.7, 0.1, 3000).astype(np.float32),
                                mate_rank=rng.integers(1, 3, 3000), nonmated_score=rng.normal(0.4, 0.1, 20_000)
                                .astype(np.float32))
    curve = index.det_curve(scores)
    chosen = float(np.nextafter(np.sort(scores.nonmated_score)[-201], 1))  # just above the 201st: FPIR 0.01
    thin = index.thinned_curve(curve, chosen)
    assert len(curve.threshold) > 20_000 and len(thin.threshold) <= index.CURVE_POINTS
    kept = np.searchsorted(curve.threshold, thin.threshold)  # points of the curve, in its order
    assert np.array_equal(curve.threshold[kept], thin.threshold) and np.all(np.diff(kept) > 0)
    assert np.array_equal(curve.fpir[kept], thin.fpir) and np.array_equal(curve.fnir[kept], thin.fnir)
    assert kept[0] == 0 and kept[-1] == len(curve.threshold) - 1
    operating = np.flatnonzero(curve.threshold >= chosen)[0]  # the rates of the chosen threshold
    assert operating in kept and curve.fpir[operating] == pytest.approx(0.01)
    for low in (1e-4, 1e-3, 1e-2, 1e-1):  # FPIR 1/20000 to 1: every decade drawn with several points
        assert ((thin.fpir >= low) & (thin.fpir < 10 * low)).sum() >= 5, low
    assert index.thinned_curve(curve, chosen, points=len(curve.threshold)) is curve


def test_calibrate_cli_keeps_the_per_pair_rule_under_fmr(tmp_path):
    path, table = _gallery_and_table(tmp_path)
    result = _calibrate(str(table), "--gallery", str(path), "--fmr", "0.1", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert (answer["rule"], answer["fmr"], answer["gallery_rows"]) == ("per-pair", 0.1, 6)
    assert answer["impostor_pairs"] == 8 * 7 // 2 - 5 and answer["false_match_rate"] <= 0.1  # 5 genuine pairs
    assert index.load_index(path).info.calibration == answer
    result = _calibrate(str(table), "--gallery", str(path), "--fmr", "0.1")
    assert result.exit_code == 0 and "per-pair rule" in result.stdout and "genuine-accept rate" in result.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--fpir", "0"], "--fpir 0.0: expected a false-positive identification rate strictly between 0 and 1"),
        (["--fpir", "1.5"], "--fpir 1.5: expected a false-positive identification rate strictly between 0 and 1"),
        (["--fpir", "-0.01"], "strictly between 0 and 1"),
        (["--fpir", "nan"], "strictly between 0 and 1"),
        (["--fmr", "2"], "--fmr 2.0: expected a false-match rate strictly between 0 and 1"),
        (["--fpir", "0.01", "--fmr", "0.01"], "pass one rule"),
        (["--fmr", "0.01", "--rank", "2"], "pass one rule"),
    ],
)
def test_calibrate_cli_refuses_bad_rates_with_one_line_and_exit_2(tmp_path, arguments, message):
    path, table = _gallery_and_table(tmp_path)
    before = path.read_bytes()
    result = _calibrate(str(table), "--gallery", str(path), *arguments)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert path.read_bytes() == before  # nothing stored


def test_calibrate_cli_refuses_a_table_of_another_checkpoint(tmp_path):
    path, table = _gallery_and_table(tmp_path)
    other = tmp_path / "other.parquet"
    hand = _hand_table()
    write_embeddings(Embeddings(hand.rows, hand.vectors, {"checkpoint_sha256": "b" * 64}), other)
    result = _calibrate(str(other), "--gallery", str(path))
    assert result.exit_code == 2 and "not comparable" in result.output


def test_calibrating_a_gallery_far_larger_than_the_table_searched_warns(tmp_path, caplog):
    path, table = tmp_path / "big.faiss", tmp_path / "val.parquet"
    index.build_index(_embeddings(np.random.default_rng(0).standard_normal((15, 8))), path)
    write_embeddings(_hand_table(), table)
    with caplog.at_level(logging.WARNING):
        index.calibrate_gallery(path, table, fpir=0.25)
    assert "holds 15 tracklets; the table's searches met galleries of at most 7" in caplog.text  # 8 rows, 1 probe
    caplog.clear()
    index.build_index(_embeddings(np.random.default_rng(0).standard_normal((14, 8))), path, force=True)
    with caplog.at_level(logging.WARNING):
        index.calibrate_gallery(path, table, fpir=0.25)
    assert "searches met" not in caplog.text


# ------------------------------------------------------------------ a gallery grown past its calibration


def _calibrated_at(tiny_gallery, folder: Path, rows: int) -> Path:  # noqa: F811
    """A copy of the tiny gallery whose header says it was calibrated when it held ``rows`` live tracklets."""
    path = folder / f"calibrated-at-{rows}.faiss"
    copy_gallery(tiny_gallery[0], path)
    index.store.update_header(path, calibration={"rule": "per-search", "threshold": 0.5, "fpir": 0.01,
                                                 "gallery_rows": rows})
    return path


def test_query_warns_once_the_gallery_has_more_than_doubled_since_calibration(
    tiny_gallery, tmp_path, caplog  # noqa: F811
):
    live = index.load_index(tiny_gallery[0]).info.live_count
    clip = Path(tiny_gallery[2][0])
    fresh, stale = _calibrated_at(tiny_gallery, tmp_path, live), _calibrated_at(tiny_gallery, tmp_path, live // 3)
    with caplog.at_level(logging.WARNING):
        index.query(fresh, [clip], index.SearchOptions(top_k=1))
    assert "calibrate again" not in caplog.text
    with caplog.at_level(logging.WARNING):
        index.query(stale, [clip], index.SearchOptions(top_k=1, min_score="auto"))
    assert (f"{stale} holds {live} tracklets, more than 2x the {live // 3} it was calibrated at" in caplog.text
            and f"calibrate again: tfclip calibrate VAL.parquet --gallery {stale} --fpir 0.01" in caplog.text)
    result = CliRunner().invoke(app, ["query", str(clip), "--gallery", str(stale), "--top-k", "1"],
                                terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "calibrate again" in result.stderr and "calibrate again" not in result.stdout


def test_stats_and_the_service_log_say_when_the_gallery_has_outgrown_its_calibration(
    tiny_gallery, tmp_path, caplog  # noqa: F811
):
    live = index.load_index(tiny_gallery[0]).info.live_count
    stale = _calibrated_at(tiny_gallery, tmp_path, live // 3)
    config = ServeConfig(gallery=stale, checkpoint=None, device=torch.device("cpu"),
                         limits=UploadLimits(max_bytes=1_000_000, max_frames=100), allow_dirs=(),
                         store=tmp_path / "store", detector="hog")
    with caplog.at_level(logging.WARNING):
        client = TestClient(create_app(Service(config), token=None, hosts=allowed_hosts("127.0.0.1")),
                            base_url="http://127.0.0.1:8000")
    assert "calibrate again" in caplog.text
    stats = client.get("/stats").json()
    assert stats["calibration_stale"] is True and "calibrate again" in stats["calibration_message"]
    index.store.update_header(stale, calibration={**stats["calibration"], "gallery_rows": live})  # recalibrated
    stats = client.get("/stats").json()  # the service reloads the rewritten file
    assert (stats["calibration_stale"], stats["calibration_message"]) == (False, None)
    old = _calibrated_at(tiny_gallery, tmp_path, 1)
    index.store.update_header(old, calibration={"threshold": 0.5, "fmr": 0.01})  # before galleries recorded size
    assert index.stale_calibration(index.load_index(old)) is None


def test_get_calibration_answers_the_stored_curve_and_histograms_and_stats_leaves_them_out(
    tiny_gallery, tmp_path  # noqa: F811
):
    path = copy_gallery(tiny_gallery[0], tmp_path / "g.faiss")
    config = ServeConfig(gallery=path, checkpoint=None, device=torch.device("cpu"),
                         limits=UploadLimits(max_bytes=1_000_000, max_frames=100), allow_dirs=(),
                         store=tmp_path / "store", detector="hog")
    client = TestClient(create_app(Service(config), token=None, hosts=allowed_hosts("127.0.0.1")),
                        base_url="http://127.0.0.1:8000")
    missing = client.get("/calibration")
    assert missing.status_code == 404 and "has no calibration" in missing.json()["error"]
    assert "tfclip calibrate" in missing.json()["hint"] and client.get("/stats").json()["calibration"] is None
    result = index.calibrate_search_threshold(_hand_table(), 0.25)  # stored as calibrate_gallery stores it
    index.store.update_header(path, calibration={**result.to_dict(), **index.calibration_figures(result)})
    answer = client.get("/calibration").json()
    assert answer["threshold"] == result.threshold and answer["measured_fpir"] == 0.25
    assert answer["curve"]["fpir"] == [1.0, 7 / 8, 4 / 8, 4 / 8, 2 / 8, 0.0, 0.0, 0.0, 0.0]
    assert sum(answer["histograms"]["mated"]) == 7 and sum(answer["histograms"]["nonmated"]) == 8
    assert answer["stale_message"] is None
    stats = client.get("/stats").json()
    assert stats["calibration"] == result.to_dict() and stats["threshold"] == result.threshold
