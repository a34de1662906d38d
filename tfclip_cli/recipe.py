"""Training recipes: nested frozen dataclasses read from YAML, with dotted ``--set`` overrides and validation.

A recipe file holds the sections ``data``, ``model``, ``loss``, ``solver``, ``eval`` and ``run``; any key left out
takes the default written beside its field below (the reference settings, docs/fidelity.md#hyper-parameters). Relative
paths in a recipe (``data.manifest``, ``model.pretrained`` when it is a file, ``run.output_dir``) resolve against the
folder holding the recipe file, so a recipe works from any current directory; paths given with ``--set`` resolve against
the current directory, like any other command-line path.

A recipe may start with ``base: other.yaml`` (relative to its own folder): it then holds only what differs from that
recipe. Sections and mappings merge key by key (the inheriting file wins), each file's paths resolve against its own
folder, and bases may have bases. The recipe a run saves is the resolved one, without ``base``.

Every problem found raises :class:`RecipeError` naming the key path (``solver.base_lr``), what was found and what is
allowed, before any work starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from tfclip_cli.errors import RecipeError, UserError
from tfclip_cli.tables import read_manifest, require_known_identities

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Protocol = Literal["none", "mars", "lsvid", "ilidsvid", "prid2011"]
PRETRAINED_KEYWORDS = ("openai", "none")
PATH_KEYS = ("data.manifest", "model.pretrained", "run.output_dir")
TEST_SET_MAPPING = "eval.manifests"  # test-set name -> manifest path
BASE_KEY = "base"
TEST_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _bundled_recipes() -> Path:
    """The recipes/ folder: inside the package in an installed wheel (pyproject maps it to tfclip_cli/recipes),
    beside the package in a source checkout or editable install."""
    installed = Path(__file__).resolve().parent / "recipes"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[1] / "recipes"


BUNDLED_RECIPES = _bundled_recipes()


@dataclass(frozen=True)
class DataSection:
    """What is read and how clips are made (reference: configs/vit_clipreid.yml INPUT/DATALOADER; departures:
    docs/fidelity.md#preprocessing and #temporal-sampling)."""

    manifest: Path  # Parquet manifest written by `tfclip prepare`; needs a train split (and query/gallery to evaluate)
    seq_len: int = 8  # T, frames per clip (yml L23)
    image_size: tuple[int, int] = (256, 128)  # (height, width) every frame is resized to (yml L16)
    num_ids: int = 4  # P, identities per batch (yml L46: 16 tracklets / 4 instances)
    num_instances: int = 4  # K, tracklets per identity in a batch (yml L27)
    workers: int = 4  # DataLoader worker processes decoding frames (0 = decode in the training process)
    normalization: Literal["imagenet", "clip"] = "imagenet"  # mean/std; the reference uses ImageNet's
    flip_p: float = 0.5  # probability of flipping a whole training clip horizontally
    erase_p: float = 0.5  # probability of random erasing (of each frame with erase: frame, of each clip with clip)
    erase: Literal["frame", "clip"] = "frame"  # frame: the reference's per-frame boxes at its paste position;
    #                                            clip: tfclip's one box and colour on every frame of a clip
    train_sampling: Literal["rrs_train", "evenly"] = "rrs_train"  # frames of a training clip
    protocol: Protocol = "none"  # official protocol the manifest must be prepared for (train checks it); none: any


@dataclass(frozen=True)
class ModelSection:
    """The TF-CLIP model (reference: model/make_model_clipreid.py)."""

    backbone: str = "ViT-B-16"  # model config name (tfclip_cli/model_configs), e.g. ViT-B-16 or tfclip-tiny
    pretrained: str = "openai"  # initial CLIP weights: "openai", a local file (ViT-B-16.pt / state dict), or "none"
    sie: bool = True  # learn one camera embedding per train camera, added to CLS (docs/fidelity.md#sie)
    sie_coe: float = 1.0  # scale of the camera embedding (yml L13)
    temporal: Literal["tmd", "mean", "attention"] = "tmd"  # temporal branch: TMD (the paper; docs/fidelity.md#tmd); mean: the mean of
    #                                                        frame features (TF-CLIP without TMD); attention: a
    #                                                        learned softmax over frames (torchreid's `ta`)
    tmd_layers: int = 1  # Temporal Memory Diffusion blocks (docs/fidelity.md#tmd); read only with temporal: tmd
    ssp_layers: int = 2  # Sequence-Specific Prompt layers (docs/fidelity.md#ssp); 0: the CLIP-Memory stays fixed (no SSP)
    embedding: Literal["before_bn", "after_bn"] = "before_bn"  # test-time feature (yml NECK_FEAT 'before')


@dataclass(frozen=True)
class LossSection:
    """Weights of the loss parts (reference: yml L9-11; docs/fidelity.md#loss)."""

    id: float = 0.25  # label-smoothed cross-entropy on the CLS, projected-CLS and temporal classifiers
    triplet: float = 1.0  # batch-hard triplet on the CLS, projected-CLS and temporal features
    v2m: float = 1.0  # video-to-memory cross-entropy; 0: no CLIP-Memory at all (the image-encoder baseline; then
    #                   model.ssp_layers must be 0)


@dataclass(frozen=True)
class SolverSection:
    """Optimiser and learning-rate schedule (reference: yml SOLVER.STAGE2; docs/fidelity.md#hyper-parameters)."""

    optimizer: Literal["adam"] = "adam"  # the reference's Adam (yml L47)
    base_lr: float = 5e-6  # learning rate of every trainable parameter before the factors below (yml L48)
    weight_decay: float = 1e-4  # L2 weight decay of every parameter group, biases included (yml L52-53)
    bias_lr_factor: float = 2.0  # lr multiplier of parameters whose name contains "bias" (yml BIAS_LR_FACTOR)
    temporal_classifier_lr_factor: float = 10.0  # lr multiplier of the temporal classifier (yml LARGE_FC_LR)
    warmup_epochs: int = 10  # linear warm-up length in epochs; the schedule steps once per epoch (yml L49)
    warmup_factor: float = 0.1  # lr factor of the first epoch, rising linearly to 1 (yml L50)
    milestones: tuple[int, ...] = (30, 50, 70)  # epochs after which lr is multiplied by gamma (yml L62)
    gamma: float = 0.1  # lr decay factor at each milestone (yml L63)
    epochs: int = 80  # training epochs (yml L56)
    grad_accumulation: int = 1  # batches whose gradients add up before one optimiser step
    precision: Precision = "fp16"  # training and CLIP-Memory: fp16 autocast + grad scaler as the reference (fp32
    #                                without CUDA), bf16, fp32, or auto (bf16 on CUDA when supported, else fp16)


@dataclass(frozen=True)
class EvalSection:
    """Evaluation during training on the manifest's query/gallery splits (reference: processor L185-234)."""

    every: int = 2  # evaluate and write best.ckpt every N epochs, and after the last one (0 = only after the last)
    sampling: Literal["rrs_test", "dense"] = "rrs_test"  # test clips: one rrs clip, or all clips averaged
    gallery_rule: Literal["manifest", "includes_query", "gallery_only"] = "manifest"  # what queries rank against
    batch_size: int = 30  # tracklets per forward pass (rrs) (reference: make_dataloader_clipreid.py L170-184)
    precision: Precision = "fp32"  # the reference evaluates in fp32 (processor L209-222); fp16, bf16 or auto are faster
    manifests: dict[str, Path] = dataclasses.field(default_factory=dict)  # more test sets, name -> manifest (each
    #   evaluated with its own gallery rule and reported under its name; a dataset other than the training one is
    #   embedded without camera embedding), e.g. {ilidsvid: ../runs/ilidsvid/manifest.parquet}


@dataclass(frozen=True)
class RunSection:
    """Where a run writes and how it is seeded."""

    output_dir: Path  # run directory: recipe.yaml, memory.pt, last.ckpt, best.ckpt, metrics.csv
    seed: int = 1234  # seeds model initialisation, sampling and augmentation (yml SOLVER.SEED)
    log_every: int = 10  # iterations between rows of metrics.csv (the last iteration of an epoch always logs)


@dataclass(frozen=True)
class Recipe:
    """A whole training recipe; a section left out of the YAML file takes its defaults."""

    data: DataSection
    model: ModelSection
    loss: LossSection
    solver: SolverSection
    eval: EvalSection
    run: RunSection


def load_recipe(path: Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply ``section.key=value`` overrides and validate everything.

    Args:
        path: the recipe file; relative paths inside it resolve against its folder.
        overrides: dotted assignments, e.g. ``["solver.epochs=10"]``; values are parsed as YAML.

    Raises:
        RecipeError: naming the key path, what was found and what is allowed.
    """
    path = Path(path)
    raw = _read_with_bases(path, chain=())
    for assignment in overrides or []:
        _apply_override(raw, assignment)
    recipe = _build(Recipe, raw, "", base=path.resolve().parent)
    _check_values(recipe)
    _check_manifest(recipe)
    _check_test_sets(recipe)
    return recipe


def _read_with_bases(path: Path, *, chain: tuple[Path, ...]) -> dict:
    """The recipe file with its ``base`` chain merged in, every path key made absolute against its own file."""
    raw = _read_yaml(path)
    _absolute_paths(raw, path.resolve().parent)
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise RecipeError(f"{path}: base: found {_describe(base)}; expected the path of a recipe to inherit from")
    base_path = (path.resolve().parent / Path(base).expanduser()).resolve()
    if base_path in (*chain, path.resolve()):
        cycle = " -> ".join(str(p) for p in (*chain, path.resolve(), base_path))
        raise RecipeError(f"{path}: base: the recipes inherit from each other in a cycle ({cycle})")
    if not base_path.is_file():
        raise RecipeError(f"{path}: base: {base_path} not found", hint="base is relative to the recipe's own folder")
    return _merged(_read_with_bases(base_path, chain=(*chain, path.resolve())), raw)


def _merged(base: dict, override: dict) -> dict:
    """``base`` updated by ``override``; mappings present in both merge key by key."""
    result = dict(base)
    for key, value in override.items():
        both_mappings = isinstance(value, dict) and isinstance(result.get(key), dict)
        result[key] = _merged(result[key], value) if both_mappings else value
    return result


def _absolute_path(value: Any, folder: Path) -> Any:
    """A non-empty string path made absolute against ``folder`` (other values are left for validation to name)."""
    if isinstance(value, str) and value and value not in PRETRAINED_KEYWORDS:
        return str((folder / Path(value).expanduser()).resolve())
    return value


def _absolute_paths(raw: dict, folder: Path) -> None:
    """Resolve the path keys of one file's raw mapping against its folder, in place."""
    for key in (*PATH_KEYS, TEST_SET_MAPPING):
        section, name = key.split(".")
        node = raw.get(section)
        if not isinstance(node, dict) or name not in node:
            continue
        value = node[name]
        if key == TEST_SET_MAPPING and isinstance(value, dict):
            node[name] = {test_set: _absolute_path(item, folder) for test_set, item in value.items()}
        elif key != TEST_SET_MAPPING:
            node[name] = _absolute_path(value, folder)


def recipe_to_dict(recipe: Recipe) -> dict:
    """A plain dict (str paths, list tuples) that :func:`load_recipe` reads back into an equal Recipe."""
    return _plain(dataclasses.asdict(recipe))


def write_recipe(recipe: Recipe, path: Path) -> None:
    """Write the effective recipe as YAML (absolute paths, every key)."""
    Path(path).write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise RecipeError(f"recipe {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise RecipeError(f"recipe {path} is not UTF-8 text (byte {exc.start}: {exc.reason})",
                          hint="save the recipe as UTF-8") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path} is not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path} holds a {type(raw).__name__}; expected a mapping of sections")
    return raw


