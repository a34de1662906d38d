"""Several test sets per training run (`eval.manifests`) and cross-dataset evaluation: a dataset other than the
training one is embedded without camera embedding, in training and in `tfclip extract`."""

import csv
import dataclasses
from pathlib import Path

import pytest

from tiny_training import tiny_manifest, tiny_recipe
from tfclip_cli import train as training
from tfclip_cli.errors import RecipeError
from tfclip_cli.evaluate import evaluate
from tfclip_cli.inference import extract_to_file
from tfclip_cli.recipe import load_recipe
from tfclip_cli.tables import read_manifest, write_manifest
from tfclip_cli.train import engine


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny synthetic manifest, and the same tracklets presented as another dataset ("elsewhere")."""
    folder = tmp_path_factory.mktemp("tiny")
    own = tiny_manifest(folder)
    manifest = read_manifest(own)
    other = folder / "elsewhere.parquet"
    write_manifest(dataclasses.replace(manifest, info=dataclasses.replace(manifest.info, dataset="elsewhere")), other)
    return own, other


@pytest.fixture(scope="module")
def run(manifests, tmp_path_factory):
    """One epoch with a camera embedding, evaluated on its own test set and on "elsewhere"; records use_camids."""
    own, other = manifests
    folder = tmp_path_factory.mktemp("run")
    path = tiny_recipe(folder / "r.yaml", manifest=own, output_dir=folder / "run", solver={"epochs": 1},
                       model={"sie": True}, eval={"manifests": {"far": str(other)}})
    calls = []
    real = engine.extract_embeddings

    def recording(*args, **kwargs):
        calls.append(kwargs["use_camids"])
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "extract_embeddings", recording)
        result = training.train(load_recipe(path))
    return result, calls


def _eval_rows(run_dir: Path) -> dict[str, dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return {row["test_set"]: row for row in csv.DictReader(handle) if row["kind"] == "eval"}


def test_every_test_set_is_reported_under_its_name_and_only_the_own_one_uses_cameras(run) -> None:
    result, calls = run
    rows = _eval_rows(result.run_dir)
    assert list(rows) == ["synthetic", "far"]
    assert calls == [True, False]
    assert float(rows["synthetic"]["mAP"]) == pytest.approx(result.best.mAP, abs=1e-6)  # best.ckpt: the first


def test_extract_of_the_checkpoint_reproduces_both_scores(run, manifests, tmp_path: Path) -> None:
    result, _ = run
    rows = _eval_rows(result.run_dir)
    for name, manifest in zip(("synthetic", "far"), manifests):
        extraction = extract_to_file(result.last_checkpoint, tmp_path / f"{name}.parquet", manifest=manifest,
                                     sampling="rrs", workers=0)
        scores = evaluate(extraction.embeddings, gallery_rule=read_manifest(manifest).info.gallery_rule)
        assert scores.mAP == pytest.approx(float(rows[name]["mAP"]), abs=1e-5), name


def test_test_sets_are_validated_by_name_and_content(manifests, tmp_path: Path) -> None:
    own, other = manifests
    path = tiny_recipe(tmp_path / "r.yaml", manifest=own, output_dir=tmp_path / "run")
    with pytest.raises(RecipeError, match="eval.manifests.synthetic: the training manifest's own test set"):
        load_recipe(path, [f"eval.manifests.synthetic={other}"])
    with pytest.raises(RecipeError, match="test-set name 'a b' is not allowed"):
        load_recipe(path, [f"eval.manifests={{'a b': {other}}}"])
    with pytest.raises(RecipeError, match="eval.manifests.far: .*missing.parquet"):
        load_recipe(path, [f"eval.manifests.far={tmp_path / 'missing.parquet'}"])
    assert load_recipe(path, [f"eval.manifests.far={other}"]).eval.manifests == {"far": other}
