"""Evaluation: hand-computed rankings, a per-query numpy oracle, re-ranking, and the `tfclip evaluate` command."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from tfclip_cli.cli import app
from tfclip_cli.errors import GalleryError
from tfclip_cli.evaluate import EvalResult, RerankParams, compute_metrics, evaluate, rerank_distances
from tfclip_cli.evaluate import _stable_order_keys
from tfclip_cli.tables import Embeddings, write_embeddings

METRICS = ("mAP", "rank1", "rank5", "rank10", "rank20", "mINP")


def at(*degrees: float) -> np.ndarray:
    """Unit vectors on a circle: the cosine similarity of two of them falls with the angle between them."""
    radians = np.radians(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def metrics(query, gallery, *, query_ids, gallery_ids, **options) -> EvalResult:
    """compute_metrics with (pid, camid) pairs per row."""
    (query_pids, query_camids), (gallery_pids, gallery_camids) = zip(*query_ids), zip(*gallery_ids)
    return compute_metrics(
        query, gallery, query_pids=np.array(query_pids), query_camids=np.array(query_camids),
        gallery_pids=np.array(gallery_pids), gallery_camids=np.array(gallery_camids), **options,
    )


# ---- hand-computed cases -------------------------------------------------------------------------------------------


def test_same_pid_same_camera_rows_are_removed_before_ranking() -> None:
    # kept order: pid 2 (10°), true match (20°), pid 3 (30°), true match (40°); the same-camera row (5°) is dropped
    result = metrics(
        at(0), at(5, 10, 20, 30, 40),
        query_ids=[(1, 0)], gallery_ids=[(1, 0), (2, 1), (1, 1), (3, 2), (1, 2)],
    )
    assert result.rank1 == 0.0 and result.rank5 == 1.0
    assert result.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert result.mINP == pytest.approx(2 / 4)
    assert (result.num_query, result.num_gallery, result.num_skipped_queries) == (1, 5, 0)


def test_distractors_stay_as_negatives_and_junk_rows_are_removed() -> None:
    # a distractor (pid 0) at 5° outranks the true match at 10°; the junk row (pid -1) at 7° does not count
    result = metrics(at(0), at(5, 7, 10), query_ids=[(1, 0)], gallery_ids=[(0, 1), (-1, 1), (1, 1)])
    assert result.mAP == pytest.approx(1 / 2)
    assert result.rank1 == 0.0 and result.rank5 == 1.0
    assert result.mINP == pytest.approx(1 / 2)
    assert result.num_gallery == 2


def test_queries_without_a_true_match_are_skipped_and_counted() -> None:
    # query 2's pid is absent; query 3's only match shares its camera; query 1 ranks its match first
    result = metrics(
        at(0, 90, 180), at(3, 95, 178),
        query_ids=[(1, 0), (9, 0), (2, 0)], gallery_ids=[(1, 1), (5, 1), (2, 0)],
    )
    assert result.num_skipped_queries == 2 and result.num_query == 3
    assert result.mAP == 1.0 and result.rank1 == 1.0 and result.mINP == 1.0


def test_no_query_with_a_true_match_is_an_error() -> None:
    with pytest.raises(GalleryError, match="none of the 1 queries has a true match"):
        metrics(at(0), at(5), query_ids=[(1, 0)], gallery_ids=[(1, 0)])


def test_ties_go_to_the_earlier_gallery_row() -> None:
    same = at(10, 10)
    negative_first = metrics(at(0), same, query_ids=[(1, 0)], gallery_ids=[(2, 1), (1, 1)])
    match_first = metrics(at(0), same, query_ids=[(1, 0)], gallery_ids=[(1, 1), (2, 1)])
    assert (negative_first.rank1, negative_first.mAP) == (0.0, 0.5)
    assert (match_first.rank1, match_first.mAP) == (1.0, 1.0)


def test_equal_scores_get_equal_keys_whatever_the_sign_of_zero() -> None:
    scores = torch.tensor([[0.0, -0.0, 0.5, -0.5]])
    keys = _stable_order_keys(scores, torch.arange(4), num_columns=4)[0].tolist()
    assert keys[2] > keys[0] > keys[1] > keys[3]  # equal scores: the earlier column first
    assert keys[0] - keys[1] == 1


def test_gallery_rule_decides_whether_other_queries_are_candidates() -> None:
    # queries at 0° (camera 0) and 10° (camera 1) share pid 1; the gallery has pid 2 at 5° and pid 1 at 30°
    options = dict(query_ids=[(1, 0), (1, 1)], gallery_ids=[(2, 2), (1, 2)])
    gallery_only = metrics(at(0, 10), at(5, 30), **options, gallery_rule="gallery_only")
    includes_query = metrics(at(0, 10), at(5, 30), **options, gallery_rule="includes_query")
    assert gallery_only.mAP == pytest.approx(1 / 2) and gallery_only.num_gallery == 2
    # each query now finds the other one at rank 2 and the gallery match at rank 3
    assert includes_query.mAP == pytest.approx((1 / 2 + 2 / 3) / 2) and includes_query.num_gallery == 4
    assert includes_query.mINP == pytest.approx(2 / 3)
    assert (gallery_only.gallery_rule, includes_query.gallery_rule) == ("gallery_only", "includes_query")


def test_non_finite_embeddings_are_refused() -> None:
    gallery = at(5, 10)
    gallery[1, 0] = np.nan
    with pytest.raises(GalleryError, match="NaN or infinite"):
        metrics(at(0), gallery, query_ids=[(1, 0)], gallery_ids=[(1, 1), (2, 1)])


# ---- agreement with a slow oracle ----------------------------------------------------------------------------------


def oracle(query, gallery, *, query_ids, gallery_ids, gallery_rule) -> dict:
    """The protocol one query at a time: stable argsort, drop same pid and camera, AP / CMC / INP from the matches."""
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    kept = gallery_ids[:, 0] != -1
    gallery, gallery_ids = gallery[kept], gallery_ids[kept]
    if gallery_rule == "includes_query":
        gallery, gallery_ids = np.concatenate([query, gallery]), np.concatenate([query_ids, gallery_ids])
    average_precisions, first_ranks, inverse_penalties = [], [], []
    for vector, (pid, camid) in zip(query, query_ids):
        order = np.argsort(-(gallery @ vector).astype(np.float32), kind="stable")
        pids, camids = gallery_ids[order, 0], gallery_ids[order, 1]
        is_match = (pids == pid)[~((pids == pid) & (camids == camid))]
        if not is_match.any():
            continue
        ranks = np.flatnonzero(is_match) + 1
        average_precisions.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        first_ranks.append(ranks[0])
        inverse_penalties.append(len(ranks) / ranks[-1])
    first = np.array(first_ranks)
    cmc = {f"rank{k}": float(np.mean(first <= k)) for k in (1, 5, 10, 20)}
    return {"mAP": np.mean(average_precisions), **cmc, "mINP": np.mean(inverse_penalties),
            "num_skipped_queries": len(query) - len(first_ranks)}


def random_case(seed: int, *, with_ties: bool) -> dict:
    """Clustered embeddings with distractors and junk rows; ``with_ties``: vectors of four ±0.5 entries, so every
    cosine is a multiple of 1/4, exact in float32 whatever the summation order, and ties abound."""
    rng = np.random.default_rng(seed)
    num_query, num_gallery, dim, identities = 40, 150, 16, 12
    query_ids = np.stack([rng.integers(1, identities, num_query), rng.integers(0, 3, num_query)], axis=1)
    gallery_ids = np.stack([rng.integers(-1, identities, num_gallery), rng.integers(0, 3, num_gallery)], axis=1)
    if with_ties:
        def draw(count: int) -> np.ndarray:
            vectors = np.zeros((count, dim), dtype=np.float32)
            for row in vectors:
                row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
            return vectors
        query, gallery = draw(num_query), draw(num_gallery)
    else:
        centres = rng.normal(size=(identities + 1, dim))
        query = (centres[query_ids[:, 0]] + rng.normal(size=(num_query, dim))).astype(np.float32)
        gallery = (centres[gallery_ids[:, 0]] + rng.normal(size=(num_gallery, dim))).astype(np.float32)
    return dict(query=query, gallery=gallery, query_ids=query_ids, gallery_ids=gallery_ids)


@pytest.mark.parametrize("gallery_rule", ["gallery_only", "includes_query"])
@pytest.mark.parametrize("with_ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_the_per_query_oracle(seed: int, with_ties: bool, gallery_rule: str) -> None:
    case = random_case(seed, with_ties=with_ties)
    expected = oracle(**case, gallery_rule=gallery_rule)
    result = metrics(
        case["query"], case["gallery"], query_ids=case["query_ids"], gallery_ids=case["gallery_ids"],
        gallery_rule=gallery_rule, chunk_size=16,
    )
    for name in METRICS:
        assert getattr(result, name) == pytest.approx(expected[name], abs=1e-9), name
    assert result.num_skipped_queries == expected["num_skipped_queries"]


def test_chunk_size_does_not_change_the_result() -> None:
    case = random_case(3, with_ties=True)
    ids = dict(query_ids=case["query_ids"], gallery_ids=case["gallery_ids"], gallery_rule="includes_query")
    results = [metrics(case["query"], case["gallery"], **ids, chunk_size=size) for size in (1, 7, 1000)]
    for name in METRICS:
        assert {round(getattr(r, name), 12) for r in results} == {round(getattr(results[0], name), 12)}


def test_torch_tensors_and_numpy_arrays_give_the_same_result() -> None:
    case = random_case(4, with_ties=False)
    ids = dict(query_ids=case["query_ids"], gallery_ids=case["gallery_ids"])
    from_numpy = metrics(case["query"], case["gallery"], **ids)
    from_torch = metrics(torch.from_numpy(case["query"]).double(), torch.from_numpy(case["gallery"]), **ids)
    assert from_numpy == from_torch


# ---- re-ranking ----------------------------------------------------------------------------------------------------


def oracle_rerank(query: np.ndarray, gallery: np.ndarray, params: RerankParams) -> np.ndarray:
    """Zhong et al.'s steps one row at a time, in float64."""
    features = np.concatenate([query, gallery]).astype(np.float64)
    distances = np.maximum(2 - 2 * features @ features.T, 0)
    distances /= distances.max(axis=1, keepdims=True)
    ranking = np.argsort(distances, axis=1, kind="stable")

    def reciprocal(i: int, k: int) -> set:
        return {j for j in ranking[i, : k + 1] if i in ranking[j, : k + 1]}

    weights = np.zeros_like(distances)
    for i in range(len(features)):
        members = reciprocal(i, params.k1)
        expanded = set(members)
        for candidate in members:
            half = reciprocal(candidate, round(params.k1 / 2))
            if len(half & members) > 2 / 3 * len(half):
                expanded |= half
        columns = sorted(expanded)
        weights[i, columns] = np.exp(-distances[i, columns]) / np.exp(-distances[i, columns]).sum()
    if params.k2 > 1:
        weights = np.stack([weights[ranking[i, : params.k2]].mean(axis=0) for i in range(len(features))])
    jaccard = np.zeros((len(query), len(features)))
    for i in range(len(query)):
        for j in range(len(features)):
            shared = np.minimum(weights[i], weights[j]).sum()
            jaccard[i, j] = 1 - shared / (2 - shared)
    return jaccard * (1 - params.lambda_value) + distances[: len(query)] * params.lambda_value