def _apply_override(raw: dict, assignment: str) -> None:
    """Set ``a.b=value`` in the nested dict; the value is parsed as YAML (``10`` → int, ``[1, 2]`` → list)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {assignment!r}: expected section.key=value, e.g. --set solver.epochs=10")
    parts = key.strip().split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"--set {assignment!r}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {assignment!r}: the value is not valid YAML ({exc})") from exc
    dotted = ".".join(parts)
    if dotted in PATH_KEYS or dotted.startswith(TEST_SET_MAPPING + "."):
        value = _absolute_path(value, Path.cwd())
    elif dotted == TEST_SET_MAPPING and isinstance(value, dict):
        value = {test_set: _absolute_path(item, Path.cwd()) for test_set, item in value.items()}
    node[parts[-1]] = value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _build(cls: type, raw: Any, prefix: str, *, base: Path) -> Any:
    """Turn a nested dict into the dataclass ``cls``, checking keys and types; sections left out take defaults."""
    where = prefix or "the recipe"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: found {_describe(raw)}; expected a mapping of keys")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise RecipeError(f"unknown key {_join(prefix, str(unknown[0]))}; allowed in {where}: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in fields.items():
        key = _join(prefix, name)
        if dataclasses.is_dataclass(hints[name]):
            values[name] = _build(hints[name], raw.get(name), key, base=base)
        elif name in raw:
            values[name] = _convert(raw[name], hints[name], key, base=base)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{key} is required but missing")
    return cls(**values)


def _convert(value: Any, hint: Any, key: str, *, base: Path) -> Any:
    """Check one value against its field type and return it in that type."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise RecipeError(f"{key}: found {_describe(value)}; allowed: {', '.join(map(str, allowed))}")
        return value
    if origin is tuple:
        return _convert_tuple(value, hint, key)
    if origin is dict:
        return _convert_test_sets(value, key, base=base)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise RecipeError(f"{key}: found {_describe(value)}; expected a path")
        return (base / Path(value).expanduser()).resolve()
    return _convert_scalar(value, hint, key)


