"""``tfclip demo``: the whole pipeline on the embedded synthetic dataset, through the same API as the commands.

The demo folder ``DIR`` receives, one step after another (each logged, each reused by ``--resume`` once done):

1. ``data/`` (the synthetic dataset, drawn by ``datasets.prepare("synthetic")``) and ``manifest.parquet``;
2. ``initial.ckpt``, the model the run starts from (``train.memory.initial_model``: same config, same seeded
   init), then ``run/`` (memory.pt, last.ckpt, best.ckpt, metrics.csv), the bundled ``synthetic-tiny`` recipe
   trained by ``train.train`` with :data:`TRAINING_OVERRIDES`;
3. ``before.parquet`` and ``after.parquet``: query and gallery embeddings of ``initial.ckpt`` and ``best.ckpt``
   (``inference.extract_to_file``), scored by ``evaluate.evaluate`` on the held-out identities;
4. ``gallery.faiss`` (``index.build_index``, flat) over the gallery rows of ``after.parquet``, searched with one
   held-out query video (``index.query``);
5. ``footage/``: a small synthetic camera network (``datasets.synthetic_footage``: ``scene/`` with its videos,
   ground truth and camera graph), tracked camera by camera through the footage pipeline (``footage.tracklets``,
   ``tracked/`` and ``tracked.parquet``), embedded with ``best.ckpt`` (``embeddings.parquet``), indexed
   (``gallery.faiss``) and linked into people with the camera graph (``people.link``, its default threshold:
   ``people.parquet``, the person ids also written into the gallery's rows); then one walker, as one camera saw
   them (the ground-truth crops of their first visit), is searched for (``people.answer``), and the person of the
   best hit is shown with their timeline over every camera. The footage is tracked with :data:`FOOTAGE_DETECTOR`;
6. ``report.html`` (``report.demo``: metrics, training curves, CMC curve, the query's ranked hits, and the
   walker's hits and timeline across cameras).

``demo.json`` records which plan (default or quick) the folder was started with, so ``--resume`` cannot mix them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import torch

from tfclip_cli import __version__, datasets
from tfclip_cli.checkpoint import Checkpoint, save_checkpoint
from tfclip_cli.datasets.synthetic import SyntheticOptions
from tfclip_cli.datasets.synthetic_footage import CAMERA_GRAPH, FootageOptions, camera_video
from tfclip_cli.errors import DataError, UserError
from tfclip_cli.evaluate import EvalResult, evaluate
from tfclip_cli.footage.tracklets import TrackOptions, track_videos
from tfclip_cli.index import QueryResult, SearchOptions, build_index, gallery_files, lock_path, query
from tfclip_cli.inference import extract_to_file, label_map, process_device
from tfclip_cli.people.answer import PeopleAnswer, query_people
from tfclip_cli.people.link import LinkRequest, LinkSummary, link_file
from tfclip_cli.people.timeline import Person, build_people
from tfclip_cli.recipe import BUNDLED_RECIPES, Recipe, load_recipe, recipe_to_dict
from tfclip_cli.tables import (
    Embeddings,
    Manifest,
    Tracklet,
    atomic_output,
    read_embeddings,
    read_manifest,
    write_manifest,
)
from tfclip_cli.train import TrainResult, initial_model, model_config, train

logger = logging.getLogger(__name__)

RECIPE = BUNDLED_RECIPES / "synthetic-tiny.yaml"
STEPS = 6
IfExists = Literal["refuse", "force", "resume"]
TOP_K = 5
EVAL_SAMPLING = "dense"  # every clip of a tracklet averaged: the paper's protocol, cheap on the small test split

TRAINING_OVERRIDES: dict[str, object] = {
    "data.image_size": [64, 32],  # 4x2 patches: twice the clips/s of 128x64, and no less learned per epoch
    "data.num_ids": 8,  # P×K = 8×4 clips per batch: enough positives and negatives for batch-hard triplets
    "data.num_instances": 4,
    "data.erase_p": 0.0,  # without erasing (and at lr 1e-3) the from-scratch model learns much faster here
    "model.sie": False,  # the query video of step 4 has no camera: train without camera embeddings
    "model.embedding": "after_bn",  # BN(CLS) + BN(projected CLS), the features the ID losses shape directly
    "loss.id": 1.0,  # from scratch the identity loss carries the learning (0.25 only fine-tunes CLIP)
    "solver.base_lr": 1.0e-3,
    "solver.warmup_epochs": 2,
    "eval.every": 0,  # evaluate (and write best.ckpt) after the last epoch only: the demo scores it itself
}


FOOTAGE_DETECTOR = "gt"
"""How the demo's footage is tracked: the ground truth replayed with a detector's faults (misses, more of them
behind a nearer walker; false alarms; jittered boxes; ``footage.replay``). The bundled detectors find too few of
the drawn walkers to follow anyone: on ``benchmarks/bench_detect_walkers.py``'s networks SSDLite finds 4% of them,
HOG 14% (at 9% precision). The demo says so when it runs."""
QUERY_DETECTOR = "auto"  # tells the query crops from footage (``footage.query.is_person_crop``)


@dataclass(frozen=True)
class DemoPlan:
    """What a demo draws and how long it trains."""

    name: Literal["default", "quick"]
    synthetic: SyntheticOptions
    epochs: int
    milestone: int  # the epoch after which the learning rate drops tenfold
    footage: FootageOptions  # the camera network of step 5

    def overrides(self) -> dict[str, object]:
        """Recipe keys set over the bundled synthetic-tiny recipe (paths aside)."""
        return {**TRAINING_OVERRIDES, "solver.epochs": self.epochs, "solver.milestones": [self.milestone]}


# Tuned on 2 CPU cores: what the model learns carries over to unseen identities with the number of identities it
# trains on (98 train identities reached 53% mAP where 30 identities with twice the tracklets each reached 42%, for
# the same number of training clips), and a second tracklet per camera (more views of each training identity, more
# true matches per query) lifted the quick plan from about 55% mAP (30 epochs) to 76% (36 epochs).
PLANS: dict[str, DemoPlan] = {
    "default": DemoPlan(
        name="default",
        synthetic=SyntheticOptions(identities=140, cameras=3, tracklets_per_camera=2, train_fraction=0.7,
                                   distractors=5, image_size=(128, 64), min_frames=8, max_frames=24, seed=0),
        epochs=60,
        milestone=48,
        footage=FootageOptions(walkers=6, cameras=4, image_size=(192, 256), frames=160, seed=2),
    ),
    "quick": DemoPlan(
        name="quick",
        synthetic=SyntheticOptions(identities=100, cameras=3, tracklets_per_camera=2, train_fraction=0.8,
                                   distractors=4, image_size=(128, 64), min_frames=8, max_frames=16, seed=0),
        epochs=36,
        milestone=30,
        footage=FootageOptions(walkers=5, cameras=3, image_size=(144, 192), frames=120, seed=1),
    ),
}


@dataclass(frozen=True)
class DemoPaths:
    """Where a demo writes, under one folder."""

    root: Path
    plan: Path
    data: Path
    manifest: Path
    initial_checkpoint: Path
    run: Path
    trained_checkpoint: Path
    before: Path
    after: Path
    index: Path
    footage: "FootagePaths"
    report: Path

    @classmethod
    def under(cls, root: Path) -> "DemoPaths":
        root = Path(root).expanduser().resolve()
        run = root / "run"
        return cls(
            root=root, plan=root / "demo.json", data=root / "data", manifest=root / "manifest.parquet",
            initial_checkpoint=root / "initial.ckpt", run=run, trained_checkpoint=run / "best.ckpt",
            before=root / "before.parquet", after=root / "after.parquet", index=root / "gallery.faiss",
            footage=FootagePaths.under(root / "footage"), report=root / "report.html",
        )

    def entries(self) -> set[str]:
        """The names a demo writes directly under ``root`` (its gallery's files as they are on disk)."""
        files = [self.plan, self.data, self.manifest, self.initial_checkpoint, self.run, self.before, self.after,
                 self.index, lock_path(self.index), *gallery_files(self.index), self.footage.root, self.report]
        return {path.name for path in files}


@dataclass(frozen=True)
class FootagePaths:
    """Where step 5 writes, under ``DIR/footage``."""

    root: Path
    scene: Path  # the drawn network: videos, ground truth, cameras.yaml, ground-truth tracklets
    scene_manifest: Path  # its ground-truth tracklets (the query walker comes from here)
    tracked: Path  # tfclip track's output
    tracked_manifest: Path
    embeddings: Path
    index: Path
    people: Path  # the embeddings with a person_id column (tfclip link --out)

    @classmethod
    def under(cls, root: Path) -> "FootagePaths":
        return cls(root=root, scene=root / "scene", scene_manifest=root / "scene.parquet", tracked=root / "tracked",
                   tracked_manifest=root / "tracked.parquet", embeddings=root / "embeddings.parquet",
                   index=root / "gallery.faiss", people=root / "people.parquet")

    @property
    def camera_graph(self) -> Path:
        return self.scene / "footage" / CAMERA_GRAPH


@dataclass(frozen=True)
class FootageDemo:
    """What step 5 found: the network's people, and one walker searched for and followed across cameras."""

    detector: str  # what found the people in the footage (FOOTAGE_DETECTOR)
    tracklets: int  # tracked in all cameras
    link: LinkSummary
    query_tracklet: Tracklet  # one walker as one camera saw them (ground-truth crops; its pid is the truth)
    true_cameras: tuple[int, ...]  # every camera the walker passes through (ground truth)
    answer: PeopleAnswer
    person: Person | None  # the person of the best hit, with their timeline; None when the hit is unlinked

    @property
    def result(self) -> QueryResult:
        (result,) = self.answer.per_query
        return result

    @property
    def is_followed_across_cameras(self) -> bool:
        """Whether the person found holds visits to more than one camera."""
        return self.person is not None and len(self.person.cameras) > 1


@dataclass(frozen=True)
class DemoResult:
    """What a demo measured and wrote."""

    plan: str
    device: str
    before: EvalResult  # the initial model (before training) on the held-out identities
    after: EvalResult  # best.ckpt on the same tracklets
    training: TrainResult
    query_tracklet: Tracklet  # the held-out query video searched in step 4 (its true pid is known)
    query: QueryResult  # its top-5 gallery tracklets
    footage: FootageDemo  # step 5: the camera network, its people, and one walker followed across cameras
    paths: DemoPaths
    timings: dict[str, float]  # seconds each step took in this call, in order (a reused step takes ~0 s)

    @property
    def is_query_found(self) -> bool:
        """Whether the query's identity is among its top hits."""
        return any(hit.pid == self.query_tracklet.pid for hit in self.query.hits)


def run_demo(out: Path, *, quick: bool = False, if_exists: IfExists = "refuse") -> DemoResult:
    """Draw the synthetic dataset, train the tiny TF-CLIP on it, score it before and after training, index the
    gallery and search it with a held-out query video; write everything under ``out``.

    Args:
        quick: the small plan (fewer identities, shorter tracklets, fewer epochs) the test suite runs.
        if_exists: what to do when ``out`` is not empty: refuse, delete an earlier demo (``force``) and start over,
            or continue it (``resume``), reusing every finished step.

    Raises:
        UserError: ``out`` is not empty (refuse), holds files the demo did not write (force), or holds another
            plan's demo (resume).
    """
    plan = PLANS["quick" if quick else "default"]
    paths = DemoPaths.under(out)
    _claim_folder(paths, plan, if_exists=if_exists)
    timings: dict[str, float] = {}
    with _step("data", timings):
        manifest = _ensure_manifest(paths, plan)
    with _step("training", timings):
        recipe = _recipe(paths, plan)
        _ensure_initial_checkpoint(recipe, manifest, paths.initial_checkpoint)
        training = _train(recipe, paths)
    with _step("evaluation", timings):
        before = evaluate(_ensure_embeddings(paths.initial_checkpoint, paths.before, paths, recipe))
        after_embeddings = _ensure_embeddings(paths.trained_checkpoint, paths.after, paths, recipe)
        after = evaluate(after_embeddings)
    with _step("index and query", timings):
        query_tracklet = pick_query(manifest)
        result = _search(after_embeddings, query_tracklet, paths)
    with _step("footage", timings):
        footage = _footage(paths, plan, recipe)
    with _step("report", timings):
        _write_report(paths, before=before, after=after, embeddings=after_embeddings, result=result, footage=footage)
    logger.info("mAP %.1f%% before training, %.1f%% after; wrote %s", 100 * before.mAP, 100 * after.mAP, paths.report)
    return DemoResult(plan=plan.name, device=str(process_device()), before=before, after=after, training=training,
                      query_tracklet=query_tracklet, query=result, footage=footage, paths=paths, timings=timings)


@contextlib.contextmanager
def _step(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Log the start of a demo step and record its duration in ``timings``."""
    logger.info("demo step %d/%d: %s", len(timings) + 1, STEPS, name)
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started


def _claim_folder(paths: DemoPaths, plan: DemoPlan, *, if_exists: IfExists) -> None:
    """Refuse, wipe or accept an existing ``paths.root``, then record the plan in ``demo.json``.

    Raises:
        UserError: as described in :func:`run_demo`.
    """
    root = paths.root
    if root.exists() and not root.is_dir():
        raise UserError(f"--out {root} is a file; expected a folder for the demo", hint="choose another --out")
    found = sorted(p.name for p in root.iterdir()) if root.exists() else []
    if found and if_exists == "refuse":
        raise UserError(f"{root} is not empty ({', '.join(found[:5])})",
                        hint="pass --resume to continue an earlier demo, --force to start over, or another --out")
    foreign = [name for name in found if name not in paths.entries() and not _is_temporary(name)]
    if foreign:
        raise UserError(f"{root} holds files the demo did not write ({', '.join(foreign[:5])}): not touching it",
                        hint="choose another --out")
    if found and if_exists == "resume":
        _check_plan(paths.plan, plan)
    if found and if_exists == "force":
        logger.info("deleting the earlier demo in %s", root)
        shutil.rmtree(root)
    if not paths.plan.exists():
        with atomic_output(paths.plan) as temp:
            temp.write_text(json.dumps({"plan": plan.name, "tfclip_version": __version__}) + "\n")


def _is_temporary(name: str) -> bool:
    """A temporary file or folder left by an interrupted atomic write (``tables.atomic_output``, the generator)."""
    return name.startswith(".") and name.endswith(".tmp")


def _check_plan(path: Path, plan: DemoPlan) -> None:
    """Raises UserError unless ``path`` records ``plan`` (a resumed demo keeps its plan)."""
    try:
        recorded = json.loads(path.read_text())["plan"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path} is missing or unreadable ({exc}): cannot tell which demo to resume",
                        hint="pass --force to start over") from exc
    if recorded != plan.name:
        flag = "with --quick" if recorded == "quick" else "without --quick"
        raise UserError(f"{path.parent} holds a {recorded} demo; this is the {plan.name} one",
                        hint=f"resume it {flag}, or pass --force to start over")


def _ensure_drawn(folder: Path, manifest_path: Path, **options: object) -> Manifest | None:
    """Draw synthetic data into ``folder`` (``datasets.prepare("synthetic", ...)`` with ``options``) and write its
    manifest; None when an earlier run's manifest is there (it is only written once the drawing is whole)."""
    if manifest_path.exists():
        logger.info("reusing %s", manifest_path)
        return None
    if folder.exists():  # drawn, but stopped before the manifest was written: draw again (seconds)
        shutil.rmtree(folder)
    manifest = datasets.prepare("synthetic", folder, **options)
    write_manifest(manifest, manifest_path)
    return manifest


def _ensure_manifest(paths: DemoPaths, plan: DemoPlan) -> Manifest:
    """Draw the dataset and write its manifest, or read the manifest of an earlier run."""
    manifest = _ensure_drawn(paths.data, paths.manifest, synthetic=plan.synthetic)
    if manifest is None:
        return read_manifest(paths.manifest)
    counts = manifest.split_counts()
    logger.info("drew %s tracklets (train %d, query %d, gallery %d)", sum(counts.values()), counts["train"],
                counts["query"], counts["gallery"])
    return manifest


def _recipe(paths: DemoPaths, plan: DemoPlan) -> Recipe:
    """The bundled synthetic-tiny recipe with the plan's overrides, reading the demo's manifest into ``run/``."""
    values = {**plan.overrides(), "data.manifest": str(paths.manifest), "run.output_dir": str(paths.run)}
    # JSON is valid YAML, and quoting keeps paths with spaces or colons intact.
    return load_recipe(RECIPE, [f"{key}={json.dumps(value)}" for key, value in values.items()])


def _ensure_initial_checkpoint(recipe: Recipe, manifest: Manifest, path: Path) -> None:
    """Save the model the run starts from (built by the training engine's own function) as a checkpoint."""
    if path.exists():
        return
    config = model_config(recipe, manifest)
    model = initial_model(recipe, config, torch.device("cpu"))
    checkpoint = Checkpoint(model_config=config.to_dict(), model_state=model.state_dict(),
                            pid_to_label=label_map(manifest.tracklets("train")), recipe=recipe_to_dict(recipe))
    save_checkpoint(checkpoint, path)


def _train(recipe: Recipe, paths: DemoPaths) -> TrainResult:
    """Train, or continue an interrupted run from last.ckpt (a finished run returns at once)."""
    is_resumed = (paths.run / "last.ckpt").exists()
    if is_resumed:
        logger.info("continuing the run in %s", paths.run)
    return train(recipe, resume=is_resumed)


def _ensure_embeddings(checkpoint: Path, out: Path, paths: DemoPaths, recipe: Recipe) -> Embeddings:
    """Query and gallery embeddings of ``checkpoint`` in ``out``, extracted unless an earlier run wrote them."""
    if out.exists():
        logger.info("reusing %s", out)
        return read_embeddings(out)
    extraction = extract_to_file(checkpoint, out, manifest=paths.manifest, sampling=EVAL_SAMPLING,
                                 batch_size=recipe.eval.batch_size, workers=recipe.data.workers)
    return extraction.embeddings


def pick_query(manifest: Manifest) -> Tracklet:
    """The held-out query the demo searches for: the longest query tracklet stored as a video (first by tracklet
    id among equals).

    Raises:
        DataError: when the query split holds no video.
    """
    videos = [t for t in manifest.tracklets("query") if t.is_video]
    if not videos:
        raise DataError("the demo's query split holds no video tracklet", hint="pass --force to draw it again")
    return min(videos, key=lambda t: (-t.num_frames, t.tracklet_id))


def _search(embeddings: Embeddings, query_tracklet: Tracklet, paths: DemoPaths) -> QueryResult:
    """Index the gallery rows (once) and search them with the query video."""
    if not paths.index.exists():
        gallery = embeddings.select((embeddings.rows["split"] == "gallery").to_numpy())
        build_index(gallery, paths.index, index_type="flat")
    options = SearchOptions(top_k=TOP_K, device=process_device(), with_hit_frames=True)
    (result,) = query(paths.index, [Path(query_tracklet.source)], options)
    return result


def _footage(paths: DemoPaths, plan: DemoPlan, recipe: Recipe) -> FootageDemo:
    """Step 5: draw the camera network, track it, embed, index and link its tracklets, and follow one walker."""
    where = paths.footage
    truth = _ensure_scene(where, plan.footage)
    tracked = _ensure_tracked(where, plan.footage)
    if not where.embeddings.exists():
        extract_to_file(paths.trained_checkpoint, where.embeddings, manifest=where.tracked_manifest,
                        sampling=EVAL_SAMPLING, batch_size=recipe.eval.batch_size, workers=recipe.data.workers)
    link = _ensure_people(where)
    walker = pick_walker(truth)
    options = SearchOptions(top_k=TOP_K, device=process_device(), with_hit_frames=True)
    answer = query_people(where.index, [Path(walker.source)], detector=QUERY_DETECTOR, search=options)
    (result,) = answer.per_query
    best = result.hits[0].person if result.hits else None
    true_cameras = sorted({t.camid for t in truth.tracklets() if t.pid == walker.pid})
    footage = FootageDemo(detector=FOOTAGE_DETECTOR, tracklets=len(tracked.table), link=link, query_tracklet=walker,
                          true_cameras=tuple(true_cameras), answer=answer, person=answer.people.get(best))
    logger.info("walker %d (seen by cameras %s) searched from camera %d: %s", walker.pid,
                ", ".join(map(str, true_cameras)), walker.camid,
                "no linked person" if footage.person is None else
                f"person {footage.person.person_id} in cameras {', '.join(map(str, footage.person.cameras))}")
    return footage


def _ensure_scene(where: FootagePaths, options: FootageOptions) -> Manifest:
    """Draw the camera network (ground-truth tracklets in ``scene.parquet``), or read an earlier drawing's."""
    manifest = _ensure_drawn(where.scene, where.scene_manifest, synthetic_footage=options)
    return read_manifest(where.scene_manifest) if manifest is None else manifest


def _ensure_tracked(where: FootagePaths, options: FootageOptions) -> Manifest:
    """Track every camera of the network (``tfclip track``'s API) and prepare the tracklets, unless done."""
    if where.tracked_manifest.exists():
        logger.info("reusing %s", where.tracked_manifest)
        return read_manifest(where.tracked_manifest)
    videos = [camera_video(where.scene, camid) for camid in range(options.cameras)]
    logger.warning("tracking the demo's footage with --detector %s: the ground truth replayed with a detector's "
                   "faults, since the bundled detectors miss most drawn walkers", FOOTAGE_DETECTOR)
    track_videos(videos, where.tracked, options=TrackOptions(detector=FOOTAGE_DETECTOR), force=True)
    manifest = datasets.prepare("footage", where.tracked)
    write_manifest(manifest, where.tracked_manifest)
    return manifest


def _ensure_people(where: FootagePaths) -> LinkSummary:
    """Index the tracked tracklets and link them into people with the network's camera graph (``tfclip link``,
    its default threshold), writing the person ids into the gallery too; or read the people of an earlier run
    (``people.parquet`` is written last)."""
    if where.people.exists():
        logger.info("reusing %s", where.people)
        linked = read_embeddings(where.people)
        how = linked.info["link"]
        return LinkSummary(str(where.people), len(linked.rows), len(linked.rows),
                           tuple(build_people(linked.rows).values()), how["threshold"], how["threshold_from"],
                           how["cameras"], str(where.index), None)
    build_index(read_embeddings(where.embeddings), where.index, index_type="flat", force=True)
    return link_file(LinkRequest(embeddings=where.embeddings, out=where.people, cameras=where.camera_graph,
                                 gallery=where.index, force=True))


def pick_walker(truth: Manifest) -> Tracklet:
    """The walker the demo follows: the query tracklet (a walker's first visit, as one camera saw them) of the
    walker seen by the most cameras, the longest among equals, then the first by tracklet id.

    Raises:
        DataError: when no walker is seen twice (the network holds no query tracklet).
    """
    tracklets = truth.tracklets()
    cameras = {pid: len({t.camid for t in tracklets if t.pid == pid}) for pid in {t.pid for t in tracklets}}
    queries = [t for t in tracklets if t.split == "query"]
    if not queries:
        raise DataError("the demo's camera network has no walker seen twice", hint="pass --force to draw it again")
    return min(queries, key=lambda t: (-cameras[t.pid], -t.num_frames, t.tracklet_id))


def _write_report(paths: DemoPaths, *, before: EvalResult, after: EvalResult, embeddings: Embeddings,
                  result: QueryResult, footage: FootageDemo) -> None:
    """report.html: the metrics, training curves, CMC curve, the query's ranked hits, and the walker's hits and
    timeline across cameras."""
    from tfclip_cli.report.demo import write_demo_report  # matplotlib loads only when the demo draws

    write_demo_report(paths.report, run_dir=paths.run, before=before, after=after, embeddings=embeddings,
                      query=result, footage=footage)
