"""What a training run carries between iterations: running meters, the metrics log, the resumable sampler, the
run state, and its checkpoints (everything needed to continue exactly after a stop)."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from tfclip_cli.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from tfclip_cli.clips import ClipDataset, IdentitySampler
from tfclip_cli.errors import CheckpointError, RecipeError
from tfclip_cli.evaluate import EvalResult
from tfclip_cli.inference import DistContext
from tfclip_cli.losses import LossWeights
from tfclip_cli.model import TFCLIP, ClipMemory, ModelConfig
from tfclip_cli.recipe import Recipe, recipe_to_dict
from tfclip_cli.tables import Manifest, atomic_output

logger = logging.getLogger(__name__)

LOSS_PARTS = ("total", "id", "frame_id", "triplet", "v2m")
EVAL_FIELDS = ("mAP", "rank1", "rank5", "rank10", "rank20", "mINP")
# test_set names the test set of an eval row; elapsed_s (epoch rows) is the run's wall-clock time so far, resumes
# included (time spent stopped excluded)
METRICS_FIELDS = ("kind", "epoch", "iteration", "lr", *LOSS_PARTS, "clips_per_s", "data_share", "test_set",
                  *EVAL_FIELDS, "elapsed_s")


class Meters:
    """Running sums of one epoch's loss parts (on the device, read only at log points) and its timings."""

    def __init__(self, state: dict | None = None) -> None:
        state = state or {}
        self.sums: dict[str, torch.Tensor | float] = dict(state.get("sums", {}))
        self.iterations: int = state.get("iterations", 0)
        self.clips: int = state.get("clips", 0)
        self.step_s: float = state.get("step_s", 0.0)
        self.data_s: float = state.get("data_s", 0.0)

    def add(self, parts: dict[str, torch.Tensor], *, clips: int, step_s: float, data_s: float) -> None:
        for name, value in parts.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.iterations += 1
        self.clips += clips
        self.step_s += step_s
        self.data_s += data_s

    def means(self) -> dict[str, float]:
        return {name: float(total) / max(1, self.iterations) for name, total in self.sums.items()}

    def speed(self) -> tuple[float, float]:
        """(clips per second, share of the step time spent waiting for data)."""
        return self.clips / max(self.step_s, 1e-9), self.data_s / max(self.step_s, 1e-9)

    def state(self) -> dict:
        """Plain values for a checkpoint (a resumed epoch reports the mean over all of its iterations)."""
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "iterations": self.iterations,
                "clips": self.clips, "step_s": self.step_s, "data_s": self.data_s}


