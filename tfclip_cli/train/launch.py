"""Processes of a training run: the torchrun relaunch behind ``tfclip train --gpus N``, and rank barriers."""

from __future__ import annotations

import subprocess
import sys
from typing import Sequence

import torch
import torch.distributed as dist

from tfclip_cli.errors import UserError
from tfclip_cli.inference import DistContext


def barrier(context: DistContext) -> None:
    if context.world_size > 1:
        dist.barrier()


def torchrun_command(gpus: int, argv: Sequence[str]) -> list[str]:
    """The command that runs ``tfclip <argv>`` on ``gpus`` processes through torchrun (``tfclip train --gpus N``)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(gpus), "-m", "tfclip_cli", *argv]


def relaunch_distributed(gpus: int, argv: Sequence[str]) -> int:
    """Run ``tfclip <argv>`` under torchrun with ``gpus`` processes; returns torchrun's exit code.

    Raises:
        UserError: when fewer than ``gpus`` CUDA devices are visible.
    """
    visible = torch.cuda.device_count()
    if gpus > visible:
        raise UserError(f"--gpus {gpus}: only {visible} CUDA device(s) are visible", hint="lower --gpus")
    return subprocess.run(torchrun_command(gpus, argv), check=False).returncode
