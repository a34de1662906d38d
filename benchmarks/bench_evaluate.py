"""Time `tfclip_cli.evaluate.compute_metrics` against a straightforward per-query numpy evaluation, in one run.

Synthetic MARS-sized data: 1,980 queries and 9,330 gallery tracklets, 2048-d float32, 625 identities seen by
6 cameras, 15% of the gallery distractors (pid 0, each its own random direction). A tracklet is its identity's
centre (standard normal in every dimension) plus Gaussian noise of standard deviation ``--spread``; the default
3.0 gives metrics close to a trained MARS model (mAP ~0.9, rank-1 ~1.0, mINP ~0.5); a large spread (e.g. 100)
makes the embeddings pure noise, the worst case for our ranking (true matches anywhere in the list).

The numpy reference evaluates one query at a time under the same protocol (gallery-only by default): float32
cosine similarities, a stable argsort, same pid and camera removed, AP / CMC / INP from the kept matches.
Both must agree on mAP, CMC and mINP within 1e-5. Each timing is the best of ``--repeats`` runs, on all cores.

    python benchmarks/bench_evaluate.py
    python benchmarks/bench_evaluate.py --spread 100 --gallery-rule includes_query
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tfclip_cli.evaluate import EvalResult, compute_metrics

METRICS = ("mAP", "rank1", "rank5", "rank10", "rank20", "mINP")


def synthetic(args: argparse.Namespace) -> dict:
    """Query and gallery vectors, pids and camids drawn around identity centres."""
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.identities + 1, args.dim), dtype=np.float32)
    query_pids = rng.integers(1, args.identities + 1, args.queries)
    gallery_pids = rng.integers(1, args.identities + 1, args.gallery)
    gallery_pids[rng.random(args.gallery) < args.distractor_fraction] = 0
    data = {
        "query_pids": query_pids,
        "query_camids": rng.integers(0, args.cameras, args.queries),
        "gallery_pids": gallery_pids,
        "gallery_camids": rng.integers(0, args.cameras, args.gallery),
    }
    for side, pids in (("query", query_pids), ("gallery", gallery_pids)):
        noise = rng.standard_normal((len(pids), args.dim), dtype=np.float32) * np.float32(args.spread)
        vectors = centres[pids] + noise
        is_distractor = pids == 0
        vectors[is_distractor] = rng.standard_normal((int(is_distractor.sum()), args.dim), dtype=np.float32)
        data[f"{side}_vectors"] = vectors
    return data


def numpy_reference(data: dict, gallery_rule: str) -> dict:
    """The protocol one query at a time with numpy: what an evaluation loop usually looks like."""
    query = data["query_vectors"] / np.linalg.norm(data["query_vectors"], axis=1, keepdims=True)
    gallery = data["gallery_vectors"] / np.linalg.norm(data["gallery_vectors"], axis=1, keepdims=True)
    gallery_pids, gallery_camids = data["gallery_pids"], data["gallery_camids"]
    if gallery_rule == "includes_query":
        gallery = np.concatenate([query, gallery])
        gallery_pids = np.concatenate([data["query_pids"], gallery_pids])
        gallery_camids = np.concatenate([data["query_camids"], gallery_camids])
    average_precisions, first_ranks, inverse_penalties = [], [], []
    for vector, pid, camid in zip(query, data["query_pids"], data["query_camids"]):
        order = np.argsort(-(gallery @ vector), kind="stable")
        pids, camids = gallery_pids[order], gallery_camids[order]
        is_match = (pids == pid)[~((pids == pid) & (camids == camid))]
        if not is_match.any():
            continue
        ranks = np.flatnonzero(is_match) + 1
        average_precisions.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        first_ranks.append(ranks[0])
        inverse_penalties.append(len(ranks) / ranks[-1])
    first = np.array(first_ranks)
    cmc = {f"rank{k}": float(np.mean(first <= k)) for k in (1, 5, 10, 20)}
    return {"mAP": float(np.mean(average_precisions)), **cmc, "mINP": float(np.mean(inverse_penalties))}


def best_time(run, repeats: int) -> tuple[float, object]:
    """The fastest of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=1980)
    parser.add_argument("--gallery", type=int, default=9330)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--identities", type=int, default=625)
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--distractor-fraction", type=float, default=0.15)
    parser.add_argument("--spread", type=float, default=3.0, help="noise std around identity centres (default 3.0)")
    parser.add_argument("--gallery-rule", choices=("gallery_only", "includes_query"), default="gallery_only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = synthetic(args)
    print(f"{args.queries} queries x {args.gallery} gallery, {args.dim}-d, {args.identities} ids, {args.cameras} cams, "
          f"spread {args.spread}, {args.gallery_rule}; torch threads: {torch.get_num_threads()}")
    ours_seconds, ours = best_time(lambda: compute_metrics(**data, gallery_rule=args.gallery_rule), args.repeats)
    query = torch.nn.functional.normalize(torch.from_numpy(data["query_vectors"]), dim=1)
    gallery = torch.nn.functional.normalize(torch.from_numpy(data["gallery_vectors"]), dim=1)
    matmul_seconds, _ = best_time(lambda: query @ gallery.T, args.repeats)
    reference_seconds, reference = best_time(lambda: numpy_reference(data, args.gallery_rule), 1)
    assert isinstance(ours, EvalResult)
    print(f"{'metric':8} {'tfclip':>9} {'numpy':>9}")
    for name in METRICS:
        print(f"{name:8} {getattr(ours, name):9.5f} {reference[name]:9.5f}")
    worst = max(abs(getattr(ours, name) - reference[name]) for name in METRICS)
    print(f"largest difference {worst:.2e} ({'agree' if worst <= 1e-5 else 'DISAGREE'} within 1e-5)")
    print(f"tfclip evaluate    {ours_seconds:8.3f} s  (best of {args.repeats}; the similarity matmul alone: "
          f"{matmul_seconds:.3f} s)")
    print(f"numpy per query    {reference_seconds:8.3f} s")
    print(f"speed-up           {reference_seconds / ours_seconds:8.1f}x")
    if worst > 1e-5:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
