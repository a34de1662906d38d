"""Every weight file tfclip reads or writes.

- tfclip checkpoints: one ``torch.save`` file of plain dicts and tensors (loadable with ``weights_only=True``):
  format version, model config, weights, pid mapping, CLIP-Memory, recipe and the state needed to resume.
- CLIP weights to start from: OpenAI's ViT-B/16 through open_clip (``"openai"``), a local file (OpenAI's JIT archive
  ``ViT-B-16.pt``, an open_clip or OpenAI state dict, ``.safetensors``), or ``"none"``; the positional grid is
  resized bilinearly like the reference (model/clip/model.py L451-467).
- The state dicts saved by the reference implementation, converted key by key by :func:`import_reference_checkpoint`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F

from tfclip_cli import __version__
from tfclip_cli.errors import CheckpointError, RecipeError
from tfclip_cli.model import TFCLIP, ModelConfig, backbone_names, backbone_spec, build_model
from tfclip_cli.model.text import TextTransformer, build_text_encoder, text_spec
from tfclip_cli.tables import atomic_output

logger = logging.getLogger(__name__)

FORMAT = "tfclip-checkpoint"
FORMAT_VERSION = 1
SHOWN_KEYS = 8  # keys listed per group in an error message


@dataclass
class Checkpoint:
    """The content of a tfclip checkpoint file."""

    model_config: dict[str, Any]  # ModelConfig.to_dict()
    model_state: dict[str, torch.Tensor]  # TFCLIP.state_dict()
    pid_to_label: dict[int, int]  # dataset pid -> training label (classifier and memory row); empty when unknown
    memory: torch.Tensor | None = None  # CLIP-Memory features [Y, proj_dim]
    recipe: dict[str, Any] | None = None  # the effective recipe of the training run
    training_state: dict[str, Any] | None = None  # optimizer, scheduler, scaler, RNG, epoch, best metric
    provenance: dict[str, Any] = field(default_factory=dict)  # e.g. the reference file it was imported from

    @property
    def normalization(self) -> str:
        """The frame normalisation the model was trained with: its recipe's, else ImageNet's (the reference's),
        e.g. for an imported reference checkpoint, which carries no recipe."""
        return (self.recipe or {}).get("data", {}).get("normalization", "imagenet")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(checkpoint: Checkpoint, path: Path, *, force: bool = True) -> None:
    """Write ``checkpoint`` atomically (a crash never leaves half a file); overwrites unless ``force`` is false."""
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "tfclip_version": __version__, **vars(checkpoint)}
    write_torch_file(payload, path, force=force)


def write_torch_file(payload: dict[str, Any], path: Path, *, force: bool) -> None:
    """``torch.save`` atomically through a Python file object, so a full disk or a read-only folder surfaces as an
    OSError that ``atomic_output`` names (torch's own writer says only "unexpected pos ... vs ...")."""
    with atomic_output(Path(path), force=force) as temp, open(temp, "wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a tfclip checkpoint on the CPU.

    Raises:
        CheckpointError: the file is missing, unreadable, not a tfclip checkpoint or from a newer tfclip.
    """
    path = Path(path)
    payload = _read_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = sorted(map(str, payload))[:SHOWN_KEYS] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not a tfclip checkpoint (found {found})",
            hint="a state dict saved by the TF-CLIP reference code converts with `tfclip import-checkpoint`",
        )
    version = payload.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path} has no format version (found {version!r}); expected an integer up to "
                              f"{FORMAT_VERSION}", hint="the file is damaged: use another checkpoint")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}; this tfclip reads up to {FORMAT_VERSION}", hint="upgrade tfclip"
        )
    _check_fields(payload, path)
    fields = Checkpoint.__dataclass_fields__
    return Checkpoint(**{name: payload[name] for name in fields if name in payload})


# The types every field of a checkpoint file may have; the first three must be present.
CHECKPOINT_TYPES = {"model_config": (dict,), "model_state": (dict,), "pid_to_label": (dict,),
                    "memory": (torch.Tensor, type(None)), "recipe": (dict, type(None)),
                    "training_state": (dict, type(None)), "provenance": (dict,)}
REQUIRED_FIELDS = ("model_config", "model_state", "pid_to_label")


def _check_fields(payload: dict, path: Path) -> None:
    """Raise a CheckpointError naming the first field that is missing or of the wrong type."""
    hint = "the file is damaged or was not written by tfclip: use another checkpoint"
    for name, types in CHECKPOINT_TYPES.items():
        if name not in payload and name not in REQUIRED_FIELDS:
            continue
        if name not in payload or not isinstance(payload[name], types):
            found = type(payload[name]).__name__ if name in payload else "nothing"
            expected = " or ".join(kind.__name__ for kind in types)
            raise CheckpointError(f"{path}: field {name} holds {found}; expected {expected}", hint=hint)
    if not all(isinstance(value, torch.Tensor) for value in payload["model_state"].values()):
        raise CheckpointError(f"{path}: field model_state holds values that are not tensors", hint=hint)


def _read_torch_file(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with every failure a CheckpointError that gives the reason in one line."""
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted copy or download?")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable PyTorch file: {_load_failure(error)}") from error


def _load_failure(error: Exception) -> str:
    """torch.load's reason in one line: for a file holding Python objects, the global it names, never torch's
    advice to load with ``weights_only=False`` (which would run code from the file)."""
    text = str(error)
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsupported:
        return f"it holds Python objects ({unsupported.group(1)}), not only tensors, and tfclip does not run them"
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return lines[0] if lines else f"{type(error).__name__} (truncated or not a PyTorch file)"


def model_from_checkpoint(checkpoint: Checkpoint, device: torch.device | str) -> TFCLIP:
    """Rebuild the model a checkpoint describes, load its weights and put it in eval mode on ``device``.

    Raises:
        CheckpointError: the config is invalid or the weights do not fit it.
    """
    try:
        config = ModelConfig.from_dict(checkpoint.model_config)
    except (TypeError, RecipeError) as error:
        raise CheckpointError(f"checkpoint model config is invalid: {error}") from error
    model = build_model(config)
    _check_keys(model.state_dict(), checkpoint.model_state, "checkpoint")
    model.load_state_dict(checkpoint.model_state)
    return model.to(device).eval()


def _check_keys(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], what: str) -> None:
    """Raise a CheckpointError listing missing keys, unexpected keys and shape mismatches, if any."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{key} {tuple(found[key].shape)} != {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(found))
        if found[key].shape != expected[key].shape
    ]
    groups = (("missing", missing), ("unexpected", unexpected), ("shape mismatch (found != expected)", mismatched))
    for label, keys in groups:
        if keys:
            more = f" ... (+{len(keys) - SHOWN_KEYS})" if len(keys) > SHOWN_KEYS else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:SHOWN_KEYS])}{more}")
    if problems:
        raise CheckpointError(f"{what} does not fit the model: " + "; ".join(problems))


def load_clip_weights(model: TFCLIP, source: str) -> None:
    """Initialise the model's CLIP image encoder from pretrained weights.

    Args:
        model: a freshly built model; only ``model.backbone`` changes.
        source: ``"openai"`` (OpenAI's weights for the backbone through open_clip: downloaded once into its cache),
            ``"none"`` (keep the random initialisation), or a local file: OpenAI's JIT archive (``ViT-B-16.pt``),
            an open_clip / OpenAI state dict (``visual.*`` keys, optionally under ``state_dict``) or ``.safetensors``.

    Raises:
        CheckpointError: the weights cannot be downloaded or read, or do not fit the backbone (keys listed).
    """
    if source == "none":
        logger.info("CLIP weights: none, the backbone keeps its random initialisation")
        return
    path = _download_openai(model.config.backbone) if source == "openai" else Path(source)
    visual = _visual_state(_read_clip_file(path), path)
    grid = model.backbone.grid_size
    if "positional_embedding" in visual:
        visual["positional_embedding"] = _resize_positions(visual["positional_embedding"], grid, path)
    _check_keys(model.backbone.vit.state_dict(), visual, f"CLIP weights {path}")
    model.backbone.vit.load_state_dict(visual)
    logger.info("CLIP weights: %d vision tensors from %s (grid %dx%d)", len(visual), path, *grid)


def _download_openai(backbone: str) -> Path:
    """The local path of OpenAI's weights for ``backbone``, downloading them into open_clip's cache once."""
    config = open_clip.get_pretrained_cfg(backbone, "openai")
    if not config:
        raise CheckpointError(
            f"there are no OpenAI CLIP weights for backbone {backbone!r}",
            hint="OpenAI weights exist for ViT-B-16; set model.pretrained to none or to a local weight file",
        )
    try:
        return Path(open_clip.download_pretrained(config))
    except Exception as error:  # network, HTTP and hub errors all mean the same to the user
        raise CheckpointError(
            f"could not download OpenAI CLIP weights for {backbone}: {error}".splitlines()[0],
            hint="on a machine without network, copy OpenAI's ViT-B-16.pt there and set model.pretrained to its path",
        ) from error


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives (OpenAI's ``ViT-B-16.pt``) are zip files holding serialized code beside the weights."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


# The only globals a TorchScript archive's data.pkl may name besides its own ``__torch__.*`` module classes.
TORCHSCRIPT_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("collections", "OrderedDict"),
    *(("torch.jit._pickle", name) for name in ("build_intlist", "build_floatlist", "build_boollist",
                                               "build_tensorlist", "build_doublelist", "restore_type_tag")),
}


STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Stands in for a TorchScript class while unpickling: records its attributes, runs none of its code."""

    def __setstate__(self, state: object) -> None:
        self.attributes = state if isinstance(state, dict) else {}


class _TorchScriptUnpickler(pickle.Unpickler):
    """Reads a TorchScript archive's ``data.pkl`` like a weights-only loader: tensors come from the archive's data
    records, module classes become :class:`_ScriptObject`, and any other global is refused, so nothing in the file
    runs (``torch.jit.load`` would execute the archive's code, e.g. a ``__setstate__`` that writes files)."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(archive.open(f"{prefix}data.pkl"))
        self.archive, self.prefix, self.path = archive, prefix, path

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if (module, name) not in TORCHSCRIPT_GLOBALS:
            raise CheckpointError(
                f"CLIP weights {self.path}: the TorchScript archive names {module}.{name}, which a weights-only "
                "reader does not run", hint="export the weights as a state dict (.pt of tensors or .safetensors)")
        if module == "torch._utils":
            return _rebuild_tensor
        if module == "collections":
            return dict
        return lambda value, *_: value  # torch.jit._pickle helpers only restore list types

    def persistent_load(self, record: tuple) -> torch.Tensor:
        """('storage', dtype (from a storage class name), key, location, numel) -> a flat tensor from ``data/<key>``."""
        _, dtype, key, _, numel = record
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"storage record {record!r} names no tensor type")
        raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return flat[:numel]


def _rebuild_tensor(flat: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: object) -> torch.Tensor:
    return torch.as_strided(flat, size, stride, offset).clone()


def _script_tensors(node: _ScriptObject, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a module tree, keyed like ``state_dict()`` (``visual.conv1.weight``)."""
    found = {}
    for name, value in getattr(node, "attributes", {}).items():
        if isinstance(value, torch.Tensor):
            found[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            found.update(_script_tensors(value, f"{prefix}{name}."))
    return found


def _read_torchscript_weights(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a TorchScript archive (OpenAI's ``ViT-B-16.pt``) without executing any of its code."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [name for name in names if name.endswith("data.pkl") and name.count("/") == 1]
        if not pickles:
            raise CheckpointError(f"CLIP weights {path}: a TorchScript archive without data.pkl")
        prefix = pickles[0].removesuffix("data.pkl")
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
            raise CheckpointError(f"CLIP weights {path}: big-endian TorchScript archives are not supported")
        try:
            root = _TorchScriptUnpickler(archive, prefix, path).load()
        except (pickle.UnpicklingError, AttributeError, EOFError, LookupError, RuntimeError, TypeError,
                ValueError) as error:  # a damaged or hostile pickle fails in any of these ways
            raise CheckpointError(f"CLIP weights {path}: unreadable TorchScript archive ({error})") from error
    if not isinstance(root, _ScriptObject):
        raise CheckpointError(f"CLIP weights {path}: the TorchScript archive holds no module")
    return _script_tensors(root)


def _read_clip_file(path: Path) -> dict[str, torch.Tensor]:
    """A CLIP weight file as a flat state dict (``module.`` prefixes and a ``state_dict`` wrapper removed)."""
    if not path.is_file():
        raise CheckpointError(f"CLIP weights {path} not found", hint="model.pretrained is openai, none or a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path, device="cpu")
    elif _is_torchscript(path):
        state = _read_torchscript_weights(path)
    else:
        state = _read_torch_file(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"CLIP weights {path} hold a {type(state).__name__}, not a state dict")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_text_encoder(path: Path, *, quick_gelu: bool) -> TextTransformer:
    """CLIP's text tower from a full CLIP weight file (OpenAI's JIT archive, an open_clip or OpenAI state dict).

    Raises:
        CheckpointError: the file is unreadable or holds no text tower (e.g. an image-encoder-only file).
    """
    path = Path(path)
    state = {key: value.float() for key, value in _read_clip_file(path).items()
             if not key.startswith("visual.") and key not in ("logit_scale", "attn_mask", "input_resolution",
                                                                 "context_length", "vocab_size")}
    try:
        spec = text_spec(state)
    except KeyError as error:
        raise CheckpointError(f"CLIP weights {path} have no text tower (no {error.args[0]})",
                              hint="pass the full CLIP weights, e.g. OpenAI's ViT-B-16.pt") from error
    encoder = build_text_encoder(spec, quick_gelu=quick_gelu)
    _check_keys(encoder.state_dict(), state, f"the text tower of {path}")
    encoder.load_state_dict(state)
    return encoder


def _visual_state(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The image encoder's tensors with ``visual.`` removed, in float32 (OpenAI's archive stores float16)."""
    visual = {key.removeprefix("visual."): value.float() for key, value in state.items() if key.startswith("visual.")}
    if not visual:
        raise CheckpointError(
            f"CLIP weights {path} have no visual.* keys (found {sorted(state)[:SHOWN_KEYS]})",
            hint="expected OpenAI's JIT archive or an open_clip CLIP state dict",
        )
    return visual


def _resize_positions(positions: torch.Tensor, grid: tuple[int, int], path: Path) -> torch.Tensor:
    """Resize a square positional grid [1 + g*g, D] to ``grid`` bilinearly, CLS row kept (reference L451-467).

    open_clip resizes bicubically with antialiasing; TF-CLIP's published results used bilinear
    (docs/fidelity.md#entry-points-and-initialisation).
    """
    if positions.shape[0] == 1 + grid[0] * grid[1]:
        return positions
    side = math.isqrt(positions.shape[0] - 1)
    if side * side != positions.shape[0] - 1:
        raise CheckpointError(
            f"CLIP weights {path}: positional embedding has {positions.shape[0] - 1} patch rows, not a square grid "
            f"to resize to {grid[0]}x{grid[1]}"
        )
    square = positions[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)  # [1, D, g, g]
    resized = F.interpolate(square, size=grid, mode="bilinear", align_corners=False)
    logger.info("positional embedding resized %dx%d -> %dx%d (bilinear)", side, side, *grid)
    return torch.cat([positions[:1], resized.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])


# The reference model's state-dict keys (model/make_model_clipreid.py build_transformer) -> ours, by full match.
# None marks a tensor the reference declares but its forward never uses (SSP.norm, SSP.alpha, classifier_proj_temp2).
REFERENCE_KEYS: tuple[tuple[str, str | None], ...] = (
    (r"image_encoder\.(.+)", r"backbone.vit.\1"),
    (r"cv_embed", "camera_embedding"),
    (r"TMD\.resblocks\.(\d+)\.message_fc\.(.+)", r"tmd.blocks.\1.memory_fc.\2"),
    (r"TMD\.resblocks\.(\d+)\.message_ln\.(.+)", r"tmd.blocks.\1.memory_norm.\2"),
    (r"TMD\.resblocks\.(\d+)\.message_attn\.(.+)", r"tmd.blocks.\1.memory_attn.\2"),
    (r"TMD\.resblocks\.(\d+)\.ln_1\.(.+)", r"tmd.blocks.\1.norm1.\2"),
    (r"TMD\.resblocks\.(\d+)\.ln_2\.(.+)", r"tmd.blocks.\1.norm2.\2"),
    (r"TMD\.resblocks\.(\d+)\.(attn|mlp)\.(.+)", r"tmd.blocks.\1.\2.\3"),
    (r"SSP\.memory_proj\.(.+)", r"ssp.video_proj.\1"),
    (r"SSP\.text_proj\.(.+)", r"ssp.memory_proj.\1"),
    (r"SSP\.out_proj\.(.+)", r"ssp.out_proj.\1"),
    (r"SSP\.decoder\.(\d+)\.(self_attn|cross_attn)\.proj\.(.+)", r"ssp.layers.\1.\2.out_proj.\3"),
    (r"SSP\.decoder\.(\d+)\.(self_attn|cross_attn)\.([qkv]_proj\.weight)", r"ssp.layers.\1.\2.\3"),
    (r"SSP\.decoder\.(\d+)\.(norm[123]\..+)", r"ssp.layers.\1.\2"),
    (r"SSP\.decoder\.(\d+)\.mlp\.0\.(.+)", r"ssp.layers.\1.mlp.fc.\2"),
    (r"SSP\.decoder\.(\d+)\.mlp\.3\.(.+)", r"ssp.layers.\1.mlp.proj.\2"),
    (r"SSP\.norm\.(weight|bias)|SSP\.alpha", None),
    (r"bottleneck\.(.+)", r"neck_cls.\1"),
    (r"bottleneck_proj\.(.+)", r"neck_proj.\1"),
    (r"bottleneck_proj_temp\.(.+)", r"neck_frame.\1"),
    (r"bottleneck_proj_temp2\.(.+)", r"neck_temporal.\1"),
    (r"classifier2\.weight", "classifier_cls.weight"),
    (r"classifier_proj\.weight", "classifier_proj.weight"),
    (r"classifier_proj_temp\.weight", "classifier_temporal.weight"),
    (r"classifier_proj_temp2\.weight", None),
)
IMAGE_ASPECTS = (2, 3, 1)  # grid rows per column tried when inferring the input size: 256x128, 384x128, square


def import_reference_checkpoint(
    source: Path, *, image_size: tuple[int, int] | None = None, seq_len: int = 8
) -> Checkpoint:
    """Convert a state dict saved by the reference implementation into a tfclip checkpoint.

    The model config is inferred from the tensor shapes (backbone by width, layers, patch and projection; cameras;
    classes; TMD and SSP layers). reference: processor L229-234 (bare state dicts), model L306-310 (``module.``).

    Args:
        source: ``checkpoint_ep.pth.tar`` / ``best_model.pth.tar`` or any state dict of ``build_transformer``.
        image_size: (height, width); None infers it from the positional grid (2:1, then 3:1, then square).
        seq_len: T the model was trained with (not stored in the weights; the reference yml uses 8).

    Raises:
        CheckpointError: the file is unreadable, or has unknown keys, missing keys or shape mismatches (listed).
    """
    source = Path(source)
    state = _read_torch_file(source)
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(f"{source} is not a state dict of tensors", hint="expected the reference's .pth.tar")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    mapped, ignored = _rename_reference_keys(state, source)
    config = _infer_reference_config(state, source, image_size=image_size, seq_len=seq_len)
    model = build_model(config)
    _check_keys(model.state_dict(), mapped, f"reference checkpoint {source}")
    model.load_state_dict(mapped)
    logger.info("imported %d tensors from %s; ignored (unused by the reference): %s", len(mapped), source, ignored)
    return Checkpoint(
        model_config=config.to_dict(),
        model_state=model.state_dict(),
        pid_to_label={},
        provenance={"imported_from": str(source), "source_sha256": file_sha256(source), "ignored_keys": ignored},
    )


def _rename_reference_keys(
    state: dict[str, torch.Tensor], source: Path
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our state dict, the reference keys dropped as unused); unknown keys raise a CheckpointError."""
    mapped, ignored, unknown = {}, [], []
    for key, value in state.items():
        rule = next(((pattern, target) for pattern, target in REFERENCE_KEYS if re.fullmatch(pattern, key)), None)
        if rule is None:
            unknown.append(key)
        elif rule[1] is None:
            ignored.append(key)
        else:
            mapped[re.sub(rule[0], rule[1], key)] = value
    if unknown:
        shown = ", ".join(sorted(unknown)[:SHOWN_KEYS])
        raise CheckpointError(
            f"{source}: {len(unknown)} keys the reference TF-CLIP model does not have: {shown}",
            hint="expected keys image_encoder.*, cv_embed, TMD.*, SSP.*, bottleneck*, classifier*",
        )
    return mapped, sorted(ignored)


def _required(state: dict[str, torch.Tensor], key: str, source: Path) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{source}: missing key {key}, needed to infer the model config")
    return state[key]


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of distinct block indices under ``prefix`` (e.g. ``TMD.resblocks.``); 0 when there are none."""
    return len({m.group(1) for key in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", key))})


def _infer_reference_config(
    state: dict[str, torch.Tensor], source: Path, *, image_size: tuple[int, int] | None, seq_len: int
) -> ModelConfig:
    """The ModelConfig whose model has the shapes of a reference state dict."""
    conv = _required(state, "image_encoder.conv1.weight", source)
    width, patch = conv.shape[0], conv.shape[-1]
    proj_dim = _required(state, "image_encoder.proj", source).shape[1]
    layers = _count_blocks(state, "image_encoder.transformer.resblocks.")
    patches = _required(state, "image_encoder.positional_embedding", source).shape[0] - 1
    tmd_layers = _count_blocks(state, "TMD.resblocks.")
    return ModelConfig(
        backbone=_match_backbone(width, layers, patch, proj_dim, source),
        image_size=image_size or _infer_image_size(patches, patch, source),
        seq_len=seq_len,
        num_classes=_required(state, "classifier2.weight", source).shape[0],
        num_cameras=state["cv_embed"].shape[0] if "cv_embed" in state else 0,
        # a state dict without TMD or SSP (an ablated model) imports as temporal "mean" or a fixed memory
        temporal="tmd" if tmd_layers else "mean",
        tmd_layers=tmd_layers,
        ssp_layers=_count_blocks(state, "SSP.decoder."),
    )


def _match_backbone(width: int, layers: int, patch: int, proj_dim: int, source: Path) -> str:
    """The registered backbone config with these dimensions."""
    for name in backbone_names():
        spec = backbone_spec(name)
        if (spec.width, spec.layers, spec.patch_size, spec.proj_dim) == (width, layers, patch, proj_dim):
            return name
    raise CheckpointError(
        f"{source}: no backbone config has width {width}, {layers} layers, patch {patch} and projection {proj_dim}",
        hint="add an open_clip-format JSON with these dimensions to tfclip_cli/model_configs/",
    )


def _infer_image_size(patches: int, patch: int, source: Path) -> tuple[int, int]:
    """(height, width) whose patch grid has ``patches`` cells, trying portrait aspects first."""
    for aspect in IMAGE_ASPECTS:
        columns = math.isqrt(patches // aspect)
        if aspect * columns * columns == patches:
            return aspect * columns * patch, columns * patch
    raise CheckpointError(f"{source}: cannot infer the input size from a {patches}-patch positional grid")