def _convert_test_sets(value: Any, key: str, *, base: Path) -> dict[str, Path]:
    """A mapping of test-set names (letters, digits, ``_.-``) to manifest paths."""
    if not isinstance(value, dict):
        raise RecipeError(f"{key}: found {_describe(value)}; expected a mapping of test-set names to manifests, "
                          "e.g. {ilidsvid: ../runs/ilidsvid/manifest.parquet}")
    result = {}
    for name, path in value.items():
        if not isinstance(name, str) or not TEST_SET_NAME.fullmatch(name):
            raise RecipeError(f"{key}: test-set name {name!r} is not allowed; expected letters, digits, _ . -")
        result[name] = _convert(path, Path, f"{key}.{name}", base=base)
    return result


def _convert_scalar(value: Any, hint: type, key: str) -> Any:
    if hint is float:
        return _convert_float(value, key)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (bool, str) and isinstance(value, hint):
        return value
    raise RecipeError(f"{key}: found {_describe(value)}; expected {hint.__name__}")


def _convert_float(value: Any, key: str) -> float:
    """A finite number (YAML's ``.inf`` and ``.nan`` are refused: no setting of a recipe means them)."""
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        # YAML 1.1 (PyYAML) reads ``5e-6`` (no dot) as a string; accept what Python reads as a number.
        with contextlib.suppress(ValueError):
            number = float(value)
    if number is None or not math.isfinite(number):
        raise RecipeError(f"{key}: found {_describe(value)}; expected a finite number")
    return number