@pytest.mark.parametrize(
    "params", [RerankParams(), RerankParams(k1=5, k2=3, lambda_value=0.5), RerankParams(k1=3, k2=1)], ids=str
)
def test_rerank_distances_agree_with_the_row_by_row_oracle(params: RerankParams) -> None:
    case = random_case(5, with_ties=False)
    query = case["query"][:12] / np.linalg.norm(case["query"][:12], axis=1, keepdims=True)
    gallery = case["gallery"][:50] / np.linalg.norm(case["gallery"][:50], axis=1, keepdims=True)
    ours = rerank_distances(torch.from_numpy(query), torch.from_numpy(gallery), params)
    assert ours.shape == (12, 62)
    np.testing.assert_allclose(ours.numpy(), oracle_rerank(query, gallery, params), atol=1e-6)


def test_rerank_lifts_true_matches_that_share_the_query_neighbourhood() -> None:
    # the nearest row (8°) is a negative whose own neighbours lie beyond it (16°-28°); the true matches at -9°,
    # -10° and -15° are the query's reciprocal neighbours, so re-ranking moves two of them above it
    options = dict(
        query_ids=[(1, 0)], gallery_ids=[(2, 1), (2, 2), (2, 1), (2, 2), (1, 1), (1, 2), (1, 1)],
    )
    gallery = at(8, 16, 24, 28, -15, -10, -9)
    plain = metrics(at(0), gallery, **options)
    reranked = metrics(at(0), gallery, **options, rerank=RerankParams(k1=3, k2=1))
    assert (plain.rank1, plain.mAP) == (0.0, pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3))
    assert (reranked.rank1, reranked.mAP) == (1.0, pytest.approx((1 + 1 + 3 / 4) / 3))


