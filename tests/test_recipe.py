"""Recipes: YAML with defaults, dotted overrides, paths relative to the recipe, and errors naming the key."""

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tiny_training import fake_manifest, tiny_recipe
from tfclip_cli.cli import app
from tfclip_cli.errors import RecipeError
from tfclip_cli.recipe import Recipe, load_recipe, recipe_to_dict, write_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    return fake_manifest(tmp_path / "m.parquet", train_pids=3)


def _write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_missing_keys_take_the_reference_defaults_and_paths_resolve_against_the_recipe(tmp_path, manifest):
    folder = tmp_path / "recipes"
    folder.mkdir()
    path = _write(folder / "r.yaml", {"data": {"manifest": "../m.parquet", "num_ids": 2}, "run": {"output_dir": "out"}})
    recipe = load_recipe(path)
    assert recipe.data.manifest == manifest
    assert recipe.run.output_dir == folder / "out"
    assert (recipe.data.seq_len, recipe.data.image_size, recipe.data.num_instances) == (8, (256, 128), 4)
    assert (recipe.solver.base_lr, recipe.solver.milestones, recipe.solver.epochs) == (5e-6, (30, 50, 70), 80)
    assert (recipe.loss.id, recipe.loss.triplet, recipe.loss.v2m) == (0.25, 1.0, 1.0)
    assert (recipe.eval.every, recipe.eval.sampling, recipe.run.seed) == (2, "rrs_test", 1234)
    # the reference's per-frame erasing, fp16 + grad scaler training, fp32 evaluation; no protocol check
    assert (recipe.data.erase, recipe.solver.precision, recipe.eval.precision) == ("frame", "fp16", "fp32")
    assert recipe.data.protocol == "none"


def test_overrides_are_parsed_as_yaml_and_their_paths_resolve_against_the_current_folder(tmp_path, manifest,
                                                                                        monkeypatch):
    path = tiny_recipe(tmp_path / "r.yaml", manifest=manifest, output_dir=tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(path, ["solver.epochs=10", "solver.milestones=[3, 6]", "model.sie=false",
                                "solver.base_lr=1e-5", "run.output_dir=elsewhere"])
    assert recipe.solver.epochs == 10
    assert recipe.solver.milestones == (3, 6)
    assert recipe.model.sie is False
    assert recipe.solver.base_lr == 1e-5  # YAML 1.1 reads 1e-5 as a string; accepted as the number it spells
    assert recipe.run.output_dir == tmp_path / "elsewhere"


def test_recipe_to_dict_round_trips_through_yaml(tmp_path, manifest):
    path = tiny_recipe(tmp_path / "r.yaml", manifest=manifest, output_dir=tmp_path / "run")
    recipe = load_recipe(path, ["solver.milestones=[1]"])
    write_recipe(recipe, tmp_path / "effective.yaml")
    assert load_recipe(tmp_path / "effective.yaml") == recipe
    assert recipe_to_dict(recipe)["data"]["image_size"] == [64, 32]


@pytest.mark.parametrize(
    ("override", "named", "allowed"),
    [
        ("data.seqlen=4", "unknown key data.seqlen", "seq_len"),
        ("trainer.epochs=4", "unknown key trainer", "solver"),
        ("data.seq_len=0", "data.seq_len: found 0", "an integer >= 1"),
        ("data.seq_len=eight", "data.seq_len: found 'eight'", "expected int"),
        ("data.image_size=[64]", "data.image_size", "a list of 2 integers"),
        ("model.sie=1", "model.sie: found 1", "expected bool"),
        ("eval.sampling=evenly", "eval.sampling: found 'evenly'", "rrs_test, dense"),
        ("solver.precision=fp8", "solver.precision", "auto, fp32, bf16, fp16"),
        ("eval.precision=fp8", "eval.precision", "auto, fp32, bf16, fp16"),
        ("data.erase=box", "data.erase: found 'box'", "frame, clip"),
        ("data.protocol=market", "data.protocol: found 'market'", "none, mars, lsvid, ilidsvid, prid2011"),
        ("solver.milestones=[5, 3]", "solver.milestones", "strictly increasing"),
        ("data.flip_p=1.5", "data.flip_p", "[0, 1]"),
        ("data.num_ids=4", "data.num_ids: found 4, but the train split", "allowed: 1..3"),
        ("model.pretrained=missing.pt", "model.pretrained", "openai, none, or a weight file"),
        ("solver", "--set 'solver'", "section.key=value"),
        ("solver.base_lr=.inf", "solver.base_lr: found inf", "expected a finite number"),
        ("loss.triplet=.nan", "loss.triplet: found nan", "expected a finite number"),
        ("solver.gamma=-.inf", "solver.gamma: found -inf", "expected a finite number"),
        ("data.flip_p=nan", "data.flip_p: found 'nan'", "expected a finite number"),
    ],
)
def test_impossible_recipes_name_the_key_and_what_is_allowed(tmp_path, manifest, override, named, allowed):
    path = tiny_recipe(tmp_path / "r.yaml", manifest=manifest, output_dir=tmp_path / "run")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, [override])
    assert named in caught.value.message
    assert allowed in caught.value.message


