"""The paper's component study and temporal-fusion study, at toy scale: the tiny config on the synthetic data.

Every row takes the ``model`` and ``loss`` keys of its recipe in ``recipes/ablations/`` (the switches: ``loss.v2m``,
``model.ssp_layers``, ``model.temporal``) and sets them over ``recipes/synthetic-tiny.yaml``; each row is trained
with 3 seeds (``run.seed`` 1, 2, 3) on the embedded synthetic dataset, drawn small for a shared 2-core machine
(``--identities`` 36 by default: 18 train, 18 test, 3 cameras, one 8-16-frame tracklet per camera, drawn at the
64x32 the tiny config reads, no videos; 2 distractors). Data loading runs in the training process
(``data.workers`` 0) and torch on one thread. The table at the end is ``tfclip compare`` of
the runs (groups of seeds as mean ± std). Finished runs are kept and stopped ones resumed, so running it again
continues where it stopped, and only prints the table once all are done.

Run: ``OMP_NUM_THREADS=1 nice -n 10 timeout 2700 python benchmarks/bench_ablations.py --out runs/ablations``
(100 epochs, 300 optimiser steps per run: 29 minutes for the 18 runs on the shared 2-core machine)
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import yaml

from tfclip_cli.compare import compare_runs, markdown_table, read_run
from tfclip_cli.datasets import prepare
from tfclip_cli.datasets.synthetic import SyntheticOptions
from tfclip_cli.recipe import load_recipe
from tfclip_cli.tables import write_manifest
from tfclip_cli.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "synthetic-tiny.yaml"
ABLATIONS = ROOT / "recipes" / "ablations"
# row name -> the ablation recipe whose switches it uses (the temporal study's "mean" row is ssp.yaml, its "tmd"
# row full.yaml)
COMPONENT_STUDY = ("baseline", "memory-fixed", "ssp", "tmd", "full")
TEMPORAL_STUDY = ("ssp", "full", "temporal-attention")
SEEDS = (1, 2, 3)


def switches(name: str) -> list[str]:
    """The ``model.*`` and ``loss.*`` keys an ablation recipe sets, as ``--set`` overrides."""
    raw = yaml.safe_load((ABLATIONS / f"{name}.yaml").read_text())
    return [f"{section}.{key}={value}" for section in ("model", "loss") for key, value in raw.get(section, {}).items()]


def run_dir(out: Path, name: str, seed: int) -> Path:
    return out / f"{name}-seed{seed}"


def train_row(out: Path, manifest: Path, name: str, seed: int, *, epochs: int) -> None:
    """Train one row with one seed; a finished run is kept, a stopped one resumed."""
    folder = run_dir(out, name, seed)
    is_started = (folder / "last.ckpt").exists()
    if is_started and read_run(folder).is_finished:
        return
    overrides = [f"data.manifest={manifest}", f"run.output_dir={folder}", f"run.seed={seed}", "data.workers=0",
                 f"solver.epochs={epochs}", f"solver.milestones=[{max(1, epochs * 3 // 4)}]",
                 f"eval.every={max(1, epochs // 2)}", *switches(name)]
    started = time.perf_counter()
    train(load_recipe(TINY, overrides), resume=is_started)
    print(f"{folder.name}: {time.perf_counter() - started:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "ablations")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--identities", type=int, default=36)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    manifest = args.out / "synthetic.parquet"
    if not manifest.exists():
        args.out.mkdir(parents=True, exist_ok=True)
        options = SyntheticOptions(identities=args.identities, distractors=2, image_size=(64, 32), min_frames=8,
                                   max_frames=16, video_fraction=0.0)
        write_manifest(prepare("synthetic", args.out / "synthetic", synthetic=options), manifest)
    for seed in SEEDS:  # seed by seed, so a study cut short still has every row
        for name in dict.fromkeys(COMPONENT_STUDY + TEMPORAL_STUDY):
            train_row(args.out, manifest, name, seed, epochs=args.epochs)
    for title, rows in (("component study", COMPONENT_STUDY), ("temporal-fusion study", TEMPORAL_STUDY)):
        runs = [run_dir(args.out, name, seed) for name in rows for seed in SEEDS]
        print(f"\n{title} ({args.epochs} epochs, {args.identities} identities, seeds "
              f"{', '.join(map(str, SEEDS))}):\n")
        print(markdown_table(compare_runs(runs)))


if __name__ == "__main__":
    main()
