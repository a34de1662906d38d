"""The training engine: set a run up, then a short epoch loop whose periodic work (metrics rows, evaluation,
checkpoints, Ctrl-C) lives in small helpers (reference: train.py L84-107, processor_clipreid_stage2.py
do_train_stage2; docs/fidelity.md#entry-points-and-initialisation to #clip-memory, #checkpoints-and-logging)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from tfclip_cli import display
from tfclip_cli.clips import ClipDataset, ClipTransform, IdentitySampler, build_loader
from tfclip_cli.errors import Terminated, UserError
from tfclip_cli.evaluate import EvalResult, evaluate
from tfclip_cli.inference import DistContext, extract_embeddings, label_map, resolve_precision, start_distributed
from tfclip_cli.losses import compute_losses
from tfclip_cli.model import shares_cameras
from tfclip_cli.recipe import Recipe, write_recipe
from tfclip_cli.tables import (
    Manifest,
    Tracklet,
    atomic_output,
    check_writable,
    read_manifest,
    reporting_write_errors,
)
from tfclip_cli.train.launch import barrier
from tfclip_cli.train.memory import ensure_memory, initial_model, model_config, eval_transform
from tfclip_cli.train.protocol import check_protocol, log_protocol
from tfclip_cli.train.solver import build_optimizer
from tfclip_cli.train.state import EVAL_FIELDS, LOSS_PARTS, Meters, MetricsLog, ResumableSampler, RunState, restore, save

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochSummary:
    """What one epoch did: mean loss parts over its iterations, the lr it ran at, speed, and its evaluation."""

    epoch: int
    losses: dict[str, float]
    lr: float
    clips_per_s: float
    data_share: float  # share of the step time spent waiting for the next batch
    evaluation: EvalResult | None


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`train`."""

    run_dir: Path
    epochs_done: int  # epochs completed in the run directory, resumed ones included
    history: tuple[EpochSummary, ...]  # the epochs this call ran
    best: EvalResult | None
    best_epoch: int | None
    last_checkpoint: Path
    best_checkpoint: Path | None


def _prepare_run_dir(recipe: Recipe, *, resume: bool, context: DistContext) -> None:
    """Refuse to overwrite a run, to resume nothing, or to start where nothing can be written; make the folder."""
    run_dir = recipe.run.output_dir
    last = run_dir / "last.ckpt"
    if resume and not last.is_file():
        raise UserError(f"--resume: {last} not found", hint="start the run without --resume")
    if not resume and last.exists():
        raise UserError(f"{run_dir} already holds a run ({last.name})",
                        hint="pass --resume to continue it, or set another run.output_dir")
    check_writable(run_dir / "recipe.yaml", force=True)
    if context.is_main:
        with reporting_write_errors(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
    barrier(context)


def _save_recipe(recipe: Recipe, context: DistContext) -> None:
    """Save the effective recipe (rank 0) once the run accepted it: a refused --resume keeps the run's recipe.yaml."""
    if context.is_main:
        with atomic_output(recipe.run.output_dir / "recipe.yaml", force=True) as temp:
            write_recipe(recipe, temp)


def _train_data(recipe: Recipe, train: Sequence[Tracklet], pid_to_label: dict[int, int], *,
                context: DistContext) -> tuple[ClipDataset, ResumableSampler, torch.utils.data.DataLoader]:
    """Training clips (rrs_train, augmented) in P×K batches, this rank's share, decoded in workers."""
    data = recipe.data
    transform = ClipTransform(data.image_size, normalization=data.normalization, is_train=True,
                              flip_p=data.flip_p, erase_p=data.erase_p, erase=data.erase)
    dataset = ClipDataset(train, seq_len=data.seq_len, sampling=data.train_sampling, transform=transform,
                          label_of=pid_to_label, seed=recipe.run.seed)
    sampler = ResumableSampler(IdentitySampler(
        [t.pid for t in train], num_ids=data.num_ids, num_instances=data.num_instances, seed=recipe.run.seed,
        rank=context.rank, world_size=context.world_size))
    loader = build_loader(dataset, batch_sampler=sampler, workers=data.workers, device=context.device,
                          seed=recipe.run.seed)
    return dataset, sampler, loader


def _share_cpu_cores(workers: int, device: torch.device) -> None:
    """On CPU, leave the DataLoader workers their cores: the training process takes the rest (at least one).

    Oversubscribed intra-op threads are ruinous on a busy machine: the tiny recipe on 2 shared cores ran at 16
    clips/s with 2 threads beside 2 workers and at 118 clips/s with 1 (benchmarks/bench_train.py). An explicit
    ``OMP_NUM_THREADS`` (torchrun sets 1) wins.
    """
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) - workers))


