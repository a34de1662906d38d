"""Build time, per-query latency and recall@10 of ivfpq and hnsw against exact flat search, in one run.

Synthetic clustered embeddings stand in for a tracklet gallery: ``N / 16`` identities with unit centres in a
``--latent-dim`` (32) subspace, rows drawn around their identity's centre in that subspace, then rotated into
``--dim`` dimensions with a little isotropic noise on top. Learned embeddings concentrate near such a
low-dimensional subspace; ``--latent-dim 0`` draws everything isotropically in ``--dim`` dimensions instead, the
worst case for every approximate index. The default dimension is 256 rather than TF-CLIP's width so that 1M
float32 rows (1 GiB per copy) and the exact baseline fit in memory and time on a 2-core machine.

Indexes are built with ``tfclip_cli.index.build_index`` (all cores, the gallery file written as in real use) and
searched through the loaded FAISS index on ONE thread with a batch of queries, so the per-query latencies of
flat, ivfpq and hnsw are comparable. Recall@10 = overlap of the top-10 ids with exact flat search.

    python benchmarks/bench_index.py                      # 100k and 1M rows, 256-d; the 1M hnsw build dominates
    python benchmarks/bench_index.py --sizes 1000000 --types ivfpq   # ~3 minutes on 2 cores
    python benchmarks/bench_index.py --sizes 100000 --dim 512

``--appends`` measures the gallery's append log instead: for each size and for flat and ivfpq, the time of one
append of ``--batch`` (100) tracklets through ``append_to_index`` (a record appended to the log, O(batch)) beside
the read-modify-write it replaced (load the whole gallery, add, write new rows and index files, rename:
O(N)), both on the same gallery in the same run; then the time to load the gallery with its log, the time a
service takes to see one more append (``refresh_index``: the new record alone), and the time and peak memory of
``compact_index`` (in a fresh process, so its peak RSS is its own).

    nice -n 10 timeout 3600 python benchmarks/bench_index.py --appends --sizes 10000 100000 1000000 --dim 512

``--scale 1e6,1e7`` measures what a gallery of that many 512-d tracklets costs on this machine instead, per type
(``--scale-types``, default ``auto`` = what ``tfclip index --type auto`` picks within ``--memory-budget``): build
time and peak RSS (a fresh process running ``build_index``), the sizes of the gallery file and of its index
file, then a fresh process that opens the gallery (``load_index`` maps the index file) and searches one query at
a time on one thread through ``index.search`` (open time, RSS after opening, peak RSS, the process's own and its
file-backed memory at the end, latency p50/p95), and recall@10 against exact search computed block by block on
``--queries`` queries. ``--folder F --keep`` leaves the galleries in ``F``, ``--reuse`` serves them again;
``--serve-cgroup`` runs the serving process in a memory cgroup (a limit that counts the page cache its mapped
index file fills, which RSS counts too although the kernel can drop it). The
vectors are generated block by block from a seed (``SyntheticVectors``), never held whole (1e7 x 512 float32
would be 20 GB), so each process regenerates what it reads:

    nice -n 10 python benchmarks/bench_index.py --scale 1e6 --scale-types ivfpq ivfpq-fp16 ivfpq-sq8 ivfpq-norescore
    nice -n 10 timeout 3h python benchmarks/bench_index.py --scale 1e7 --scale-types ivfpq-sq8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from tfclip_cli import index as gallery_api
from tfclip_cli.index import append_to_index, build_index, load_index, normalized, refresh_index, writer_lock
from tfclip_cli.index.store import BUILD_CHUNK_ROWS, _parquet_bytes, _rows_table
from tfclip_cli.tables import Embeddings, atomic_output

TOP_K = 10
ROWS_PER_IDENTITY = 16
SPREAD = 0.5
"""Norm of a row's offset from its unit identity centre (cosine to the centre ≈ 0.9)."""
ISOTROPIC_NOISE = 0.2
"""Norm of the noise added in all dimensions after the rotation out of the latent subspace."""


