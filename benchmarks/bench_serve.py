"""Query latency of ``tfclip serve`` under a bounded loopback load, next to the ``tfclip query`` CLI, in one run.

A tiny synthetic gallery is drawn, embedded with a random-init checkpoint of ``--backbone`` (speed does not
depend on the weights) and indexed (flat). ``tfclip serve`` is started as a subprocess on a free 127.0.0.1
port; ``--clients`` threads send ``--requests`` ``POST /query`` uploads of the same clip in total, and p50/p95
latency and queries/s are printed. Then ``tfclip query`` runs ``--cli-calls`` times on the same gallery and
clip, each a fresh process (import torch, load the model and the gallery, embed, search): the per-call cost
the service saves.

    python benchmarks/bench_serve.py                               # tiny model, 60 requests from 4 clients
    python benchmarks/bench_serve.py --backbone ViT-B-16 --requests 20 --clients 2
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch

from tfclip_cli.checkpoint import Checkpoint, save_checkpoint
from tfclip_cli.datasets import prepare
from tfclip_cli.datasets.synthetic import SyntheticOptions
from tfclip_cli.index import build_index
from tfclip_cli.inference import extract_to_file
from tfclip_cli.model import ModelConfig, build_model
from tfclip_cli.tables import read_embeddings, write_manifest

DATA = SyntheticOptions(identities=12, cameras=2, distractors=2, image_size=(128, 64), min_frames=16,
                        max_frames=24, video_fraction=1.0, seed=5)


def build_gallery(folder: Path, backbone: str) -> tuple[Path, Path]:
    """A flat gallery of the synthetic gallery split and one query video of it."""
    manifest = prepare("synthetic", folder / "data", synthetic=DATA)
    write_manifest(manifest, folder / "manifest.parquet")
    config = ModelConfig(backbone=backbone, image_size=(128, 64), seq_len=8, num_classes=4, num_cameras=2)
    torch.manual_seed(0)
    save_checkpoint(Checkpoint(model_config=config.to_dict(), model_state=build_model(config).state_dict(),
                               pid_to_label={}, recipe={"data": {"normalization": "imagenet"}}), folder / "model.ckpt")
    extract_to_file(folder / "model.ckpt", folder / "e.parquet", manifest=folder / "manifest.parquet",
                    splits=("gallery",), sampling="rrs", workers=0)
    build_index(read_embeddings(folder / "e.parquet"), folder / "g.faiss")
    return folder / "g.faiss", Path(manifest.tracklets("query")[0].source)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(gallery: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "tfclip_cli", "serve", "--gallery", str(gallery), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("tfclip serve did not answer /health within 120 s")


def load_test(url: str, clip: bytes, *, requests: int, clients: int) -> tuple[np.ndarray, float]:
    """Latencies (s) of ``requests`` queries sent by ``clients`` threads, and the wall time of them all."""

    def one(_: int) -> float:
        started = time.perf_counter()
        response = httpx.post(f"{url}/query", files={"file": ("q.mp4", clip)}, timeout=300)
        response.raise_for_status()
        return time.perf_counter() - started

    one(0)  # warm-up: first-call allocations
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = np.array(list(pool.map(one, range(requests))))
    return latencies, time.perf_counter() - started


def cli_calls(gallery: Path, clip: Path, calls: int) -> np.ndarray:
    """Wall time (s) of ``calls`` fresh ``tfclip query`` processes."""
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tfclip_cli", "query", str(clip), "--gallery", str(gallery), "--json"],
                       check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return np.array(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tfclip-tiny")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--cli-calls", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        gallery, clip = build_gallery(Path(folder), args.backbone)
        port = _free_port()
        server = _start_server(gallery, port)
        try:
            latencies, wall = load_test(f"http://127.0.0.1:{port}", clip.read_bytes(), requests=args.requests,
                                        clients=args.clients)
        finally:
            server.terminate()
            server.wait(timeout=60)
        cli = cli_calls(gallery, clip, args.cli_calls)
    p50, p95 = np.percentile(latencies * 1000, [50, 95])
    print(f"gallery: {args.backbone}, clip {clip.name}; {os.cpu_count()} CPUs")
    print(f"serve: {args.requests} queries from {args.clients} clients: p50 {p50:.0f} ms, p95 {p95:.0f} ms, "
          f"{args.requests / wall:.1f} queries/s")
    print(f"tfclip query CLI: {1000 * np.median(cli):.0f} ms per call (median of {args.cli_calls})")
    print(f"serve p50 is {np.median(cli) * 1000 / p50:.1f}x faster than a CLI call")


if __name__ == "__main__":
    main()
