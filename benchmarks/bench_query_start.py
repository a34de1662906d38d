"""Time to first result of ``tfclip query`` in a fresh process: the checkpoint (PyTorch) against its ``.onnx`` export
(onnxruntime, torch never imported).

The tiny synthetic gallery of ``bench_serve.py`` is drawn and embedded with a random-init checkpoint of
``--backbone``, which is exported to ONNX; then ``python -m tfclip_cli query CLIP --gallery G --json`` runs
``--calls`` times with each model, every call a new process (start Python, import, load the model and the gallery,
decode and embed the clip, search, print), alternating the two so machine load hits both alike. Printed: the median
wall time and the median CPU time (user + system, which other processes on a busy machine do not inflate) of each,
and of a bare ``python -c pass`` for scale.

    python benchmarks/bench_query_start.py                  # tiny model, 5 calls each
    python benchmarks/bench_query_start.py --backbone ViT-B-16 --calls 3
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_serve import build_gallery
from tfclip_cli.export import export_checkpoint


def fresh_call(command: list[str]) -> tuple[float, float]:
    """(wall time, CPU time) in seconds of one fresh process running ``command`` to its end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tfclip-tiny")
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        gallery, clip = build_gallery(Path(folder), args.backbone)
        exported = export_checkpoint(Path(folder) / "model.ckpt", Path(folder) / "model.onnx").path
        query = [sys.executable, "-m", "tfclip_cli", "query", str(clip), "--gallery", str(gallery), "--json"]
        commands = {"torch (checkpoint)": query, "onnx (-c model.onnx)": [*query, "-c", str(exported)],
                    "python -c pass": [sys.executable, "-c", "pass"]}
        for command in commands.values():
            fresh_call(command)  # warm the page cache: every measured call reads the same files
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.calls):
            for name, command in commands.items():
                times[name].append(fresh_call(command))
    print(f"tfclip query, fresh process: {args.backbone}, clip {clip.name}, {args.calls} calls each, "
          f"{os.cpu_count()} CPUs")
    median = {name: np.median(np.array(found), axis=0) for name, found in times.items()}
    for name, (wall, cpu) in median.items():
        print(f"  {name:22s} wall {wall:5.2f} s, CPU {cpu:5.2f} s (medians)")
    torch_times, onnx_times = (median[name] for name in list(commands)[:2])
    print(f"onnx starts {torch_times[0] / onnx_times[0]:.1f}x sooner than torch (wall), "
          f"{torch_times[1] / onnx_times[1]:.1f}x (CPU)")


if __name__ == "__main__":
    main()
