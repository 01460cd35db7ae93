"""Numeric precision and device settings, resolved once per run and recorded.

Trainable parameters and optimiser state always stay fp32; ``bf16``/``fp16`` only set the autocast dtype of
the forward pass. On CUDA, TF32 matmuls, cuDNN autotuning and channels-last ResNets are switched on.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from ..core.errors import UeobenchError
from .request import PRECISIONS

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise UeobenchError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type == "cpu":
        raise UeobenchError("fp16 autocast is for CUDA; on the CPU use --precision fp32 or bf16")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    return DTYPES[precision]


def configure_device(device: torch.device, model: torch.nn.Module) -> dict[str, Any]:
    """Apply the fast defaults for ``device`` and return them for the record."""
    settings: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        from open_clip.modified_resnet import ModifiedResNet

        channels_last = isinstance(getattr(model, "visual", None), ModifiedResNet)
        if channels_last:
            model.visual.to(memory_format=torch.channels_last)
        settings.update(tf32=True, cudnn_benchmark=True, channels_last=channels_last)
    else:
        settings.update(tf32=False, cudnn_benchmark=False, channels_last=False, threads=torch.get_num_threads())
    return settings


def default_workers(device: torch.device) -> int:
    """Loader processes: most of the CPUs on a GPU machine; none on a small CPU-only machine, where decoding
    would compete with the model for the same cores."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        return max(1, min(8, cpus - 1))
    return 0 if cpus < 8 else min(4, cpus // 4)
