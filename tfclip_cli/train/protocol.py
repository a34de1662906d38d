"""What protocol a run follows: the recipe/manifest check behind ``data.protocol``, and the summary ``tfclip train``
logs before any work, to compare with the paper (docs/fidelity.md#preprocessing to #precision).

Tracklet cutting lives in ``tfclip prepare`` (LS-VID training chunks, iLIDS-VID windows), so every command that reads
the manifest (train, build-memory, extract, evaluate) sees the same items; the recipe names the protocol it expects
and a manifest prepared otherwise is refused here, before a GPU-day is spent on the wrong data.
"""

from __future__ import annotations

import logging

import torch

from tfclip_cli.datasets import ilidsvid, lsvid
from tfclip_cli.errors import RecipeError
from tfclip_cli.inference import resolve_precision
from tfclip_cli.recipe import Precision, Recipe
from tfclip_cli.tables import Manifest

logger = logging.getLogger(__name__)

GALLERY_RULE_TEXT = {
    "includes_query": "queries ranked against query + gallery (the same pid and camera removed)",
    "gallery_only": "queries ranked against the gallery split alone",
}
ERASING_TEXT = {
    "frame": "each frame on its own, p={p}, own box and colour at the reference's paste position",
    "clip": "one box and colour on every frame of a clip, p={p} (tfclip's choice, not the reference's)",
}


def _cut_text(manifest: Manifest) -> str:
    """How ``tfclip prepare`` cut the tracklets of this manifest, in words."""
    extra = manifest.info.extra
    if extra.get("train_chunk"):
        dropped = extra.get("short_train_tracklets_dropped")
        short = "shorter ones kept whole" if dropped is None else f"{dropped} shorter ones left out"
        return f"training tracklets cut into {extra['train_chunk']}-frame chunks ({short})"
    if extra.get("window"):
        return f"every sequence cut into {extra['window']}-frame windows every {extra['window_stride']} frames"
    return "whole tracklets"


def protocol_mismatch(recipe: Recipe, manifest: Manifest) -> str | None:
    """What in the manifest contradicts the recipe's ``data.protocol``, in words; None when it follows it."""
    protocol, extra = recipe.data.protocol, manifest.info.extra
    if protocol == "none":
        return None
    if manifest.info.dataset != protocol:
        return f"it was prepared from the {manifest.info.dataset} layout"
    chunked = (extra.get("train_chunk"), "short_train_tracklets_dropped" in extra) == (lsvid.TRAIN_CHUNK, True)
    if protocol == "lsvid" and not chunked:
        return (f"it has {_cut_text(manifest)}; the official protocol trains on {lsvid.TRAIN_CHUNK}-frame chunks "
                "with shorter tracklets left out")
    windows = (extra.get("window"), extra.get("window_stride"))
    if protocol == "ilidsvid" and windows != (recipe.data.seq_len, ilidsvid.WINDOW_STRIDE):
        return (f"it has {_cut_text(manifest)}; the official protocol cuts every sequence into data.seq_len = "
                f"{recipe.data.seq_len}-frame windows every {ilidsvid.WINDOW_STRIDE} frames")
    return None


def check_protocol(recipe: Recipe, manifest: Manifest) -> None:
    """Refuse a manifest that was not prepared for the recipe's ``data.protocol``.

    Raises:
        RecipeError: naming the protocol, the manifest, what differs and the command that prepares it right.
    """
    problem = protocol_mismatch(recipe, manifest)
    if problem is None:
        return
    protocol, path = recipe.data.protocol, recipe.data.manifest
    option = f" --window {recipe.data.seq_len}" if protocol == "ilidsvid" and recipe.data.seq_len != 8 else ""
    raise RecipeError(
        f"data.protocol {protocol}: data.manifest {path} does not follow it: {problem}",
        hint=f"prepare it with `tfclip prepare {protocol} ROOT --out {path}{option} --force` (its defaults give the "
        "official protocol), or --set data.protocol=none to train on it as it is",
    )


def _precision_text(precision: Precision, device: torch.device, *, is_training: bool) -> str:
    dtype = resolve_precision(precision, device)
    if dtype is None:
        return "fp32" if precision == "fp32" else f"fp32 ({precision} asked; no autocast on {device.type})"
    name = str(dtype).removeprefix("torch.").replace("float16", "fp16").replace("bfloat16", "bf16")
    scaler = " + grad scaler" if is_training and dtype == torch.float16 else ""
    return f"{name} autocast{scaler}" + ("" if precision == name else f" ({precision})")


TEMPORAL_TEXT = {"mean": "the mean of frame features", "attention": "temporal attention over the frames"}


def describe_protocol(recipe: Recipe, manifest: Manifest, device: torch.device) -> list[tuple[str, str]]:
    """(topic, what this run does) rows: the protocol, data and cut, sampling, erasing, precision, evaluation."""
    data, solver, evaluation = recipe.data, recipe.solver, recipe.eval
    counts = manifest.split_counts()
    rule = manifest.info.gallery_rule if evaluation.gallery_rule == "manifest" else evaluation.gallery_rule
    height, width = data.image_size
    memory_precision = _precision_text(solver.precision, device, is_training=False)
    rows = [
        ("protocol", "none checked" if data.protocol == "none" else f"{data.protocol}, official (manifest checked)"),
        ("data", f"{manifest.info.dataset}: train {counts['train']}, query {counts['query']}, gallery "
                 f"{counts['gallery']} items; {_cut_text(manifest)}"),
        ("training clips", f"{data.train_sampling}, {data.seq_len} frames at {height}x{width}, {data.num_ids} ids x "
                           f"{data.num_instances} items per batch, whole-clip flip p={data.flip_p}"),
        ("erasing", ERASING_TEXT[data.erase].format(p=data.erase_p) if data.erase_p > 0 else "off"),
        ("training precision", _precision_text(solver.precision, device, is_training=True)),
        ("CLIP-Memory", "none (loss.v2m 0): ID and triplet losses only" if recipe.loss.v2m == 0 else
         f"every train item as dense clips, {memory_precision}"),
        ("evaluation", f"every {evaluation.every} epochs, {evaluation.sampling} sampling, "
                       f"{_precision_text(evaluation.precision, device, is_training=False)}"),
        ("gallery rule", f"{rule}: {GALLERY_RULE_TEXT[rule]}"),
    ]
    ablated = [text for is_ablated, text in (
        (recipe.loss.v2m > 0 and recipe.model.ssp_layers == 0, "CLIP-Memory fixed (no SSP)"),
        (recipe.model.temporal != "tmd", f"temporal branch: {TEMPORAL_TEXT.get(recipe.model.temporal)} instead of TMD"),
    ) if is_ablated]
    if ablated:
        rows.append(("ablation", "; ".join(ablated)))
    if evaluation.manifests:
        rows.append(("more test sets", ", ".join(evaluation.manifests) + " (a dataset other than the training one "
                                                                       "without camera embedding)"))
    if evaluation.sampling == "rrs_test":
        rows.append(("paper figures", "dense sampling: `tfclip extract --sampling dense`, then `tfclip evaluate` "
                                      "(in-training rrs_test is the official loop's model selection)"))
    return rows


def log_protocol(recipe: Recipe, manifest: Manifest, device: torch.device) -> None:
    """Log :func:`describe_protocol` as one block (INFO: shown on stderr by ``tfclip train``)."""
    rows = describe_protocol(recipe, manifest, device)
    width = max(len(topic) for topic, _ in rows)
    logger.info("protocol of this run:\n%s", "\n".join(f"  {topic:<{width}}  {text}" for topic, text in rows))