def _setup(recipe: Recipe, context: DistContext, *, resume: bool) -> RunState:
    """Build the model, memory, optimiser and data of a run, restored from last.ckpt when resuming."""
    manifest = read_manifest(recipe.data.manifest)
    check_protocol(recipe, manifest)
    if context.is_main:
        log_protocol(recipe, manifest, context.device)
    _prepare_run_dir(recipe, resume=resume, context=context)
    _share_cpu_cores(recipe.data.workers, context.device)
    autocast_dtype = resolve_precision(recipe.solver.precision, context.device)
    train = manifest.tracklets("train")
    model = initial_model(recipe, model_config(recipe, manifest), context.device)
    memory = None
    if model.config.has_memory:
        memory = ensure_memory(recipe, model, train, context=context)
        memory = dataclasses.replace(memory, features=memory.features.to(context.device))
    pid_to_label = memory.pid_to_label if memory is not None else label_map(train)
    optimizer, scheduler = build_optimizer(recipe.solver, model)
    dataset, sampler, loader = _train_data(recipe, train, pid_to_label, context=context)
    engine: nn.Module = model
    if context.world_size > 1:
        engine = nn.parallel.DistributedDataParallel(model, device_ids=[context.device] if context.device.type ==
                                                     "cuda" else None)
    run = RunState(
        recipe=recipe, context=context, model=model, engine=engine, memory=memory, pid_to_label=pid_to_label,
        optimizer=optimizer,
        scheduler=scheduler, scaler=torch.amp.GradScaler(context.device.type,
                                                         enabled=autocast_dtype == torch.float16),
        autocast_dtype=autocast_dtype, dataset=dataset, sampler=sampler, loader=loader, manifest=manifest,
        test_sets=_test_sets(recipe, manifest),
        metrics=MetricsLog(recipe.run.output_dir) if context.is_main else None,
    )
    if resume:
        restore(run, recipe.run.output_dir / "last.ckpt")
    if run.metrics is not None:
        run.metrics.cut_back(run.next_epoch, run.next_iteration)
    _save_recipe(recipe, context)
    return run


# ---------------------------------------------------------------------------------------------------- the loop


def _autocast(run: RunState) -> contextlib.AbstractContextManager:
    if run.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(run.context.device.type, dtype=run.autocast_dtype)


def _step(run: RunState, batch, *, is_update: bool) -> dict[str, torch.Tensor]:
    """Forward and backward of one batch; an optimiser step when ``is_update`` (gradient accumulation).

    ``batch`` is a collated ClipSample: frames [B, T, 3, H, W], label [B], camid [B].
    """
    device = run.context.device
    frames = batch.frames.to(device, non_blocking=True)
    labels = batch.label.to(device, non_blocking=True)
    camids = batch.camid.to(device, non_blocking=True) if run.model.config.num_cameras else None
    is_synced = is_update or not isinstance(run.engine, nn.parallel.DistributedDataParallel)
    with contextlib.nullcontext() if is_synced else run.engine.no_sync():
        with _autocast(run):
            memory = run.memory.features if run.memory is not None else None
            output = run.engine(frames, memory=memory, camids=camids)
            parts = compute_losses(output, labels, run.loss_weights, seq_len=frames.shape[1])
        run.scaler.scale(parts["total"] / run.recipe.solver.grad_accumulation).backward()
    if is_update:
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
    return {name: value.detach().float() for name, value in parts.items()}