def _convert_tuple(value: Any, hint: Any, key: str) -> tuple:
    args = typing.get_args(hint)
    variadic = len(args) == 2 and args[1] is Ellipsis
    expected = "a list of integers" if variadic else f"a list of {len(args)} integers"
    if not isinstance(value, (list, tuple)) or (not variadic and len(value) != len(args)):
        raise RecipeError(f"{key}: found {_describe(value)}; expected {expected}")
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        raise RecipeError(f"{key}: found {_describe(value)}; expected {expected}")
    return tuple(value)


def _value_rules(recipe: Recipe) -> list[tuple[str, bool, str]]:
    """(key path, is the value allowed, what is allowed) for every range rule."""
    data, model, loss, solver, run = recipe.data, recipe.model, recipe.loss, recipe.solver, recipe.run
    milestones = list(solver.milestones)
    return [
        ("data.seq_len", data.seq_len >= 1, "an integer >= 1"),
        ("data.image_size", min(data.image_size) >= 1, "[height, width], both >= 1"),
        ("data.num_ids", data.num_ids >= 1, "an integer >= 1"),
        ("data.num_instances", data.num_instances >= 1, "an integer >= 1"),
        ("data.workers", data.workers >= 0, "an integer >= 0"),
        ("data.flip_p", 0.0 <= data.flip_p <= 1.0, "a probability in [0, 1]"),
        ("data.erase_p", 0.0 <= data.erase_p <= 1.0, "a probability in [0, 1]"),
        ("model.sie_coe", model.sie_coe > 0, "a number > 0"),
        ("model.tmd_layers", model.tmd_layers >= 1, "an integer >= 1"),
        ("model.ssp_layers", model.ssp_layers >= 0, "an integer >= 0 (0: a fixed CLIP-Memory)"),
        ("model.ssp_layers", model.ssp_layers == 0 or loss.v2m > 0,
         "0 when loss.v2m is 0 (no CLIP-Memory for SSP to update)"),
        ("loss.id", loss.id >= 0, "a weight >= 0"),
        ("loss.triplet", loss.triplet >= 0, "a weight >= 0"),
        ("loss.v2m", loss.v2m >= 0, "a weight >= 0"),
        ("solver.base_lr", solver.base_lr > 0, "a learning rate > 0"),
        ("solver.weight_decay", solver.weight_decay >= 0, "a number >= 0"),
        ("solver.bias_lr_factor", solver.bias_lr_factor > 0, "a factor > 0"),
        ("solver.temporal_classifier_lr_factor", solver.temporal_classifier_lr_factor > 0, "a factor > 0"),
        ("solver.warmup_epochs", solver.warmup_epochs >= 0, "an integer >= 0"),
        ("solver.warmup_factor", 0 < solver.warmup_factor <= 1, "a factor in (0, 1]"),
        ("solver.milestones", milestones == sorted(set(milestones)) and min(milestones, default=1) >= 1,
         "strictly increasing epochs >= 1"),
        ("solver.gamma", solver.gamma > 0, "a factor > 0"),
        ("solver.epochs", solver.epochs >= 1, "an integer >= 1"),
        ("solver.grad_accumulation", solver.grad_accumulation >= 1, "an integer >= 1"),
        ("eval.every", recipe.eval.every >= 0, "an integer >= 0 (0 = only after the last epoch)"),
        ("eval.batch_size", recipe.eval.batch_size >= 1, "an integer >= 1"),
        ("run.log_every", run.log_every >= 1, "an integer >= 1"),
    ]


