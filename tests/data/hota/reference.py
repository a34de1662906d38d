"""Draw the small camera networks of tests/test_footage_hota.py and score them with TrackEval, by hand.

Not part of tfclip and never imported by it or by the tests: run it in a separate environment holding numpy, scipy
and a TrackEval source tree (JonathonLuiten/TrackEval), e.g.

    python3 -m venv /tmp/trackeval-venv && /tmp/trackeval-venv/bin/pip install "numpy<2" scipy
    /tmp/trackeval-venv/bin/python tests/data/hota/reference.py /tmp/trackeval-src

It (re)writes ``<case>.gt.txt`` and ``<case>.result.txt`` beside itself (AI City layout, two cameras each) and
prints, per case, TrackEval's HOTA, DetA, AssA (means over its 19 thresholds), IDF1 (Identity) and MOTA and IDSW
(CLEAR) of each camera and of the network as one sequence, as the Python literal the test holds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CASES = {  # name: (seed, people, frames, box noise as a share of the size, miss rate, false positives per frame,
    #               identity change rate per box, share of people whose track keeps its id in the next camera)
    "steady": (1, 4, 24, 0.03, 0.05, 0.1, 0.02, 0.75),
    "crowded": (2, 6, 20, 0.08, 0.15, 0.3, 0.05, 0.5),
    "fragmented": (3, 5, 30, 0.15, 0.25, 0.5, 0.12, 0.25),
}


def grid(values: np.ndarray) -> np.ndarray:
    """Round to quarter pixels: exact in float32, so both implementations see the same boxes."""
    return np.round(np.asarray(values) * 4) / 4


def draw(seed: int, people: int, frames: int, noise: float, miss: float, false_rate: float, change: float,
         keep: float) -> tuple[list[tuple], list[tuple]]:
    """Ground truth and tracker rows ``(camera, id, frame, x, y, w, h)`` of a two-camera network."""
    rng = np.random.default_rng(seed)
    truth, result = [], []
    next_id = 100
    track_of = {}
    for camera in (1, 2):
        for person in range(1, people + 1):
            if camera == 2 and rng.random() > keep:  # the tracker fails to carry this person's id over
                track_of[person] = next_id
                next_id += 1
            else:
                track_of.setdefault(person, person)
        for person in range(1, people + 1):
            first = int(rng.integers(1, frames // 2))
            last = int(rng.integers(first + frames // 4, frames + 1))
            start = rng.uniform([0, 0], [200, 100])
            step = rng.uniform(-4, 4, size=2)
            size = rng.uniform([20, 50], [40, 100])
            for frame in range(first, last + 1):
                x, y = start + step * (frame - first)
                box = grid([x, y, *size])
                truth.append((camera, person, frame, *box))
                if rng.random() < change:
                    other = int(rng.integers(1, people + 1))
                    if other != person and rng.random() < 0.5:  # swap identities with another person
                        track_of[person], track_of[other] = track_of[other], track_of[person]
                    else:  # a fresh id: the track breaks
                        track_of[person] = next_id
                        next_id += 1
                if rng.random() < miss:
                    continue
                jitter = rng.normal(0, noise, size=4) * np.array([size[0], size[1], size[0], size[1]])
                result.append((camera, track_of[person], frame, *grid(box + jitter)))
        for frame in range(1, frames + 1):
            for _ in range(rng.poisson(false_rate)):
                result.append((camera, next_id, frame, *grid(rng.uniform([0, 0, 20, 50], [200, 100, 40, 100]))))
                next_id += 1
    return truth, dedupe(result)


def dedupe(rows: list[tuple]) -> list[tuple]:
    """At most one box per (camera, id, frame): a swap can hand one id to two people for a frame."""
    seen, kept = set(), []
    for row in rows:
        if row[:3] not in seen:
            seen.add(row[:3])
            kept.append(row)
    return kept


def write(rows: list[tuple], path: Path) -> None:
    rows = sorted(rows, key=lambda r: (r[0], r[2], r[1]))
    path.write_text("".join(f"{c} {i} {f} {x:g} {y:g} {w:g} {h:g} -1 -1\n" for c, i, f, x, y, w, h in rows))


def read(path: Path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2)[:, :7]


def sequence(truth: np.ndarray, result: np.ndarray, box_ious) -> dict:
    """TrackEval's per-sequence data: contiguous ids per timestep and IoU similarity, frames 1..last."""
    last = int(max(truth[:, 2].max(), result[:, 2].max()))
    _, gt_ids = np.unique(truth[:, 1], return_inverse=True)
    _, tr_ids = np.unique(result[:, 1], return_inverse=True)
    data = {"gt_ids": [], "tracker_ids": [], "similarity_scores": [], "num_timesteps": last,
            "num_gt_dets": len(truth), "num_tracker_dets": len(result),
            "num_gt_ids": int(gt_ids.max()) + 1, "num_tracker_ids": int(tr_ids.max()) + 1}
    for frame in range(1, last + 1):
        g, t = truth[:, 2] == frame, result[:, 2] == frame
        data["gt_ids"].append(gt_ids[g])
        data["tracker_ids"].append(tr_ids[t])
        data["similarity_scores"].append(box_ious(truth[g, 3:7], result[t, 3:7], box_format="xywh"))
    return data


def joined(rows: np.ndarray, frames_before: dict[int, int]) -> np.ndarray:
    """Every camera's frames one after another: camera 2's frame f becomes frames_before[2] + f."""
    rows = rows.copy()
    rows[:, 2] += np.array([frames_before[int(c)] for c in rows[:, 0]])
    return rows


def score(data: dict, metrics) -> dict:
    hota, clear, identity = (m.eval_sequence(data) for m in metrics)
    return {"hota": float(np.mean(hota["HOTA"])), "deta": float(np.mean(hota["DetA"])),
            "assa": float(np.mean(hota["AssA"])), "idf1": float(identity["IDF1"]), "mota": float(clear["MOTA"]),
            "id_switches": int(clear["IDSW"])}


def main(trackeval_source: str) -> None:
    sys.path.insert(0, trackeval_source)
    for alias, kind in (("float", float), ("int", int), ("bool", bool)):  # TrackEval spells the aliases that
        if alias not in np.__dict__:  # numpy 1.24 removed: np.float, np.int, np.bool
            setattr(np, alias, kind)
    from trackeval.datasets._base_dataset import _BaseDataset
    from trackeval.metrics import CLEAR, HOTA, Identity

    metrics = (HOTA(), CLEAR({"PRINT_CONFIG": False}), Identity({"PRINT_CONFIG": False}))
    expected = {}
    for name, parameters in CASES.items():
        truth_rows, result_rows = draw(*parameters)
        write(truth_rows, HERE / f"{name}.gt.txt")
        write(result_rows, HERE / f"{name}.result.txt")
        truth, result = read(HERE / f"{name}.gt.txt"), read(HERE / f"{name}.result.txt")
        case = {}
        for camera in (1, 2):
            case[camera] = score(sequence(truth[truth[:, 0] == camera], result[result[:, 0] == camera],
                                          _BaseDataset._calculate_box_ious), metrics)
        first_length = int(max(truth[truth[:, 0] == 1, 2].max(), result[result[:, 0] == 1, 2].max()))
        frames_before = {1: 0, 2: first_length}
        case["network"] = score(sequence(joined(truth, frames_before), joined(result, frames_before),
                                         _BaseDataset._calculate_box_ious), metrics)
        expected[name] = case
    print(repr(expected))


if __name__ == "__main__":
    main(sys.argv[1])