def _timed(loader: torch.utils.data.DataLoader) -> Iterator[tuple[object, float]]:
    """The loader's batches, each with the seconds spent waiting for it."""
    iterator = iter(loader)
    while True:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        yield batch, time.perf_counter() - start


def _train_epoch(run: RunState, epoch: int) -> None:
    """Run the remaining iterations of ``epoch`` into ``run.meters``; stops early (after an optimiser step) when a
    Ctrl-C was requested, leaving ``run.next_iteration`` at the first batch not done."""
    run.engine.train()
    run.dataset.set_epoch(epoch)
    run.sampler.set_epoch(epoch, skip=run.next_iteration)
    total = run.next_iteration + len(run.sampler)
    accumulation = run.recipe.solver.grad_accumulation
    clips_per_batch = run.recipe.data.num_ids * run.recipe.data.num_instances
    with display.StatusBar(f"epoch {epoch}/{run.recipe.solver.epochs}", total=total * clips_per_batch,
                           unit="clips") as bar:
        bar.advance(run.next_iteration * clips_per_batch, status="")
        started = time.perf_counter()
        for batch, waited in _timed(run.loader):
            iteration = run.next_iteration + 1
            is_update = iteration % accumulation == 0 or iteration == total
            parts = _step(run, batch, is_update=is_update)
            _check_finite(parts, epoch=epoch, iteration=iteration, run_dir=run.run_dir)
            now = time.perf_counter()
            run.meters.add(parts, clips=len(batch.label) * run.context.world_size, step_s=now - started,
                           data_s=waited)
            started, run.next_iteration = now, iteration
            status = None
            if iteration % run.recipe.run.log_every == 0 or iteration == total:
                status = _log_iteration(run, epoch, iteration, total=total)
                if not bar.is_shown:
                    logger.info("epoch %d iteration %d/%d: %s", epoch, iteration, total, status)
            bar.advance(len(batch.label) * run.context.world_size, status=status)
            if is_update and _should_stop(run):
                return


def _check_finite(parts: dict[str, torch.Tensor], *, epoch: int, iteration: int, run_dir: Path) -> None:
    """Stop at the first non-finite loss, naming the part and the step; nothing is saved, so last.ckpt stays the
    last good state (one host sync per step, cheap beside a training step).

    Raises:
        UserError: a loss part is NaN or infinite.
    """
    if bool(torch.isfinite(torch.stack(list(parts.values()))).all()):
        return
    name = next(name for name in (*LOSS_PARTS[1:], *parts) if name in parts and not torch.isfinite(parts[name]))
    raise UserError(
        f"training stopped at epoch {epoch}, iteration {iteration}: the {name} loss is {float(parts[name])}; "
        f"{run_dir / 'last.ckpt'} (if any) keeps the last good state",
        hint="lower solver.base_lr or set solver.precision=fp32, then run again (or --resume from last.ckpt)",
    )


def _lr(run: RunState) -> float:
    """The current learning rate of plain weights (group 0: neither bias nor temporal classifier)."""
    return float(run.optimizer.param_groups[0]["lr"])


def _loss_text(losses: dict[str, float]) -> str:
    parts = " ".join(f"{name} {losses[name]:.3f}" for name in LOSS_PARTS[1:] if name in losses)
    return f"loss {losses.get('total', float('nan')):.3f} ({parts})"


def _log_iteration(run: RunState, epoch: int, iteration: int, *, total: int) -> str:
    """Append an iteration row to metrics.csv (this rank's running means); return the status line."""
    losses = run.meters.means()
    clips_per_s, data_share = run.meters.speed()
    if run.metrics is not None:
        step = (epoch - 1) * total + iteration
        run.metrics.write({"kind": "iteration", "epoch": epoch, "iteration": iteration, "lr": _lr(run), **losses,
                           "clips_per_s": clips_per_s, "data_share": data_share}, step=step)
    return f"{_loss_text(losses)} lr {_lr(run):.2e}"