class MetricsLog:
    """Rows appended to ``metrics.csv`` (and TensorBoard events when ``tensorboard`` is installed); rank 0 only."""

    def __init__(self, run_dir: Path) -> None:
        self._path = run_dir / "metrics.csv"
        is_new = not self._path.exists()
        self._open()
        if is_new:
            self._csv.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._board = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            self._board = None

    def _open(self) -> None:
        self._file = self._path.open("a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=METRICS_FIELDS)

    def cut_back(self, next_epoch: int, next_iteration: int) -> None:
        """Keep only the rows a run stopped at (``next_epoch``, ``next_iteration``) had written: those of a kill after
        the checkpoint go, so a resumed log equals an uninterrupted one (a fresh run, (1, 0), keeps none)."""
        self._file.close()
        with self._path.open(newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if _is_before(row, next_epoch, next_iteration)]
        with atomic_output(self._path, force=True) as temp, temp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRICS_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self._open()

    def write(self, row: dict, *, step: int) -> None:
        self._csv.writerow({key: _format(value) for key, value in row.items()})
        self._file.flush()
        if self._board is not None:
            group = "/".join(filter(None, (row["kind"], row.get("test_set"))))  # eval/<test set>/mAP
            for key, value in row.items():
                if isinstance(value, float):
                    self._board.add_scalar(f"{group}/{key}", value, step)

    def close(self) -> None:
        self._file.close()
        if self._board is not None:
            self._board.close()


def _is_before(row: dict, next_epoch: int, next_iteration: int) -> bool:
    """Whether a metrics row was written before the position (``next_epoch``, ``next_iteration``); a row cut short by
    a kill is not."""
    try:
        epoch = int(row["epoch"])
        if epoch < next_epoch:
            return True
        return epoch == next_epoch and row["kind"] == "iteration" and int(row["iteration"]) <= next_iteration
    except (TypeError, ValueError):
        return False


def _format(value: object) -> object:
    return f"{value:.6g}" if isinstance(value, float) else value


class ResumableSampler(torch.utils.data.Sampler):
    """The P×K batch sampler, able to start an epoch after its first ``skip`` batches (a mid-epoch resume)."""

    def __init__(self, sampler: IdentitySampler) -> None:
        super().__init__()
        self.sampler = sampler
        self.skip = 0

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


@dataclass
class RunState:
    """Everything the epoch loop touches; mutable (position, best result, stop request)."""

    recipe: Recipe
    context: DistContext
    model: TFCLIP  # the bare model (evaluation, checkpoints)
    engine: nn.Module  # the model under DistributedDataParallel, or the model itself
    memory: ClipMemory | None  # None when the recipe trains without a CLIP-Memory (loss.v2m 0)
    pid_to_label: dict[int, int]  # train pid -> classifier label (the memory's rows when there is one)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None
    dataset: ClipDataset
    sampler: ResumableSampler
    loader: torch.utils.data.DataLoader
    manifest: Manifest
    test_sets: dict[str, Manifest]  # what each evaluation scores, by name: the manifest's own, then eval.manifests
    metrics: MetricsLog | None
    next_epoch: int = 1
    next_iteration: int = 0  # batches of ``next_epoch`` already done (after a Ctrl-C)
    meters: Meters = dataclasses.field(default_factory=Meters)
    best_epoch: int | None = None
    best: EvalResult | None = None
    stop_requested: bool = False
    stop_signal: int = 0  # the signal that asked to stop (SIGINT or SIGTERM); 0 when another rank asked
    elapsed_before: float = 0.0  # wall-clock seconds of the run before this process took over (resumes)
    started_at: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def run_dir(self) -> Path:
        return self.recipe.run.output_dir

    @property
    def elapsed_s(self) -> float:
        """Wall-clock seconds of the whole run so far, earlier processes of a resumed run included."""
        return self.elapsed_before + time.perf_counter() - self.started_at

    @property
    def loss_weights(self) -> LossWeights:
        loss = self.recipe.loss
        return LossWeights(id=loss.id, triplet=loss.triplet, v2m=loss.v2m)


# ------------------------------------------------------------------------------------------------- checkpoints


def _checkpoint(run: RunState, *, is_resumable: bool) -> Checkpoint:
    """The model, recipe, pid mapping and memory; plus, when resumable, everything needed to continue exactly."""
    training_state = None
    if is_resumable:
        training_state = {
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if run.context.device.type == "cuda" else [],
            "next_epoch": run.next_epoch,
            "next_iteration": run.next_iteration,
            "meters": run.meters.state(),
            "best_epoch": run.best_epoch,
            "best": dataclasses.asdict(run.best) if run.best is not None else None,
            "elapsed_s": run.elapsed_s,
        }
    return Checkpoint(
        model_config=run.model.config.to_dict(),
        model_state=run.model.state_dict(),
        pid_to_label=dict(run.pid_to_label),
        memory=run.memory.features.cpu() if run.memory is not None else None,
        recipe=recipe_to_dict(run.recipe),
        training_state=training_state,
    )


def restore(run: RunState, path: Path) -> None:
    """Continue from ``last.ckpt``: weights, optimiser, schedule, scaler, RNG, position and best result.

    Raises:
        CheckpointError: when the file is not resumable or was made for another model.
    """
    checkpoint = load_checkpoint(path)
    state = checkpoint.training_state
    if state is None:
        raise CheckpointError(f"{path} holds no training state; expected a last.ckpt written by tfclip train")
    if _stored_config(checkpoint.model_config) != run.model.config:
        raise CheckpointError(
            f"{path} was trained with model config {checkpoint.model_config}; this recipe gives "
            f"{run.model.config.to_dict()}", hint="resume with the recipe.yaml saved in the run directory")
    try:
        _restore_state(run, checkpoint.model_state, state)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:  # a damaged or foreign training state
        raise CheckpointError(f"{path}: the training state is incomplete or does not fit this run "
                              f"({type(error).__name__}: {error})".splitlines()[0],
                              hint="start the run again without --resume, or in another run.output_dir") from error
    logger.info("resumed from %s at epoch %d, iteration %d", path, run.next_epoch, run.next_iteration)


def _stored_config(values: dict) -> ModelConfig | None:
    """A checkpoint's model config, keys added since it was written taking their defaults; None if invalid."""
    try:
        return ModelConfig.from_dict(values)
    except (TypeError, RecipeError):
        return None


def _restore_state(run: RunState, model_state: dict, state: dict) -> None:
    run.model.load_state_dict(model_state)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and run.context.device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    run.next_epoch, run.next_iteration = int(state["next_epoch"]), int(state["next_iteration"])
    run.meters = Meters(state["meters"])
    run.best_epoch = state["best_epoch"]
    run.best = EvalResult(**state["best"]) if state["best"] is not None else None
    run.elapsed_before, run.started_at = float(state.get("elapsed_s", 0.0)), time.perf_counter()


def save(run: RunState, name: str, *, is_resumable: bool) -> Path:
    """Atomically write ``name`` in the run directory (rank 0 only); the previous file survives any crash."""
    path = run.run_dir / name
    if run.context.is_main:
        save_checkpoint(_checkpoint(run, is_resumable=is_resumable), path)
    return path