def _check_values(recipe: Recipe) -> None:
    for key, allowed, what in _value_rules(recipe):
        if not allowed:
            section, name = key.split(".")
            found = getattr(getattr(recipe, section), name)
            raise RecipeError(f"{key}: found {_describe(found)}; allowed: {what}")
    _check_pretrained(recipe.model.pretrained)


def _check_pretrained(pretrained: str) -> None:
    if pretrained not in PRETRAINED_KEYWORDS and not Path(pretrained).is_file():
        raise RecipeError(
            f"model.pretrained: {pretrained} is not a file; allowed: openai, none, or a weight file "
            "(OpenAI's ViT-B-16.pt or an open_clip state dict; relative to the recipe's folder)"
        )


def _check_manifest(recipe: Recipe) -> None:
    """The manifest exists, labels every identity, has a train split, and enough train identities for P
    identities per batch."""
    path = recipe.data.manifest
    try:
        manifest = read_manifest(path)
    except UserError as exc:
        raise RecipeError(f"data.manifest: {exc.message}", hint="write one with `tfclip prepare`") from exc
    require_known_identities(manifest.table["pid"], source=f"data.manifest: {path}", use="training")
    train = manifest.table[manifest.table["split"] == "train"]
    if train.empty:
        counts = ", ".join(f"{name} {count}" for name, count in manifest.split_counts().items())
        raise RecipeError(f"data.manifest: {path} has no train split ({counts}); allowed: a manifest with train rows")
    num_pids = int(train["pid"].nunique())
    if recipe.data.num_ids > num_pids:
        raise RecipeError(
            f"data.num_ids: found {recipe.data.num_ids}, but the train split of {path} has {num_pids} identities; "
            f"a P×K batch ({recipe.data.num_ids}×{recipe.data.num_instances}) needs P distinct identities; "
            f"allowed: 1..{num_pids}"
        )


def _check_test_sets(recipe: Recipe) -> None:
    """Every extra test set is a readable manifest with query and gallery rows, named apart from the training
    manifest's own test set (reported under its dataset name)."""
    own = read_manifest(recipe.data.manifest).info.dataset
    for name, path in recipe.eval.manifests.items():
        key = f"{TEST_SET_MAPPING}.{name}"
        if name == own:
            raise RecipeError(f"{key}: the training manifest's own test set is already reported as {own!r}",
                              hint=f"give this test set another name than {own!r}")
        try:
            counts = read_manifest(path).split_counts()
        except UserError as exc:
            raise RecipeError(f"{key}: {exc.message}", hint="write one with `tfclip prepare`") from exc
        if not counts["query"] or not counts["gallery"]:
            raise RecipeError(f"{key}: {path} has {counts['query']} query and {counts['gallery']} gallery tracklets; "
                              "allowed: a manifest with both")