def _should_stop(run: RunState) -> bool:
    """Whether any rank was asked to stop (Ctrl-C); every rank answers the same."""
    if run.context.world_size > 1:
        flag = torch.tensor([float(run.stop_requested)], device=run.context.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        run.stop_requested = bool(flag.item())
    return run.stop_requested


STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


@contextlib.contextmanager
def _stop_on_signals(run: RunState) -> Iterator[None]:
    """The first Ctrl-C or SIGTERM asks the loop to stop after the current optimiser step; a second one acts at once.

    Only this process reacts: DataLoader workers are forked with the handler and leave stopping to it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def request(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            return
        run.stop_requested, run.stop_signal = True, signum
        signal.signal(signum, previous[signum])
        logger.warning("%s: writing a resumable checkpoint after this step (send it again to stop at once)",
                       STOP_SIGNALS[signum])

    previous = {signum: signal.signal(signum, request) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _epoch_losses(run: RunState) -> dict[str, float]:
    """Mean loss parts of the epoch, averaged over the ranks."""
    losses = run.meters.means()
    if run.context.world_size > 1:
        names = [name for name in LOSS_PARTS if name in losses]  # no v2m without a CLIP-Memory
        values = torch.tensor([losses[name] for name in names], device=run.context.device)
        dist.all_reduce(values)
        losses = dict(zip(names, (values / run.context.world_size).tolist()))
    return losses


# ------------------------------------------------------------------------------------------ evaluation and epochs


def _is_eval_epoch(recipe: Recipe, epoch: int) -> bool:
    every = recipe.eval.every
    return epoch == recipe.solver.epochs or (every > 0 and epoch % every == 0)


def _test_sets(recipe: Recipe, manifest: Manifest) -> dict[str, Manifest]:
    """What each evaluation scores, by name: the training manifest's own query/gallery (under its dataset name)
    when it has queries, then the recipe's ``eval.manifests`` in order."""
    test_sets = {manifest.info.dataset: manifest} if manifest.split_counts()["query"] else {}
    test_sets.update({name: read_manifest(path) for name, path in recipe.eval.manifests.items()})
    if not test_sets:
        logger.warning("%s has no query split and eval.manifests is empty: no evaluation", recipe.data.manifest)
    return test_sets


def _evaluate(run: RunState) -> dict[str, EvalResult]:
    """Embed query and gallery of every test set with the current model and score them (rank 0).

    A test set of another dataset than the training one is embedded without camera embedding: its camera ids
    are not the cameras the model learned (cross-dataset evaluation).
    """
    recipe, results = run.recipe, {}
    for name, manifest in run.test_sets.items():
        extraction = extract_embeddings(
            run.model, manifest.tracklets("query") + manifest.tracklets("gallery"),
            sampling="rrs" if recipe.eval.sampling == "rrs_test" else "dense", transform=eval_transform(recipe),
            device=run.context.device, batch_size=recipe.eval.batch_size, workers=recipe.data.workers,
            precision=recipe.eval.precision, use_camids=shares_cameras(run.model.config, manifest.info.dataset),
        )
        rule = manifest.info.gallery_rule if recipe.eval.gallery_rule == "manifest" else recipe.eval.gallery_rule
        results[name] = evaluate(extraction.embeddings, gallery_rule=rule)
    return results


def _record_evaluation(run: RunState, epoch: int, results: dict[str, EvalResult]) -> EvalResult:
    """Keep best.ckpt by mAP + rank-1 of the first test set, strictly better (reference: processor L226-234); log
    a row per test set. Returns the first test set's result."""
    name, result = next(iter(results.items()))
    score = result.mAP + result.rank1
    if run.best is None or score > run.best.mAP + run.best.rank1:
        run.best, run.best_epoch = result, epoch
        save(run, "best.ckpt", is_resumable=False)
    for test_set, scores in results.items():
        logger.info("epoch %d, %s: mAP %.1f%% rank-1 %.1f%% rank-5 %.1f%%%s", epoch, test_set, 100 * scores.mAP,
                    100 * scores.rank1, 100 * scores.rank5,
                    f" (best: epoch {run.best_epoch})" if test_set == name else "")
        if run.metrics is not None:
            run.metrics.write({"kind": "eval", "epoch": epoch, "test_set": test_set,
                               **{f: float(getattr(scores, f)) for f in EVAL_FIELDS}}, step=epoch)
    return result


def _finish_epoch(run: RunState, epoch: int) -> EpochSummary:
    """Step the schedule, evaluate when due, write last.ckpt (and best.ckpt), and log the epoch row."""
    losses, lr = _epoch_losses(run), _lr(run)
    clips_per_s, data_share = run.meters.speed()
    run.scheduler.step()
    run.next_epoch, run.next_iteration, run.meters = epoch + 1, 0, Meters()
    results = _evaluate(run) if run.context.is_main and _is_eval_epoch(run.recipe, epoch) else {}
    evaluation = _record_evaluation(run, epoch, results) if results else None
    if run.metrics is not None:  # before last.ckpt, which then covers every row of the epoch (see cut_back)
        run.metrics.write({"kind": "epoch", "epoch": epoch, "lr": lr, **losses, "clips_per_s": clips_per_s,
                           "data_share": data_share, "elapsed_s": run.elapsed_s}, step=epoch)
    save(run, "last.ckpt", is_resumable=True)
    _draw_report(run, epoch, evaluation)
    barrier(run.context)
    logger.info("epoch %d/%d: %s, lr %.2e, %.1f clips/s, %.0f%% waiting for data", epoch, run.recipe.solver.epochs,
                _loss_text(losses), lr, clips_per_s, 100 * data_share)
    return EpochSummary(epoch=epoch, losses=losses, lr=lr, clips_per_s=clips_per_s, data_share=data_share,
                        evaluation=evaluation)


def _draw_report(run: RunState, epoch: int, evaluation: EvalResult | None) -> None:
    """After each evaluation and after the last epoch, redraw RUN/report.html from metrics.csv (rank 0)."""
    if run.metrics is None or (evaluation is None and epoch != run.recipe.solver.epochs):
        return
    from tfclip_cli.report.training import write_run_report  # matplotlib loads only when a run draws

    logger.info("wrote %s", write_run_report(run.run_dir))


def _interrupt(run: RunState) -> None:
    """Write a resumable last.ckpt at the current position, then stop with KeyboardInterrupt (CLI exit 130), or
    Terminated after SIGTERM (exit 143)."""
    path = save(run, "last.ckpt", is_resumable=True)
    barrier(run.context)
    logger.warning("interrupted: %s can be resumed with `tfclip train RECIPE --resume`", path)
    raise Terminated if run.stop_signal == signal.SIGTERM else KeyboardInterrupt


def train(recipe: Recipe, *, resume: bool = False) -> TrainResult:
    """Train TF-CLIP as the recipe says (single process, or one rank of a torchrun job).

    Raises:
        UserError: bad data, checkpoint or run directory (nothing is trained).
        KeyboardInterrupt: after Ctrl-C (Terminated after SIGTERM), once a resumable last.ckpt is written.
    """
    context = start_distributed()
    run = None
    try:
        run = _setup(recipe, context, resume=resume)
        history = []
        with _stop_on_signals(run):
            for epoch in range(run.next_epoch, recipe.solver.epochs + 1):
                _train_epoch(run, epoch)
                if run.stop_requested:
                    _interrupt(run)
                history.append(_finish_epoch(run, epoch))
                if _should_stop(run):
                    _interrupt(run)
        return _result(run, history)
    finally:
        if run is not None and run.metrics is not None:
            run.metrics.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def _result(run: RunState, history: list[EpochSummary]) -> TrainResult:
    best = run.run_dir / "best.ckpt"
    return TrainResult(
        run_dir=run.run_dir, epochs_done=run.next_epoch - 1, history=tuple(history), best=run.best,
        best_epoch=run.best_epoch, last_checkpoint=run.run_dir / "last.ckpt",
        best_checkpoint=best if best.exists() else None,
    )
