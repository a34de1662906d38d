"""How far plain colour statistics get on the synthetic dataset: the floor the trained model must clear by far.

Each query and gallery tracklet becomes a colour histogram (8×8×8 bins, in RGB or HSV) averaged over all its frames,
L2-normalised; queries are ranked by cosine similarity with ``tfclip_cli.evaluate.evaluate`` under the manifest's
gallery rule (the synthetic dataset's is ``gallery_only``). Identity colours come from a small shared palette and
every camera has its own background, colour cast and illumination, so this baseline should stay near chance.

    python benchmarks/colour_histogram_baseline.py                  # draws the default synthetic dataset
    python benchmarks/colour_histogram_baseline.py --manifest M.parquet
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tfclip_cli.clips import read_frames
from tfclip_cli.datasets import prepare
from tfclip_cli.datasets.synthetic import SyntheticOptions
from tfclip_cli.evaluate import evaluate
from tfclip_cli.tables import Embeddings, Manifest, Tracklet, read_manifest

BINS = 8
SPACES = ("rgb", "hsv")


def colour_histogram(frames: np.ndarray, space: str) -> np.ndarray:
    """The BINS³ colour histogram of uint8 frames ``[T, H, W, 3]``, averaged over frames, L2-normalised."""
    if space == "hsv":
        frames = np.stack([np.asarray(Image.fromarray(frame).convert("HSV")) for frame in frames])
    levels = frames.astype(np.int64) * BINS // 256
    cells = (levels[..., 0] * BINS + levels[..., 1]) * BINS + levels[..., 2]
    histogram = np.bincount(cells.reshape(-1), minlength=BINS**3).astype(np.float32) / len(frames)
    return histogram / np.linalg.norm(histogram)


def describe(tracklets: list[Tracklet]) -> dict[str, np.ndarray]:
    """Per colour space, the histograms ``[N, BINS³]`` of the tracklets (every frame decoded once)."""
    found: dict[str, list[np.ndarray]] = {space: [] for space in SPACES}
    for tracklet in tracklets:
        frames = read_frames(tracklet, range(tracklet.num_frames)).permute(0, 2, 3, 1).numpy()
        for space in SPACES:
            found[space].append(colour_histogram(frames, space))
    return {space: np.stack(vectors) for space, vectors in found.items()}


def load_manifest(args: argparse.Namespace, workdir: Path) -> Manifest:
    """The given manifest, or the default synthetic dataset drawn into ``workdir``."""
    if args.manifest is not None:
        return read_manifest(args.manifest)
    start = time.perf_counter()
    manifest = prepare("synthetic", workdir / "synthetic", synthetic=SyntheticOptions(seed=args.seed))
    print(f"drew the default synthetic dataset in {time.perf_counter() - start:.1f} s")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, help="a prepared manifest (default: draw the synthetic dataset)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn synthetic dataset")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        manifest = load_manifest(args, Path(workdir))
        table = manifest.table
        rows = table[table["split"].isin(["query", "gallery"])].reset_index(drop=True)
        tracklets = Manifest(table=rows, info=manifest.info).tracklets()
        vectors = describe(tracklets)
    queries, gallery = int((rows["split"] == "query").sum()), int((rows["split"] == "gallery").sum())
    print(f"{manifest.info.dataset}: {queries} queries, {gallery} gallery tracklets, rule {manifest.info.gallery_rule}")
    for space in SPACES:
        embeddings = Embeddings(rows=rows, vectors=vectors[space], info={"gallery_rule": manifest.info.gallery_rule})
        result = evaluate(embeddings)
        print(f"{space} histogram: mAP {100 * result.mAP:.1f}  rank-1 {100 * result.rank1:.1f}  "
              f"rank-5 {100 * result.rank5:.1f}")
    print(f"random vectors (mean of 20 draws): mAP {100 * random_map(rows, manifest.info.gallery_rule):.1f}")


def random_map(rows, gallery_rule: str) -> float:
    """mAP of random 64-d embeddings, averaged over 20 draws: the chance level of this query/gallery set."""
    rng = np.random.default_rng(0)
    scores = [
        evaluate(Embeddings(rows=rows, vectors=rng.standard_normal((len(rows), 64), dtype=np.float32),
                            info={"gallery_rule": gallery_rule})).mAP
        for _ in range(20)
    ]
    return float(np.mean(scores))


if __name__ == "__main__":
    main()
