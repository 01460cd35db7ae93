"""TENT (Wang et al., ICLR 2021; DequanWang/tent): online entropy minimisation on the visual norm affines.

Faithful to the reference: the visual normalisation affines are tuned with Adam (lr 1e-3), one step per batch of
64 on a seeded shuffled stream, no augmentation, entropy ``-(softmax * log_softmax).sum(1)`` without epsilon.
Where the backbone has BatchNorm (CLIP ResNets, the reference's default backbone) those layers always use the
statistics of the current batch, in training and at prediction.

What is reported (as the reference, which predicts online):

- **target split** (the adaptation data): the online outputs, each batch's prediction computed before that
  batch's update, with that batch's statistics;
- **test split**: after the pass, in batches of TENT's batch size drawn from a seeded shuffle (never list order,
  which is sorted by class and would give each batch the statistics of one class), mapped back to list order.

On ViTs (LayerNorm only) there are no batch statistics: TENT is entropy minimisation on the LN affines.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ueobench import option, register_method
from ueobench.adapt import (
    PromptTuningMethod,
    PromptTuningOptions,
    TrainSpec,
    entropy_from_logits,
)
from ueobench.models import batchnorms


@register_method("tent")
class Tent(PromptTuningMethod):
    display_name = "TENT"
    adaptation = "online"
    streams = True  # reads the adaptation data in context.stream_order() (--stream)

    @dataclass
    class Options(PromptTuningOptions):
        tune: str = option("norm", "what to tune: norm (TENT), prompt or both", choices=("both", "prompt", "norm"))
        norm_rule: str = option("type", "type: every norm module (TENT); name: the 'bn'/'ln' substring rule",
                                choices=("name", "type"))
        epochs: int = option(1, "passes over the stream (the reference: one)", min=1)
        batch_size: int = option(64, "stream batch size (also the test split's batch size)", min=1)
        lr_norm: float = option(1e-3, "Adam learning rate of the norm affines", min=0)
        eval_every: int = option(0, "evaluate every N epochs (0: final only)", min=0)

    dataset_defaults = {}

    def setup(self, backbone, class_names, context):
        super().setup(backbone, class_names, context)
        for bn in batchnorms(backbone.model.visual):  # batch statistics, always
            bn.train()
            bn.track_running_stats = False
            bn.running_mean = None
            bn.running_var = None
        self._online = np.zeros((context.num_adapt, len(class_names)), dtype=np.float32)

    def step_loss(self, images, idx):
        cos = self.cosine(images).float()
        self._online[idx.cpu().numpy()] = cos.detach().cpu().numpy()  # the prediction, before this batch's update
        return entropy_from_logits(self.scale() * cos).mean()

    def online_predictions(self):
        return self._online

    def eval_batching(self):
        return self.options.batch_size, True

    def train_spec(self, context) -> TrainSpec:
        o = self.options
        groups = {k: (v, o.lr_norm if k == "norm" else o.lr_prompt) for k, v in self.trainable_parameters().items()}
        return TrainSpec(groups=groups, epochs=o.epochs, batch_size=o.batch_size, optimizer="adam",
                         schedule="constant", transform=None, eval_every=o.eval_every)