def _noise(count: int, dim: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((count, dim), dtype=np.float32) * np.float32(scale / np.sqrt(dim))


def synthetic_vectors(count: int, centres: np.ndarray, rotation: np.ndarray | None, rng: np.random.Generator):
    """``count`` unit rows [count, D] around random ``centres`` [C, L], rotated by ``rotation`` [L, D] if given."""
    out = []
    for start in range(0, count, 100_000):  # blocks keep the temporaries small at 1M rows
        size = min(100_000, count - start)
        rows = centres[rng.integers(0, len(centres), size=size)] + _noise(size, centres.shape[1], SPREAD, rng)
        if rotation is not None:
            rows = rows @ rotation + _noise(size, rotation.shape[1], ISOTROPIC_NOISE, rng)
        out.append(normalized(rows))
    return np.concatenate(out)


def synthetic_gallery(count: int, args: argparse.Namespace) -> tuple[Embeddings, np.ndarray]:
    """A gallery table of ``count`` rows and ``args.queries`` query vectors of the same identities."""
    rng = np.random.default_rng(args.seed)
    latent = args.latent_dim or args.dim
    centres = normalized(rng.standard_normal((max(1, count // ROWS_PER_IDENTITY), latent), dtype=np.float32))
    rotation = None
    if args.latent_dim:
        rotation = np.linalg.qr(rng.standard_normal((args.dim, latent)))[0].T.astype(np.float32)
    vectors = synthetic_vectors(count, centres, rotation, rng)
    rows = pd.DataFrame(
        {
            "tracklet_id": [f"t{i}" for i in range(count)],
            "pid": np.zeros(count, dtype=np.int64),
            "camid": np.zeros(count, dtype=np.int64),
            "split": "gallery",
            "num_frames": np.ones(count, dtype=np.int64),
            "frames": [None] * count,
            "video": [None] * count,
        }
    )
    queries = synthetic_vectors(args.queries, centres, rotation, rng)
    return Embeddings(rows=rows, vectors=vectors, info={}), queries


def timed_search(index: faiss.Index, queries: np.ndarray, top_k: int) -> tuple[np.ndarray, float]:
    """Ids [Q, top_k] and the per-query latency in milliseconds, searched on one thread."""
    faiss.omp_set_num_threads(1)
    start = time.perf_counter()
    _, ids = index.search(normalized(queries), top_k)
    elapsed = time.perf_counter() - start
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return ids, 1000 * elapsed / len(queries)


def recall_at(ids: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k."""
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(ids, exact)]))


def report(count: int, label: str, timings: tuple[float, float, float], recall: float, params: dict) -> None:
    """One result line: build seconds, ms/query, speed-up over exact, recall."""
    build_s, ms, flat_ms = timings
    build = f"build {build_s:7.1f} s" if build_s >= 0 else " " * 15
    print(
        f"{count:>9,} {label:>6} {build}   {ms:8.3f} ms/query   speed-up {flat_ms / ms:6.1f}x"
        f"   recall@10 {recall:.4f}   {params}",
        flush=True,
    )


def sweep(index: faiss.Index, queries: np.ndarray, exact: np.ndarray, *, count: int, flat_ms: float) -> None:
    """Search again with other nprobe / efSearch values: the recall-latency trade-off around the rule."""
    ivf = faiss.try_extract_index_ivf(index)
    knob, values = ("nprobe", (ivf.nprobe // 2, ivf.nprobe * 2)) if ivf else ("efSearch", (32, 128))
    target = ivf if ivf else index.hnsw
    default = getattr(target, knob)
    for value in values:
        setattr(target, knob, value)
        ids, ms = timed_search(index, queries, exact.shape[1])
        report(count, "", (-1, ms, flat_ms), recall_at(ids, exact), {knob: value})
    setattr(target, knob, default)


def bench_size(count: int, args: argparse.Namespace, folder: Path) -> None:
    """Build and search every index type on one synthetic gallery and print a line each."""
    embeddings, queries = synthetic_gallery(count, args)
    exact, flat_ms = None, 0.0
    for index_type in ("flat", *args.types):
        path = folder / f"{index_type}-{count}.faiss"
        start = time.perf_counter()
        info = build_index(embeddings, path, index_type=index_type, force=True)
        build_s = time.perf_counter() - start
        index = load_index(path).index
        ids, ms = timed_search(index, queries, TOP_K)
        if exact is None:
            exact, flat_ms = ids, ms
        report(count, index_type, (build_s, ms, flat_ms), recall_at(ids, exact), info.params)
        if index_type != "flat":
            sweep(index, queries, exact, count=count, flat_ms=flat_ms)
        del index
        for file in folder.glob(f"{index_type}-{count}.faiss*"):
            file.unlink()


def _batch(number: int, vectors: np.ndarray) -> Embeddings:
    """``vectors`` as a batch of new tracklets ``a<number>-<i>``, of the synthetic galleries' (empty) checkpoint."""
    count = len(vectors)
    rows = pd.DataFrame({
        "tracklet_id": [f"a{number}-{i}" for i in range(count)], "pid": np.zeros(count, dtype=np.int64),
        "camid": np.zeros(count, dtype=np.int64), "split": "gallery", "num_frames": np.ones(count, dtype=np.int64),
        "frames": [None] * count, "video": [None] * count,
    })
    return Embeddings(rows=rows, vectors=vectors, info={})


def rewrite_append(embeddings: Embeddings, path: Path) -> None:
    """The append this log replaced: load everything, add, write a whole new gallery (rows and index), rename it in."""
    with writer_lock(path):
        gallery = load_index(path)
        index = gallery.index.merged()
        index.add(normalized(embeddings.vectors))
        rows = pd.concat([gallery.rows, embeddings.rows], ignore_index=True)
        rewritten = path.with_name("rewritten.faiss")  # beside the gallery, which the log appends go on to use
        with atomic_output(rewritten, force=True) as temp, open(temp, "wb") as handle:
            handle.write(_parquet_bytes(_rows_table(rows, path)))
        with atomic_output(rewritten.with_name("rewritten.faissindex"), force=True) as temp:
            faiss.write_index(index, str(temp))


COMPACT_SCRIPT = """
import re, sys, time
from pathlib import Path
from tfclip_cli.index import compact_index
def peak():  # VmHWM starts afresh at exec, where ru_maxrss keeps the forking parent's
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
imported = peak()
start = time.perf_counter()
compact_index(sys.argv[1])
print(time.perf_counter() - start, imported, peak())
"""


def timed_compaction(path: Path) -> tuple[float, float, float]:
    """Seconds of ``compact_index(path)`` run alone in a fresh Python process, and its peak RSS (GiB) after its
    imports and at the end."""
    done = subprocess.run([sys.executable, "-c", COMPACT_SCRIPT, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"compaction of {path} failed:\n{done.stderr}")
    seconds, imported, peak = map(float, done.stdout.split())
    return seconds, imported / 2**20, peak / 2**20  # kB


def bench_appends(count: int, index_type: str, args: argparse.Namespace, folder: Path) -> None:
    """One line: median seconds of an append of ``args.batch`` rows, new and old path; load; compaction."""
    embeddings, queries = synthetic_gallery(count, args)
    path = folder / f"{index_type}-{count}.faiss"
    start = time.perf_counter()
    build_index(embeddings, path, index_type=index_type, force=True)
    build_s = time.perf_counter() - start
    del embeddings
    batches = [synthetic_gallery(args.batch, args)[0].vectors for _ in range(args.repeats)]
    new, old = [], []
    for number, vectors in enumerate(batches):
        start = time.perf_counter()
        append_to_index(_batch(number, vectors), path)
        new.append(time.perf_counter() - start)
        if number < args.old_repeats:
            start = time.perf_counter()
            rewrite_append(_batch(number, vectors), path)
            old.append(time.perf_counter() - start)
    start = time.perf_counter()
    gallery = load_index(path)
    load_s = time.perf_counter() - start
    assert gallery.info.count == count + args.batch * args.repeats, gallery.info.count
    append_to_index(_batch(args.repeats, batches[0]), path)  # what a service sees next: one more record
    start = time.perf_counter()
    refreshed = refresh_index(gallery)
    refresh_s = time.perf_counter() - start
    assert refreshed.info.count == gallery.info.count + args.batch, refreshed.info.count
    del gallery, refreshed
    compact_s, imported_gib, compact_gib = timed_compaction(path)
    print(
        f"{count:>9,} {index_type:>6} build {build_s:7.1f} s   append of {args.batch}: "
        f"log {1000 * statistics.median(new):8.1f} ms (max {1000 * max(new):7.1f})   "
        f"rewrite {1000 * statistics.median(old):9.1f} ms   load with log {load_s:6.2f} s   "
        f"refresh after one more {1000 * refresh_s:6.1f} ms   "
        f"compact {compact_s:6.1f} s, peak RSS {compact_gib:5.2f} GiB ({imported_gib:.2f} after imports)",
        flush=True,
    )
    for file in (*folder.glob(f"{index_type}-{count}.faiss*"), *folder.glob("rewritten.faiss*")):
        file.unlink(missing_ok=True)


class SyntheticVectors:
    """``count`` clustered unit rows [count, dim] (as ``synthetic_vectors``) computed block by block on demand.

    Block ``b`` (``BUILD_CHUNK_ROWS`` rows) comes from its own seeded generator, so every process and every pass
    sees the same rows without any holding them all; slicing is all ``build_index`` needs of its vectors. The
    isotropic noise of a row is drawn from a bank of ``BUILD_CHUNK_ROWS`` noise rows (drawing D normals per row
    would dominate a 1e7-row run on 2 cores); the 32-d latent noise stays per row, so no two rows are equal.
    """

    def __init__(self, count: int, dim: int, latent_dim: int, seed: int):
        rng = np.random.default_rng([seed, 0])
        self.shape, self.ndim, self.dtype, self.seed = (count, dim), 2, np.dtype(np.float32), seed
        self.centres = normalized(rng.standard_normal((max(1, count // ROWS_PER_IDENTITY), latent_dim),
                                                      dtype=np.float32))
        self.rotation = np.linalg.qr(rng.standard_normal((dim, latent_dim)))[0].T.astype(np.float32)
        self.noise_bank = _noise(BUILD_CHUNK_ROWS, dim, ISOTROPIC_NOISE, rng)

    def __len__(self) -> int:
        return self.shape[0]

    def _rows(self, count: int, rng: np.random.Generator) -> np.ndarray:
        latent = self.centres[rng.integers(0, len(self.centres), size=count)]
        latent += _noise(count, self.centres.shape[1], SPREAD, rng)
        return normalized(latent @ self.rotation + self.noise_bank[rng.integers(0, len(self.noise_bank), count)])

    def _block(self, number: int) -> np.ndarray:
        size = min(BUILD_CHUNK_ROWS, self.shape[0] - number * BUILD_CHUNK_ROWS)
        return self._rows(size, np.random.default_rng([self.seed, 1, number]))

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        assert step == 1, "rows are read in slices"
        first, last = start // BUILD_CHUNK_ROWS, max(start, stop - 1) // BUILD_CHUNK_ROWS
        blocks = np.concatenate([self._block(number) for number in range(first, last + 1)])
        offset = first * BUILD_CHUNK_ROWS
        return blocks[start - offset:stop - offset]

    def queries(self, count: int) -> np.ndarray:
        """``count`` query rows of the same identities, drawn apart from the gallery rows."""
        return self._rows(count, np.random.default_rng([self.seed, 2]))


def plain_rows(count: int) -> pd.DataFrame:
    """Manifest rows of ``count`` tracklets t0, t1, ... (what a gallery of folder-layout tracklets holds)."""
    return pd.DataFrame({
        "tracklet_id": [f"t{i}" for i in range(count)], "pid": np.zeros(count, dtype=np.int64),
        "camid": np.zeros(count, dtype=np.int64), "split": "gallery", "num_frames": np.ones(count, dtype=np.int64),
        "frames": [None] * count, "video": [None] * count,
    })


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_gib(field: str = "VmRSS") -> float:
    """This process's resident ``field`` of /proc/self/status (VmRSS; RssAnon: its own memory; RssFile: pages of
    mapped files, which the kernel reads around each page a search touches and can drop again)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 2**20


def build_phase(args: argparse.Namespace) -> dict:
    """In a fresh process: build the gallery; seconds, peak RSS and sizes."""
    vectors = SyntheticVectors(args.count, args.dim, args.latent_dim or args.dim, args.seed)
    embeddings = Embeddings(rows=plain_rows(args.count), vectors=vectors, info={})
    start = time.perf_counter()
    info = build_index(embeddings, args.gallery, index_type=args.type, memory_budget=args.budget, force=True)
    seconds = time.perf_counter() - start
    index_file = gallery_api.index_path(args.gallery, info.generation)
    usage = resource.getrusage(resource.RUSAGE_SELF)  # CPU time: what other programs on the cores do not inflate
    return {"type": info.type, "build_s": seconds, "build_cpu_s": usage.ru_utime + usage.ru_stime,
            "build_peak_rss_gib": peak_rss_gib(), "params": info.params,
            "choice": info.choice, "rows_file_mib": args.gallery.stat().st_size / 2**20,
            "index_file_gib": index_file.stat().st_size / 2**30}


def in_cgroup(folder: Path):
    """A ``preexec_fn`` that moves the new process into the memory cgroup ``folder`` (v1 or v2, made beforehand)
    before it runs Python, so the kernel holds all of it to the cgroup's limit: its own memory and the page cache
    of the files it reads together. The v1 peak and limit-hit counters are reset first (v2's count from the
    cgroup's creation: make a fresh one per run)."""
    for counter in ("memory.max_usage_in_bytes", "memory.failcnt"):
        if (folder / counter).exists():
            (folder / counter).write_text("0")
    return lambda: (folder / "cgroup.procs").write_text(str(os.getpid()))


def cgroup_figures(folder: Path) -> dict:
    """The cgroup's limit, peak usage (GiB) and how often the limit was hit (v1: failcnt; v2: events max)."""
    def read(*names: str) -> str:
        file = next((folder / name for name in names if (folder / name).exists()), None)
        return file.read_text() if file else ""
    limit = read("memory.limit_in_bytes", "memory.max").strip()
    events = dict(line.split() for line in read("memory.events").splitlines())
    return {"cgroup_limit_gib": int(limit) / 2**30 if limit.isdigit() else limit,
            "cgroup_peak_gib": int(read("memory.max_usage_in_bytes", "memory.peak") or 0) / 2**30,
            "cgroup_limit_hits": int(read("memory.failcnt").strip() or events.get("max", 0))}


def serve_phase(args: argparse.Namespace) -> dict:
    """In a fresh process (in ``--serve-cgroup`` when given): open the gallery, search each query alone on one
    thread; times, RSS, found rows."""
    faiss.omp_set_num_threads(1)
    queries = SyntheticVectors(args.count, args.dim, args.latent_dim or args.dim, args.seed).queries(args.queries)
    before = rss_gib()
    start = time.perf_counter()
    gallery = load_index(args.gallery)
    open_s = time.perf_counter() - start
    result = {"open_s": open_s, "rss_after_open_gib": rss_gib() - before, **timed_queries(gallery, queries, "")}
    ivf = faiss.try_extract_index_ivf(gallery.index.base)
    for divisor in (16, 32) if ivf else ():  # fewer lists probed than the rule's nlist / 8: the trade-off
        ivf.nprobe = max(1, ivf.nlist // divisor)
        result |= timed_queries(gallery, queries, f"nprobe{ivf.nprobe}_")
    return {**result, "serve_peak_rss_gib": peak_rss_gib(), "serve_end_rss_anon_gib": rss_gib("RssAnon"),
            "serve_end_rss_file_gib": rss_gib("RssFile"),
            **(cgroup_figures(args.serve_cgroup) if args.serve_cgroup else {})}


def timed_queries(gallery: gallery_api.Gallery, queries: np.ndarray, prefix: str) -> dict:
    """Search each query alone through ``index.search``: p50/p95 ms; the rows found are saved beside the gallery."""
    latencies, cpu, found = [], [], []
    for query in queries:
        start, start_cpu = time.perf_counter(), time.thread_time()
        hits = gallery_api.search(gallery, query[None], TOP_K)[0]
        latencies.append(1000 * (time.perf_counter() - start))
        cpu.append(1000 * (time.thread_time() - start_cpu))  # what other processes on the cores cannot inflate
        found.append([hit.row for hit in hits])
    np.save(gallery.path.with_suffix(f".{prefix}found.npy"), np.array(found))
    return {f"{prefix}p50_ms": float(np.percentile(latencies, 50)),
            f"{prefix}p95_ms": float(np.percentile(latencies, 95)),
            f"{prefix}cpu_p50_ms": float(np.percentile(cpu, 50)), f"{prefix}cpu_p95_ms": float(np.percentile(cpu, 95))}


def exact_top(vectors: SyntheticVectors, queries: np.ndarray) -> np.ndarray:
    """Exact top-``TOP_K`` rows [Q, TOP_K] by inner product, merged block by block."""
    best_scores = np.full((len(queries), TOP_K), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), TOP_K), dtype=np.int64)
    for start in range(0, len(vectors), BUILD_CHUNK_ROWS):
        scores = queries @ vectors[start:start + BUILD_CHUNK_ROWS].T
        rows = np.arange(start, start + scores.shape[1])[None].repeat(len(queries), 0)
        scores, rows = np.hstack([best_scores, scores]), np.hstack([best_rows, rows])
        keep = np.argsort(-scores, axis=1)[:, :TOP_K]
        best_scores, best_rows = np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1)
    return best_rows


def _phase(args: argparse.Namespace, phase: str, index_type: str, gallery: Path) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--count", str(args.count), "--type", index_type,
               "--gallery", str(gallery), "--dim", str(args.dim), "--latent-dim", str(args.latent_dim),
               "--queries", str(args.queries), "--seed", str(args.seed), "--budget", str(args.budget),
               *(["--serve-cgroup", str(args.serve_cgroup)] if args.serve_cgroup else [])]
    joining = in_cgroup(args.serve_cgroup) if args.serve_cgroup and phase == "serve" else None
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True,  # its log goes to our stderr
                          preexec_fn=joining)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_scale(count: int, args: argparse.Namespace, folder: Path) -> None:
    """Build and serve each ``--scale-types`` type of ``count`` rows in fresh processes; one JSON line each."""
    args.count = count
    vectors, exact = SyntheticVectors(count, args.dim, args.latent_dim or args.dim, args.seed), None
    for index_type in args.scale_types:
        gallery = folder / f"{index_type}-{count}.gallery"
        saved = gallery.with_name(gallery.name + ".build.json")  # what the build measured, for --reuse
        if args.reuse and saved.exists():
            built = json.loads(saved.read_text())
        else:
            built = _phase(args, "build", index_type, gallery)
            saved.write_text(json.dumps(built))
        print(json.dumps({"count": count, **built}), flush=True)
        served = _phase(args, "serve", index_type, gallery)
        if exact is None:
            start = time.perf_counter()
            exact = exact_top(vectors, vectors.queries(args.queries))
            print(f"exact top-{TOP_K} of {args.queries} queries over {count:,} rows: "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
        for found in sorted(folder.glob(f"{gallery.stem}.*found.npy")):
            served[found.name.split(".")[-2].replace("found", "recall@10")] = recall_at(np.load(found), exact)
            found.unlink()
        print(json.dumps({"count": count, "dim": args.dim, **built, **served}), flush=True)
        for file in () if args.keep else folder.glob(f"{gallery.name}*"):
            file.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="gallery sizes")
    parser.add_argument("--types", nargs="+", default=["ivfpq", "hnsw"], choices=["ivfpq", "hnsw"],
                        help="approximate index types to compare with exact flat search")
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension (float32)")
    parser.add_argument("--latent-dim", type=int, default=32, help="intrinsic dimension; 0 = isotropic")
    parser.add_argument("--queries", type=int, default=1000, help="queries per batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--appends", action="store_true",
                        help="time appends (log vs whole rewrite), load and compaction of flat and ivfpq galleries")
    parser.add_argument("--batch", type=int, default=100, help="--appends: tracklets per append")
    parser.add_argument("--repeats", type=int, default=5, help="--appends: appends through the log per gallery")
    parser.add_argument("--old-repeats", type=int, default=2, help="--appends: whole rewrites per gallery")
    parser.add_argument("--scale", type=lambda text: [int(float(size)) for size in text.split(",")],
                        help="comma-separated gallery sizes (e.g. 1e6,1e7) for the build/serve/memory benchmark")
    parser.add_argument("--scale-types", nargs="+", default=["auto"],
                        choices=["auto", *gallery_api.RESCORE_BYTES, "flat", "hnsw"], help="types for --scale")
    parser.add_argument("--budget", type=gallery_api.parse_memory_budget, default=gallery_api.DEFAULT_MEMORY_BUDGET,
                        help="--memory-budget of --scale-types auto (e.g. 8GiB)")
    parser.add_argument("--phase", choices=["build", "serve"], help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--type", help=argparse.SUPPRESS)
    parser.add_argument("--gallery", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help="where --scale writes its galleries (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="--scale: keep the galleries in --folder")
    parser.add_argument("--reuse", action="store_true",
                        help="--scale: serve the galleries a --keep run left in --folder (its build figures)")
    parser.add_argument("--serve-cgroup", type=Path,
                        help="--scale: serve inside this memory cgroup, made beforehand (e.g. "
                             "/sys/fs/cgroup/memory/g4 with memory.limit_in_bytes 4G); report its peak usage")
    args = parser.parse_args()
    if (args.keep or args.reuse) and args.folder is None:
        parser.error("--keep and --reuse need --folder")
    args.keep |= args.reuse
    if args.phase:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        print(json.dumps((build_phase if args.phase == "build" else serve_phase)(args)), flush=True)
        return
    if args.scale:
        if args.dim == 256 and "--dim" not in sys.argv:
            args.dim = 512  # the real feature width (ViT-B/16)
        with (contextlib.nullcontext(args.folder) if args.keep else tempfile.TemporaryDirectory(dir=args.folder)
              ) as folder:
            for count in args.scale:
                bench_scale(count, args, Path(folder))
        return
    if args.appends:
        print(f"appends of {args.batch} synthetic clustered {args.dim}-d tracklets; faiss on {os.cpu_count()} cores")
        with tempfile.TemporaryDirectory() as folder:
            for count in args.sizes:
                for index_type in ("flat", "ivfpq"):
                    bench_appends(count, index_type, args, Path(folder))
        print(f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
        return
    print(
        f"synthetic clustered embeddings: {args.dim}-d float32 (latent dim {args.latent_dim or 'isotropic'}), "
        f"{ROWS_PER_IDENTITY} rows per identity, "
        f"{args.queries} queries searched on 1 thread; builds use {os.cpu_count()} cores"
    )
    with tempfile.TemporaryDirectory() as folder:
        for count in args.sizes:
            bench_size(count, args, Path(folder))


if __name__ == "__main__":
    main()
