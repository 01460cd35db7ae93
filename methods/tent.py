"""TENT (Wang et al., ICLR 2021): entropy minimisation on the visual normalisation affines only.

Where the backbone has BatchNorm (CLIP ResNets) those layers use batch statistics, in training and at
prediction, as in DequanWang/tent. On ViTs (LayerNorm only) this is entropy minimisation on the LN affines.
One pass over the adaptation data, one Adam step (lr 1e-3) per batch, no augmentation. Unlike the online
original, predictions are made after the pass, like every other method here.
"""
from __future__ import annotations

from dataclasses import dataclass

from ueobench.losses import entropy_loss
from ueobench.method import register_method
from ueobench.prompt_tuning import PromptTuningMethod, PromptTuningOptions
from ueobench.trainer import TrainSpec
from ueobench.tuning import batchnorms


@register_method("tent")
class Tent(PromptTuningMethod):
    @dataclass
    class Options(PromptTuningOptions):
        tune: str = "norm"
        norm_rule: str = "type"
        epochs: int = 1
        batch_size: int = 64
        lr_norm: float = 1e-3
        eval_every: int = 0

    dataset_defaults = {}

    def setup(self, backbone, class_names, context):
        super().setup(backbone, class_names, context)
        for bn in batchnorms(backbone.model.visual):  # batch statistics, always
            bn.train()
            bn.track_running_stats = False
            bn.running_mean = None
            bn.running_var = None

    def uses_frozen_features(self) -> bool:
        return False  # BatchNorm uses batch statistics: an image's features depend on its batch

    def objective(self, probs, idx):
        return entropy_loss(probs)

    def train_spec(self, context) -> TrainSpec:
        o = self.options
        groups = {k: (v, o.lr_norm if k == "norm" else o.lr_prompt) for k, v in self.trainable_parameters().items()}
        return TrainSpec(groups=groups, epochs=o.epochs, batch_size=o.batch_size, optimizer="adam",
                         schedule="constant", transform=None, eval_every=o.eval_every)