def test_rerank_defaults_are_the_official_codes():
    # utils/metrics.py R1_mAP_eval: re_ranking(qf, gf, k1=50, k2=15, lambda_value=0.3)
    assert RerankParams() == RerankParams(k1=50, k2=15, lambda_value=0.3)


@pytest.mark.parametrize("gallery_rule", ["gallery_only", "includes_query"])
def test_reranked_metrics_stay_in_range(gallery_rule: str) -> None:
    case = random_case(6, with_ties=False)
    ids = dict(query_ids=case["query_ids"], gallery_ids=case["gallery_ids"], gallery_rule=gallery_rule)
    plain = metrics(case["query"], case["gallery"], **ids)
    reranked = metrics(case["query"], case["gallery"], **ids, rerank=RerankParams())
    assert all(0.0 <= getattr(reranked, name) <= 1.0 for name in METRICS)
    assert reranked.mAP != plain.mAP
    assert (reranked.num_gallery, reranked.num_skipped_queries) == (plain.num_gallery, plain.num_skipped_queries)


# ---- embeddings tables and the command -----------------------------------------------------------------------------


def embeddings_table(info: dict, *, splits=("query", "query", "gallery", "gallery")) -> Embeddings:
    """The two-query case of test_gallery_rule_decides_whether_other_queries_are_candidates as a table."""
    rows = pd.DataFrame({
        "tracklet_id": ["q0", "q1", "g0", "g1"], "pid": [1, 1, 2, 1], "camid": [0, 1, 2, 2], "split": list(splits),
        "num_frames": [8] * 4, "frames": [None] * 4, "video": [f"/v/{i}.mp4" for i in range(4)],
    })
    return Embeddings(rows=rows, vectors=at(0, 10, 5, 30), info=info)