def test_a_manifest_without_a_train_split_is_refused(tmp_path):
    empty = fake_manifest(tmp_path / "m.parquet", train_pids=0)
    path = tiny_recipe(tmp_path / "r.yaml", manifest=empty, output_dir=tmp_path / "run")
    with pytest.raises(RecipeError, match=r"data.manifest: .* has no train split \(train 0, query 4, gallery 6\)"):
        load_recipe(path)


def test_a_missing_manifest_is_named(tmp_path):
    path = tiny_recipe(tmp_path / "r.yaml", manifest=tmp_path / "nope.parquet", output_dir=tmp_path / "run")
    with pytest.raises(RecipeError, match=r"data.manifest: .*nope.parquet not found"):
        load_recipe(path)


def test_cli_exits_2_with_the_key_path_before_any_work(tmp_path, manifest):
    path = tiny_recipe(tmp_path / "r.yaml", manifest=manifest, output_dir=tmp_path / "run")
    for command in ("train", "build-memory"):
        result = CliRunner().invoke(app, [command, str(path), "--set", "data.seq_len=0"], terminal_width=200)
        assert result.exit_code == 2, result.output
        assert "data.seq_len: found 0 (int); allowed: an integer >= 1" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["mars", "lsvid", "ilidsvid", "prid2011"])
def test_benchmark_recipes_carry_the_reference_settings(name, tmp_path):
    manifest = fake_manifest(tmp_path / "m.parquet", train_pids=4)
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml", [f"data.manifest={manifest}"])
    data, solver = recipe.data, recipe.solver
    assert (data.seq_len, data.image_size, data.num_ids, data.num_instances) == (8, (256, 128), 4, 4)
    assert (data.normalization, data.flip_p, data.erase_p) == ("imagenet", 0.5, 0.5)
    assert (recipe.model.backbone, recipe.model.pretrained, recipe.model.sie, recipe.model.sie_coe) == (
        "ViT-B-16", "openai", True, 1.0)
    assert (solver.optimizer, solver.base_lr, solver.weight_decay, solver.bias_lr_factor) == ("adam", 5e-6, 1e-4, 2.0)
    assert (solver.temporal_classifier_lr_factor, solver.warmup_epochs, solver.warmup_factor) == (10.0, 10, 0.1)
    assert (solver.milestones, solver.gamma, solver.epochs) == ((30, 50, 70), 0.1, 80)
    assert (recipe.loss.id, recipe.loss.triplet, recipe.loss.v2m, recipe.eval.every) == (0.25, 1.0, 1.0, 2)
    assert recipe.run.output_dir == ROOT / "runs" / f"{name}-tfclip"
    assert (data.erase, data.protocol, solver.precision, recipe.eval.precision) == ("frame", name, "fp16", "fp32")
    assert (recipe.eval.sampling, recipe.eval.gallery_rule) == ("rrs_test", "manifest")


def test_synthetic_tiny_recipe_loads(tmp_path):
    manifest = fake_manifest(tmp_path / "m.parquet", train_pids=8)
    recipe = load_recipe(ROOT / "recipes" / "synthetic-tiny.yaml", [f"data.manifest={manifest}"])
    assert recipe.model.backbone == "tfclip-tiny"


