"""Which visual parameters a method tunes: the normalisation affine parameters.

The reference rule (UEO demo.py) selects every parameter of the visual tower whose *name* contains ``bn`` or
``ln``. On ViTs that is exactly the LayerNorm affines (ln_pre, ln_1, ln_2 of each block, ln_post). On CLIP's
ModifiedResNet it picks the stem's bn1-3 and each Bottleneck's bn1-3, but **misses the downsample BatchNorms**
(named ``downsample.1.*``) and, in general, any norm layer whose name lacks those letters. The ``type`` rule
selects the weight and bias of every BatchNorm, LayerNorm and GroupNorm module instead.
"""
from __future__ import annotations

import torch.nn as nn

from ..core.errors import UeobenchError

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
RULES = ("name", "type")


def norm_parameters(visual: nn.Module, rule: str = "name") -> dict[str, nn.Parameter]:
    """Name -> parameter of the visual normalisation affines under ``rule`` ("name" or "type")."""
    if rule == "name":
        return {n: p for n, p in visual.named_parameters() if "bn" in n or "ln" in n}
    if rule == "type":
        out: dict[str, nn.Parameter] = {}
        for mname, m in visual.named_modules():
            if isinstance(m, NORM_TYPES):
                for pname, p in m.named_parameters(recurse=False):
                    out[f"{mname}.{pname}" if mname else pname] = p
        return out
    raise UeobenchError(f"unknown norm selection rule '{rule}'; use one of: {', '.join(RULES)}")


def batchnorms(visual: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in visual.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
