"""The optimiser side of training: parameter groups and the per-epoch warm-up multi-step schedule.

Reference: solver/make_optimizer_prompt.py make_optimizer_2stage, solver/lr_scheduler.py WarmupMultiStepLR;
docs/fidelity.md#hyper-parameters.
"""

from __future__ import annotations

import bisect
import functools
from typing import Sequence

import torch
from torch import nn

from tfclip_cli.recipe import SolverSection

OPTIMIZERS = {"adam": torch.optim.Adam}  # solver.optimizer → class (the reference trains with Adam, yml L47)
TEMPORAL_CLASSIFIER = "classifier_temporal"  # the reference's classifier_proj_temp (make_optimizer_prompt.py L33-36)


def lr_factor(epoch_index: int, *, warmup_epochs: int, warmup_factor: float, milestones: Sequence[int],
              gamma: float) -> float:
    """The lr multiplier of 0-based epoch ``epoch_index``: linear warm-up from ``warmup_factor``, then ×gamma per
    milestone passed. Stepped once per epoch, so epoch 1 runs at ``warmup_factor`` and, with milestone 30, epoch 31
    is the first at ×gamma (reference: solver/lr_scheduler.py WarmupMultiStepLR; processor L174;
    docs/fidelity.md#hyper-parameters).
    """
    warmup = 1.0
    if epoch_index < warmup_epochs:
        alpha = epoch_index / warmup_epochs
        warmup = warmup_factor * (1 - alpha) + alpha
    return warmup * gamma ** bisect.bisect_right(list(milestones), epoch_index)


def param_groups(model: nn.Module, *, base_lr: float, weight_decay: float, bias_lr_factor: float,
                 temporal_classifier_lr_factor: float) -> list[dict]:
    """Adam parameter groups as the reference's make_optimizer_2stage (solver/make_optimizer_prompt.py L22-50).

    Every trainable parameter gets ``base_lr`` and ``weight_decay``; a name containing "bias" (so also
    ``in_proj_bias``) ×``bias_lr_factor``; the temporal classifier ×``temporal_classifier_lr_factor``. Frozen
    parameters (the BNNeck biases) are left out.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault(("bias" in name, TEMPORAL_CLASSIFIER in name), []).append(parameter)
    result = []
    for (is_bias, is_temporal), parameters in sorted(groups.items()):
        lr = base_lr * (bias_lr_factor if is_bias else 1.0) * (temporal_classifier_lr_factor if is_temporal else 1.0)
        result.append({"params": parameters, "lr": lr, "weight_decay": weight_decay})
    return result


def build_optimizer(solver: SolverSection, model: nn.Module) -> tuple[torch.optim.Optimizer,
                                                                       torch.optim.lr_scheduler.LambdaLR]:
    """Adam over the reference's parameter groups, with the per-epoch warm-up multi-step schedule."""
    groups = param_groups(model, base_lr=solver.base_lr, weight_decay=solver.weight_decay,
                          bias_lr_factor=solver.bias_lr_factor,
                          temporal_classifier_lr_factor=solver.temporal_classifier_lr_factor)
    optimizer = OPTIMIZERS[solver.optimizer](groups, lr=solver.base_lr, weight_decay=solver.weight_decay)
    factor = functools.partial(lr_factor, warmup_epochs=solver.warmup_epochs, warmup_factor=solver.warmup_factor,
                               milestones=solver.milestones, gamma=solver.gamma)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