def test_evaluate_follows_the_recorded_gallery_rule_unless_told_otherwise() -> None:
    table = embeddings_table({"gallery_rule": "includes_query", "sampling": "dense"})
    assert evaluate(table).mAP == pytest.approx(7 / 12)
    assert evaluate(table, gallery_rule="gallery_only").mAP == pytest.approx(1 / 2)
    assert evaluate(embeddings_table({})).gallery_rule == "gallery_only"
    with pytest.raises(GalleryError, match="unknown gallery rule 'everything'"):
        evaluate(embeddings_table({"gallery_rule": "everything"}))


def test_evaluate_ignores_train_rows() -> None:
    table = embeddings_table({}, splits=("query", "train", "gallery", "gallery"))
    result = evaluate(table)
    assert (result.num_query, result.num_gallery, result.mAP) == (1, 2, pytest.approx(1 / 2))


def run_cli(*args: str):
    return CliRunner().invoke(app, ["evaluate", *args], terminal_width=200)


def test_cli_json_has_the_documented_keys_and_values(tmp_path: Path) -> None:
    path = tmp_path / "emb.parquet"
    write_embeddings(embeddings_table({"gallery_rule": "includes_query"}), path)
    result = run_cli(str(path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"mAP", "rank1", "rank5", "rank10", "rank20", "mINP", "num_query", "num_gallery"} <= set(report)
    assert report["mAP"] == pytest.approx(7 / 12) and report["mINP"] == pytest.approx(2 / 3)
    assert (report["rank1"], report["rank5"], report["num_query"], report["num_gallery"]) == (0.0, 1.0, 2, 4)
    assert report["gallery_rule"] == "includes_query" and report["num_skipped_queries"] == 0
    gallery_only = json.loads(run_cli(str(path), "--json", "--gallery-only").stdout)
    assert (gallery_only["mAP"], gallery_only["num_gallery"]) == (pytest.approx(1 / 2), 2)


def test_cli_table_names_the_gallery_rule_and_the_counts(tmp_path: Path) -> None:
    path = tmp_path / "emb.parquet"
    write_embeddings(embeddings_table({}), path)
    result = run_cli(str(path), "--gallery-includes-query", "--rerank")
    assert result.exit_code == 0, result.output
    assert "gallery rule: includes_query" in result.stdout and "re-ranked" in result.stdout
    assert "2 queries (0 skipped: no true match), 4 ranked tracklets" in result.stdout
    assert "mAP" in result.stdout and "rank-20" in result.stdout


def test_cli_accepts_a_table_written_by_another_tool(tmp_path: Path) -> None:
    path = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({
        "tracklet_id": ["q0", "q1", "g0", "g1"], "pid": [1, 1, 2, 1], "camid": [0, 1, 2, 2],
        "split": ["query", "query", "gallery", "gallery"], "embedding": at(0, 10, 5, 30).tolist(),
    }), path)
    result = run_cli(str(path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["gallery_rule"] == "gallery_only" and report["mAP"] == pytest.approx(1 / 2)


def test_cli_exits_2_naming_a_file_without_queries(tmp_path: Path) -> None:
    path = tmp_path / "gallery-only.parquet"
    write_embeddings(embeddings_table({}, splits=("gallery",) * 4), path)
    result = run_cli(str(path))
    assert result.exit_code == 2
    assert str(path) in result.output and "no query rows" in result.output
    assert result.stdout == ""


def test_cli_exits_2_naming_an_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_text("not parquet")
    result = run_cli(str(path), "--json")
    assert result.exit_code == 2
    assert str(path) in result.output and "not a readable Parquet file" in result.output
