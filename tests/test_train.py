"""Training runs on the tiny synthetic dataset: loss, run folder, metrics, memory, resume, Ctrl-C, atomic
checkpoints and a 2-process gloo DDP run."""

import csv
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tiny_training import tiny_manifest, tiny_recipe
from tfclip_cli import train as training
from tfclip_cli.train import engine
from tfclip_cli.checkpoint import load_checkpoint, save_checkpoint
from tfclip_cli.cli import app
from tfclip_cli.errors import CheckpointError, OutputError
from tfclip_cli.inference import load_memory
from tfclip_cli.model import ModelConfig, build_model
from tfclip_cli.recipe import load_recipe
from tfclip_cli.report.training import read_history

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return tiny_manifest(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def full_run(manifest, tmp_path_factory):
    """Three uninterrupted epochs."""
    folder = tmp_path_factory.mktemp("full")
    path = tiny_recipe(folder / "r.yaml", manifest=manifest, output_dir=folder / "run", solver={"epochs": 3})
    return training.train(load_recipe(path))


def _epoch_losses(result) -> dict[int, dict[str, float]]:
    return {summary.epoch: summary.losses for summary in result.history}


def test_a_short_run_lowers_the_loss_and_writes_the_run_folder(full_run):
    losses = _epoch_losses(full_run)
    assert losses[3]["total"] < 0.9 * losses[1]["total"]
    assert set(losses[1]) == {"total", "id", "frame_id", "triplet", "v2m"}
    names = {path.name for path in full_run.run_dir.iterdir()}
    assert {"recipe.yaml", "memory.pt", "last.ckpt", "best.ckpt", "metrics.csv", "report.html"} <= names
    assert not [name for name in names if name.endswith(".tmp")]
    assert full_run.epochs_done == 3 and full_run.best is not None
    assert full_run.best_checkpoint == full_run.run_dir / "best.ckpt"


def test_checkpoints_hold_weights_recipe_memory_and_the_training_state(full_run):
    last = load_checkpoint(full_run.last_checkpoint)
    memory = load_memory(full_run.run_dir / "memory.pt")
    assert last.pid_to_label == memory.pid_to_label == {0: 0, 1: 1, 2: 2, 3: 3}
    assert torch.equal(last.memory, memory.features)
    assert last.recipe["solver"]["epochs"] == 3
    state = last.training_state
    assert (state["next_epoch"], state["next_iteration"], state["best_epoch"]) == (4, 0, full_run.best_epoch)
    assert {"optimizer", "scheduler", "scaler", "torch_rng"} <= set(state)
    assert load_checkpoint(full_run.best_checkpoint).training_state is None
    model = build_model(ModelConfig.from_dict(last.model_config))
    model.load_state_dict(last.model_state)


def test_metrics_csv_has_a_row_per_iteration_epoch_and_evaluation(full_run):
    with (full_run.run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(training.METRICS_FIELDS)
    kinds = [row["kind"] for row in rows]
    iterations = kinds.count("iteration")
    assert kinds.count("epoch") == 3 and kinds.count("eval") == 3 and iterations >= 3
    epoch_rows = [row for row in rows if row["kind"] == "epoch"]
    assert [float(row["total"]) for row in epoch_rows] == pytest.approx(
        [full_run.history[i].losses["total"] for i in range(3)], rel=1e-5)
    assert all(0 <= float(row["mAP"]) <= 1 for row in rows if row["kind"] == "eval")


def test_resuming_after_an_epoch_repeats_the_uninterrupted_losses(full_run, manifest, tmp_path):
    path = tiny_recipe(tmp_path / "r.yaml", manifest=manifest, output_dir=tmp_path / "run", solver={"epochs": 1})
    first = training.train(load_recipe(path))
    resumed = training.train(load_recipe(path, ["solver.epochs=2"]), resume=True)
    assert [s.epoch for s in resumed.history] == [2]
    assert _epoch_losses(first)[1] == _epoch_losses(full_run)[1]
    assert _epoch_losses(resumed)[2] == _epoch_losses(full_run)[2]
    history = read_history(tmp_path / "run" / "metrics.csv")  # what report.html draws: one curve over both calls
    assert history.epochs == (1, 2) and history.eval_epochs == (1, 2)
    assert "2 epochs trained, 2 evaluations" in (tmp_path / "run" / "report.html").read_text()


def test_a_crash_while_writing_a_checkpoint_leaves_the_last_good_one(full_run, monkeypatch):
    path = full_run.last_checkpoint
    before = load_checkpoint(path)

    def crash(payload, handle):
        handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OutputError, match=f"cannot write {path}: no space left on device"):
        save_checkpoint(before, path)
    after = load_checkpoint(path)
    assert after.training_state["next_epoch"] == before.training_state["next_epoch"]
    assert all(torch.equal(after.model_state[k], v) for k, v in before.model_state.items())
    assert not list(path.parent.glob("*.tmp"))


def test_a_memory_of_other_data_or_weights_is_refused(full_run, manifest, tmp_path):
    path = tiny_recipe(tmp_path / "r.yaml", manifest=manifest, output_dir=tmp_path / "run", run={"seed": 8})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "memory.pt").write_bytes((full_run.run_dir / "memory.pt").read_bytes())
    with pytest.raises(CheckpointError, match="memory.pt was built from other train data or initial weights"):
        training.train(load_recipe(path))
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_build_memory_writes_the_memory_once(manifest, tmp_path):
    path = tiny_recipe(tmp_path / "r.yaml", manifest=manifest, output_dir=tmp_path / "run")
    runner = CliRunner()
    result = runner.invoke(app, ["build-memory", str(path)])
    assert result.exit_code == 0, result.output
    memory = load_memory(tmp_path / "run" / "memory.pt")
    assert memory.features.shape == (4, 64) and memory.pid_to_label == {0: 0, 1: 1, 2: 2, 3: 3}
    again = runner.invoke(app, ["build-memory", str(path)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_an_existing_run_is_not_overwritten_and_resume_needs_a_checkpoint(full_run, manifest, tmp_path):
    runner = CliRunner()
    existing = tiny_recipe(tmp_path / "a.yaml", manifest=manifest, output_dir=full_run.run_dir)
    result = runner.invoke(app, ["train", str(existing)], terminal_width=200)
    assert result.exit_code == 2 and "already holds a run" in result.output and "--resume" in result.output
    fresh = tiny_recipe(tmp_path / "b.yaml", manifest=manifest, output_dir=tmp_path / "new")
    result = runner.invoke(app, ["train", str(fresh), "--resume"], terminal_width=200)
    assert result.exit_code == 2 and "last.ckpt not found" in result.output


def test_lr_schedule_follows_the_reference_per_epoch_warmup_and_steps():
    factor = lambda index: training.lr_factor(index, warmup_epochs=10, warmup_factor=0.1, milestones=(30, 50, 70),
                                              gamma=0.1)
    expected = {0: 0.1, 5: 0.55, 9: 0.91, 10: 1.0, 29: 1.0, 30: 0.1, 49: 0.1, 50: 0.01, 70: 0.001, 79: 0.001}
    assert {index: factor(index) for index in expected} == pytest.approx(expected)


def test_param_groups_double_bias_lr_and_speed_up_the_temporal_classifier_only():
    model = build_model(ModelConfig(backbone="tfclip-tiny", image_size=(64, 32), seq_len=4, num_classes=3))
    groups = training.param_groups(model, base_lr=1.0, weight_decay=1e-4, bias_lr_factor=2.0,
                                   temporal_classifier_lr_factor=10.0)
    lr_of = {id(p): group["lr"] for group in groups for p in group["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["classifier_temporal.weight"])] == 10.0
    assert lr_of[id(named["classifier_cls.weight"])] == 1.0
    assert all(lr_of[id(p)] == 2.0 for name, p in named.items() if "bias" in name and p.requires_grad)
    assert id(named["neck_cls.bias"]) not in lr_of  # frozen BNNeck bias, skipped like the reference
    assert len(lr_of) == sum(p.requires_grad for p in named.values())
    assert {group["weight_decay"] for group in groups} == {1e-4}


def test_precision_fp16_is_the_reference_autocast_on_cuda_and_fp32_on_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # resolving touches no device
    assert [training.resolve_precision(p, cpu) for p in ("fp16", "auto", "fp32")] == [None, None, None]
    assert training.resolve_precision("bf16", cpu) is torch.bfloat16
    assert training.resolve_precision("fp16", cuda) is torch.float16  # the reference's autocast (+ grad scaler)
    assert (training.resolve_precision("bf16", cuda), training.resolve_precision("fp32", cuda)) == (torch.bfloat16, None)


def test_gpus_relaunches_the_same_command_under_torchrun():
    command = training.torchrun_command(2, ["train", "r.yaml", "--set=solver.epochs=3"])
    assert command == [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "tfclip_cli",
                       "train", "r.yaml", "--set=solver.epochs=3"]


def test_two_process_gloo_ddp_trains_one_epoch(manifest, tmp_path):
    path = tiny_recipe(tmp_path / "r.yaml", manifest=manifest, output_dir=tmp_path / "run",
                       data={"num_ids": 4, "num_instances": 2}, solver={"epochs": 1})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = training.torchrun_command(2, ["train", str(path)])
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(tmp_path / "run" / "last.ckpt").training_state
    assert state["next_epoch"] == 2
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        kinds = [row["kind"] for row in csv.DictReader(handle)]
    assert kinds.count("epoch") == 1 and kinds.count("eval") == 1  # rank 0 alone writes


# --- what a user or a scheduler can do to a run (issue 13) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_or_sigterm_writes_a_resumable_checkpoint_says_so_and_exits(
    full_run, manifest, tmp_path, monkeypatch, sent, code, word
):
    path = tiny_recipe(tmp_path / "r.yaml", manifest=manifest, output_dir=tmp_path / "run", solver={"epochs": 2})
    real_step, calls = engine._step, []

    def step_then_signal(*args, **kwargs):
        calls.append(1)
        parts = real_step(*args, **kwargs)
        if len(calls) == 2:
            os.kill(os.getpid(), sent)
        return parts

    monkeypatch.setattr(engine, "_step", step_then_signal)
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == code, result.output
    assert word in result.output
    state = load_checkpoint(tmp_path / "run" / "last.ckpt").training_state
    assert (state["next_epoch"], state["next_iteration"]) == (1, 2)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.setattr(engine, "_step", real_step)
    resumed = training.train(load_recipe(path), resume=True)
    assert [s.epoch for s in resumed.history] == [1, 2]
    for epoch in (1, 2):
        assert _epoch_losses(resumed)[epoch] == pytest.approx(_epoch_losses(full_run)[epoch], rel=1e-6)


def test_the_stop_handler_does_nothing_in_forked_dataloader_workers():
    run = engine.RunState.__new__(engine.RunState)
    run.stop_requested, run.stop_signal = False, 0
    with engine._stop_on_signals(run):
        child = os.fork()
        if child == 0:  # a DataLoader worker inherits the handler; a scheduler signals every process
            os.kill(os.getpid(), signal.SIGTERM)
            os._exit(1 if run.stop_requested else 0)
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not run.stop_requested


def _metrics_rows(run_dir: Path) -> list[tuple]:
    with (run_dir / "metrics.csv").open() as handle:
        return [(row["kind"], row["epoch"], row["iteration"], row["total"], row["mAP"])
                for row in csv.DictReader(handle)]


def test_resume_cuts_metrics_csv_back_to_the_checkpoint_so_it_equals_an_uninterrupted_run(full_run, manifest,
                                                                                            tmp_path):
    path = tiny_recipe(tmp_path / "r.yaml", manifest=manifest, output_dir=tmp_path / "run", solver={"epochs": 1})
    training.train(load_recipe(path))
    with (full_run.run_dir / "metrics.csv").open() as handle:
        lines = handle.read().splitlines(keepends=True)
    epoch_2 = [line for line in lines if line.startswith("iteration,2,")]
    with (tmp_path / "run" / "metrics.csv").open("a") as handle:  # rows a kill -9 after them leaves behind
        handle.writelines(epoch_2[:2])
    training.train(load_recipe(path, ["solver.epochs=2"]), resume=True)
    expected = [row for row in _metrics_rows(full_run.run_dir) if int(row[1]) <= 2]
    assert _metrics_rows(tmp_path / "run") == expected


def test_a_refused_resume_keeps_the_runs_recipe_yaml(full_run, manifest, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("last.ckpt", "recipe.yaml"):
        (run_dir / name).write_bytes((full_run.run_dir / name).read_bytes())
    before = (run_dir / "recipe.yaml").read_text()
    path = tiny_recipe(tmp_path / "r.yaml", manifest=manifest, output_dir=run_dir, model={"embedding": "after_bn"})
    result = CliRunner().invoke(app, ["train", str(path), "--resume"], terminal_width=200)
    assert result.exit_code == 2 and "resume with the recipe.yaml saved in the run directory" in result.output
    assert (run_dir / "recipe.yaml").read_text() == before


def test_a_nan_loss_stops_training_naming_the_part_and_step_and_keeps_the_last_good_checkpoint(manifest, tmp_path,
                                                                                                 monkeypatch):
    path = tiny_recipe(tmp_path / "r.yaml", manifest=manifest, output_dir=tmp_path / "run", solver={"epochs": 2},
                       eval={"every": 0})
    real_losses, real_finish, finished = engine.compute_losses, engine._finish_epoch, []

    def nan_triplet_in_epoch_2(*args, **kwargs):
        parts = real_losses(*args, **kwargs)
        if finished:
            parts["triplet"] = parts["triplet"] * float("nan")
            parts["total"] = parts["total"] + parts["triplet"]
        return parts

    def finish(run, epoch):
        summary = real_finish(run, epoch)
        finished.append(epoch)
        return summary

    monkeypatch.setattr(engine, "compute_losses", nan_triplet_in_epoch_2)
    monkeypatch.setattr(engine, "_finish_epoch", finish)
    result = CliRunner().invoke(app, ["train", str(path)], terminal_width=300)
    assert result.exit_code == 2, result.output
    assert "training stopped at epoch 2, iteration 1: the triplet loss is nan" in result.output
    assert "Traceback" not in result.output
    assert load_checkpoint(tmp_path / "run" / "last.ckpt").training_state["next_epoch"] == 2
