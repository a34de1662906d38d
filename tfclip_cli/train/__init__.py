"""A one-stage TF-CLIP training run from a Recipe: resumable, evaluated as it goes, distributed through torchrun.

The only package that reads a whole :class:`~tfclip_cli.recipe.Recipe`; it turns the sections into explicit
arguments for the layers below. Modules: ``engine`` (set-up and the epoch loop: :func:`train`), ``state`` (meters,
metrics.csv, the resumable sampler, checkpoints), ``memory`` (the initial model and ``memory.pt``), ``solver``
(parameter groups, warm-up multi-step schedule), ``protocol`` (the recipe/manifest protocol check and the summary
logged at the start) and ``launch`` (torchrun relaunch, barriers).

A run directory holds ``recipe.yaml`` (the effective recipe), ``memory.pt`` (the CLIP-Memory; none with
``loss.v2m`` 0), ``last.ckpt`` (written after every epoch and on Ctrl-C), ``best.ckpt`` (best mAP + rank-1 so far,
on the first test set) and ``metrics.csv`` (an ``eval`` row per test set and evaluation, named in ``test_set``).
Determinism: batches and augmentations are functions of (seed, epoch, index) (see clips.py), and the torch RNG
state (dropout) is saved in every checkpoint, so a run resumed from ``last.ckpt`` repeats the losses of an
uninterrupted run on CPU.
"""

from tfclip_cli.train.engine import EpochSummary, TrainResult, train
from tfclip_cli.train.launch import relaunch_distributed, torchrun_command
from tfclip_cli.train.memory import MemoryResult, build_memory_file, initial_model, model_config
from tfclip_cli.inference import resolve_precision
from tfclip_cli.train.solver import lr_factor, param_groups
from tfclip_cli.train.state import METRICS_FIELDS

__all__ = [
    "METRICS_FIELDS",
    "EpochSummary",
    "MemoryResult",
    "TrainResult",
    "build_memory_file",
    "initial_model",
    "lr_factor",
    "model_config",
    "param_groups",
    "relaunch_distributed",
    "resolve_precision",
    "torchrun_command",
    "train",
]