def test_every_recipe_key_is_read_by_the_training_engine():
    read = {
        node.attr
        for path in (ROOT / "tfclip_cli" / "train").glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
    }
    for section, section_type in typing.get_type_hints(Recipe).items():
        for key in dataclasses.fields(section_type):
            assert key.name in read, f"recipe key {section}.{key.name} is never read by the train package"


def test_a_recipe_that_is_not_utf8_is_a_recipe_error(tmp_path, manifest):
    path = tiny_recipe(tmp_path / "r.yaml", manifest=manifest, output_dir=tmp_path / "run")
    path.write_bytes(path.read_bytes() + b"# caf\xe9 in Latin-1\n")
    result = CliRunner().invoke(app, ["train", str(path)], terminal_width=300)
    assert result.exit_code == 2, result.output
    assert "is not UTF-8 text" in result.output and "Traceback" not in result.output


def test_base_recipes_merge_key_by_key_with_paths_relative_to_each_file(tmp_path, manifest):
    (tmp_path / "base").mkdir()
    (tmp_path / "studies").mkdir()
    _write(tmp_path / "base" / "root.yaml", {"data": {"manifest": "../m.parquet", "num_ids": 2, "seq_len": 4},
                                             "model": {"ssp_layers": 1, "sie": False},
                                             "run": {"output_dir": "runs/root", "seed": 5}})
    _write(tmp_path / "base" / "middle.yaml", {"base": "root.yaml", "solver": {"epochs": 7}})
    child = _write(tmp_path / "studies" / "child.yaml", {"base": "../base/middle.yaml",
                                                          "model": {"temporal": "mean"},
                                                          "run": {"output_dir": "out"}})
    recipe = load_recipe(child, ["run.seed=9"])
    assert recipe.data.manifest == manifest  # relative to base/root.yaml
    assert recipe.run.output_dir == tmp_path / "studies" / "out"  # relative to the child
    assert (recipe.data.seq_len, recipe.model.ssp_layers, recipe.model.sie) == (4, 1, False)  # kept from the base
    assert (recipe.model.temporal, recipe.solver.epochs, recipe.run.seed) == ("mean", 7, 9)
    write_recipe(recipe, tmp_path / "saved.yaml")  # what a run saves: resolved, no base
    saved = yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert "base" not in saved and saved["solver"]["epochs"] == 7
    assert load_recipe(tmp_path / "saved.yaml") == recipe


def test_base_cycles_and_missing_bases_are_named(tmp_path, manifest):
    _write(tmp_path / "a.yaml", {"base": "b.yaml"})
    _write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")
    _write(tmp_path / "c.yaml", {"base": "nowhere.yaml"})
    with pytest.raises(RecipeError, match="base: .*nowhere.yaml not found"):
        load_recipe(tmp_path / "c.yaml")


@pytest.mark.parametrize("name", ["baseline", "memory-fixed", "ssp", "tmd", "full", "temporal-attention"])
def test_ablation_recipes_resolve_over_mars_yaml(name, tmp_path, manifest):
    path = ROOT / "recipes" / "ablations" / f"{name}.yaml"
    recipe = load_recipe(path, [f"data.manifest={manifest}", "data.num_ids=2", "data.protocol=none"])
    mars = yaml.safe_load((ROOT / "recipes" / "mars.yaml").read_text())
    assert recipe.solver.base_lr == 5e-6 and recipe.model.backbone == mars["model"]["backbone"]
    assert recipe.run.output_dir == (ROOT / "runs" / f"mars-{'ablation-' if 'temporal' not in name else ''}{name}")
    expected = {"baseline": ("mean", 0, 0.0), "memory-fixed": ("mean", 0, 1.0), "ssp": ("mean", 2, 1.0),
                "tmd": ("tmd", 0, 0.0), "full": ("tmd", 2, 1.0), "temporal-attention": ("attention", 2, 1.0)}
    assert (recipe.model.temporal, recipe.model.ssp_layers, recipe.loss.v2m) == expected[name]
