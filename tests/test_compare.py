"""`tfclip compare`: runs read from their folders, seeds grouped as mean ± std, differing keys, unfinished runs
marked, JSON and an HTML page with a chart per score."""

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tiny_training import TINY_CONFIG, save_tiny_checkpoint
from tfclip_cli.cli import app
from tfclip_cli.compare import compare_runs, count_parameters, format_stat, markdown_table
from tfclip_cli.model import build_model
from tfclip_cli.train import METRICS_FIELDS


def _run(folder: Path, *, seed: int, temporal: str, evals: list[tuple[int, str, float, float, float]],
         epochs_done: int, epochs: int = 4, elapsed: float = 60.0) -> Path:
    """A run folder as training leaves it: recipe.yaml, metrics.csv with epoch and eval rows."""
    folder.mkdir(parents=True)
    recipe = {"data": {"manifest": "/data/m.parquet"}, "model": {"temporal": temporal, "ssp_layers": 1},
              "solver": {"epochs": epochs}, "run": {"output_dir": str(folder), "seed": seed}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with (folder / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRICS_FIELDS)
        writer.writeheader()
        for epoch in range(1, epochs_done + 1):
            writer.writerow({"kind": "epoch", "epoch": epoch, "elapsed_s": elapsed * epoch / epochs_done})
            for eval_epoch, test_set, m_ap, rank1, minp in evals:
                if eval_epoch == epoch:
                    writer.writerow({"kind": "eval", "epoch": epoch, "test_set": test_set, "mAP": m_ap,
                                     "rank1": rank1, "mINP": minp})
    return folder


@pytest.fixture()
def runs(tmp_path: Path) -> list[Path]:
    """Two seeds of `tmd` (one test set and a second, "prid"), one `attention` run stopped at epoch 2 of 4."""
    return [
        _run(tmp_path / "tmd-seed1", seed=1, temporal="tmd", epochs_done=4,
             evals=[(2, "synthetic", 0.30, 0.40, 0.10), (4, "synthetic", 0.50, 0.60, 0.20), (4, "prid", 0.1, 0.2, 0.05)]),
        _run(tmp_path / "tmd-seed2", seed=2, temporal="tmd", epochs_done=4, elapsed=80.0,
             evals=[(2, "synthetic", 0.40, 0.70, 0.15), (4, "synthetic", 0.20, 0.30, 0.05), (4, "prid", 0.3, 0.4, 0.07)]),
        _run(tmp_path / "attention", seed=1, temporal="attention", epochs_done=2,
             evals=[(2, "synthetic", 0.25, 0.50, 0.12)]),
    ]


def test_seeds_form_one_group_with_mean_and_sample_std_of_best_and_last(runs) -> None:
    comparison = compare_runs(runs)
    assert comparison.differing_keys == ("model.temporal",)  # seeds and output folders never count as settings
    group, single = comparison.rows
    assert (group.label, group.seeds, group.settings) == ("tmd", (1, 2), {"model.temporal": "tmd"})
    # best = highest mAP + rank-1: seed 1 epoch 4 (0.5 + 0.6), seed 2 epoch 2 (0.4 + 0.7)
    best = group.scores["synthetic best mAP"]
    assert best.mean == pytest.approx(0.45) and best.std == pytest.approx(statistics.stdev([0.5, 0.4]))
    assert group.scores["synthetic last rank1"].mean == pytest.approx(0.45)
    assert group.scores["synthetic best mINP"].mean == pytest.approx(0.175)
    assert group.scores["prid last mAP"].mean == pytest.approx(0.2)
    assert group.elapsed_s.mean == pytest.approx(70.0) and group.is_finished
    assert (single.label, single.epochs_done, single.epochs, single.is_finished) == ("attention", 2, 4, False)
    assert "prid best mAP" not in single.scores
    assert format_stat(best) == "45.0 ± 7.1" and format_stat(single.scores["synthetic best mAP"]) == "25.0"


def test_markdown_and_cli_tables_mark_the_unfinished_run(runs) -> None:
    table = markdown_table(compare_runs(runs))
    assert "| attention * | 1 | attention |" in table and "2/4 (unfinished)" in table
    result = CliRunner().invoke(app, ["compare", *map(str, runs)], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "45.0 ± 7.1" in result.output and "attention *" in result.output


def test_json_and_html_outputs(runs, tmp_path: Path) -> None:
    out = tmp_path / "compare.html"
    result = CliRunner().invoke(app, ["compare", *map(str, runs), "--json", "--html", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["rows"][0]["seeds"] == [1, 2] and payload["rows"][1]["is_finished"] is False
    assert payload["rows"][0]["scores"]["synthetic best mAP"]["count"] == 2
    page = out.read_text()
    # one chart per best score of each test set: synthetic and prid x mAP, rank-1, mINP
    assert page.count("data:image/png;base64,") == 6 and "45.0 ± 7.1" in page
    again = CliRunner().invoke(app, ["compare", *map(str, runs), "--html", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_a_folder_that_is_not_a_run_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "recipe.yaml not found" in result.output


def test_parameter_count_is_the_checkpoint_models(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(TINY_CONFIG)
    path = save_tiny_checkpoint(model, tmp_path / "last.ckpt")
    assert count_parameters(path) == sum(p.numel() for p in model.parameters())
