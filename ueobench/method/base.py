"""The method interface: the lifecycle every method shares.

::

    m = MethodClass(options)
    m.setup(backbone, class_names, context)   # build prompts, pick what to tune
    m.trainable_parameters()                  # named groups; everything else stays frozen (the session
                                              # snapshots them here, and reset() restores the snapshot)
    m.adapt(context) -> history               # unlabeled target data; [] for zero-shot; labeled-source
                                              # methods train on the labeled source here instead
    m.predict(images) -> cosine similarities  # [batch, K], unscaled; scores are computed downstream
    m.reset()                                 # back to the state right after setup

The evaluator (``ueobench.runs.evaluation``), not the method, decides how predictions are computed: from the
shared cached image features (``predict_features``) when the method implements it and nothing it declared
trainable lives in the image tower (and no BatchNorm uses batch statistics), else by a pass over the images
with ``predict``. A method whose predictions depend on the batch says so with ``eval_batching``; one that needs
other inputs than the eval tensor (TPT's views of the original image) supplies ``prediction_transform``; one
that predicts online while it adapts (TENT) returns those outputs from ``online_predictions``.

A *labeled-source* method (``track = "labeled-source"``: CRoFT, CaRot, linear probe, fine-tuning) has the same
lifecycle, but its ``adapt`` trains on the labeled images of a source domain (``context.source_loader``) and
never sees target data: the target loaders refuse it. What ``adapt`` leaves behind is an *artifact*
(``artifact_state``), stored once per (method, source, known classes, options, seed) and loaded with
``load_artifact_state`` by every evaluation of that model on any target and shift.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from .options import Options


@dataclass
class AdaptContext:
    """What a method may use while adapting. Adaptation loaders yield ``(images, indices)``: no labels."""

    dataset: str
    shift: str
    domain: str
    prompt: str  # the dataset's prompt template, e.g. "a photo of a {}."
    device: torch.device
    seed: int
    #: make_loader(transform=None, batch_size=64, shuffle=True, indices=None, drop_last=False) over the
    #: adaptation split; transform None means the backbone's eval transform.
    make_loader: Callable[..., Any]
    num_adapt: int
    eval_transform: Any
    #: metrics on the test and target splits with the method's current state (for training curves)
    evaluate: Callable[[], dict[str, Any]] | None = None
    #: labels of the adaptation data; refused unless the method declares it is an oracle
    target_labels: Callable[[], Any] | None = None
    #: labeled-source track: ``source_loader(split="train", transform=None, batch_size=32, shuffle=True,
    #: drop_last=False)`` yields ``(images, labels, indices)`` over ``source_train`` or ``source_val`` (labels
    #: 0..K-1, the known classes), ``source_features(split, kind="global")`` their eval-transform image features
    #: [N, D] (shared, cached, in loader index order; kind "raw": before L2 normalisation), ``source_labels(split)`` the labels; None for unlabeled-target runs
    source_loader: Callable[..., Any] | None = None
    source_features: Callable[..., torch.Tensor] | None = None
    source_labels: Callable[[str], Any] | None = None
    num_source: dict[str, int] | None = None  # images per source split
    #: eval-transform image features of the adaptation data [N, D] (shared, cached), in ``make_loader`` index order
    image_features: Callable[[], torch.Tensor] | None = None
    progress: Any = None
    #: autocast dtype of the forward pass (None: full fp32); trainable parameters stay fp32 regardless
    amp_dtype: Any = None
    #: the label-shift stream of this run (``--stream``; None: i.i.d.), and ``stream_order()``: the adaptation
    #: data's positions in the order a stream-reading method reads them (a seeded ``randperm`` without a stream,
    #: the order every online method drew before streams existed)
    stream: str | None = None
    stream_order: Callable[[], list[int]] | None = None


class Method:
    """Base class. Subclasses set ``name``, ``Options`` and override ``setup`` and ``predict``."""

    name: ClassVar[str] = ""
    #: how tables and figures name the method ("UEO", "Zero-shot"); the registered name when empty
    display_name: ClassVar[str] = ""
    Options: ClassVar[type] = Options
    #: True when the method reads target labels (oracle ablations); such runs are marked and ranked apart.
    uses_target_labels: ClassVar[bool] = False
    #: "none" (zero-shot), "transductive" (adapts on the whole unlabeled set), "online" (one pass, predicting
    #: each batch before adapting on it) or "episodic" (per image).
    adaptation: ClassVar[str] = "none"
    #: Reference defaults that differ per dataset, e.g. {"domainnet": {"epochs": 5}}; user overrides win.
    dataset_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    #: "unlabeled-target" (adapts on unlabeled target images, or not at all) or "labeled-source" (trains on a
    #: labeled source domain, never sees target data; needs ``--source``).
    track: ClassVar[str] = "unlabeled-target"
    #: True when the method reads its adaptation data in ``context.stream_order()`` (online and batched methods),
    #: so ``--stream`` (StatA's label-shift streams) applies to it
    streams: ClassVar[bool] = False
    #: labeled-source methods that evaluate another method's trained model (WiSE-FT evaluates fine-tuning's):
    #: that method's name; the artifact is then trained (and identified) exactly as that method trains it
    trains_as: ClassVar[str | None] = None
    #: options applied after training (``finish``), outside the trained model's identity: one artifact serves
    #: every value (WiSE-FT's alpha)
    eval_options: ClassVar[tuple[str, ...]] = ()
    #: the cached features ``predict_features`` takes: "global" (L2-normalised) or "raw" (before normalisation,
    #: as CLIP's linear-probe protocol)
    feature_kind: ClassVar[str] = "global"
    #: Kinds of per-image evidence (``ueobench.scoring.scores.EXTRAS``) that ``extra_outputs`` returns, e.g. ("no_cos",).
    extras: ClassVar[tuple[str, ...]] = ()
    #: The prompt template the method used, when it is not the dataset's (set in ``setup``); recorded.
    template: str | None = None

    def __init__(self, options: Any | None = None):
        self.options = options if options is not None else self.Options()
        self._initial_state: list[tuple[torch.nn.Parameter, torch.Tensor]] | None = None

    def setup(self, backbone: Any, class_names: list[str], context: AdaptContext) -> None:
        self.backbone = backbone
        self.class_names = class_names

    def trainable_parameters(self) -> dict[str, list[torch.nn.Parameter]]:
        return {}

    def snapshot(self) -> None:
        """Remember the trainable parameters as they are now; ``reset`` restores them (called after ``setup``)."""
        self._initial_state = [(p, p.detach().clone()) for ps in self.trainable_parameters().values() for p in ps]

    def adapt(self, context: AdaptContext) -> list[dict[str, Any]]:
        """Adapt on the unlabeled target data and return the training history (one entry per epoch).

        The default does nothing (zero-shot)."""
        return []

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        """Return to the state right after ``setup``: the snapshot of the trainable parameters."""
        if self._initial_state is None:
            raise RuntimeError(f"{type(self).__name__}.reset() before snapshot(); the session snapshots after setup")
        with torch.no_grad():
            for p, value in self._initial_state:
                p.copy_(value)

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarities from L2-normalised image features [B, D]. Optional: a method that implements it
        is evaluated on the shared cached features whenever its image tower is untouched."""
        raise NotImplementedError

    def extra_outputs(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image evidence beyond the cosines that some scores read (the kinds named in ``extras``), from
        L2-normalised image features [B, D]; saved with the run as ``{split}_{kind}``. Optional."""
        return {}

    def online_extra_outputs(self) -> dict[str, Any] | None:
        """The evidence of ``extras`` for the adaptation data as the method produced it online (arrays in
        adaptation index order), or None: then it comes from ``extra_outputs`` after adapting, like the test
        split's."""
        return None

    def eval_batching(self) -> tuple[int, bool] | None:
        """``(batch size, shuffle)`` when predictions depend on which images share a batch (BatchNorm with batch
        statistics, per-image episodes); ``None``: any batching gives the same predictions."""
        return None

    def prediction_transform(self, eval_transform: Any) -> Any:
        """The transform that turns a PIL image into what ``predict`` takes; the eval transform by default."""
        return eval_transform

    def online_predictions(self) -> Any:
        """Cosine similarities [N, K] on the adaptation data, in adaptation index order, that the method produced
        online while adapting (each before the update it caused), or None. When given, they are the reported
        predictions on the adaptation ("target") split."""
        return None

    @classmethod
    def work(cls, options: Any, n_adapt: int, n_test: int, n_known: int) -> float:
        """About how many images this configuration pushes through the image tower (a backward pass counts two
        forwards): what sweep progress and its ETA count, so that a long run weighs more than a zero-shot one.
        The default is one pass over each split."""
        return float(n_adapt + n_test)

    def logit_scale(self) -> float | None:
        """The logit scale of this method's classifier when it is not the backbone's (a learned temperature, as
        after FLYP or CaRot): calibration and scaled scores read it, and the record keeps it. None: the
        backbone's."""
        return None

    def selection(self) -> dict[str, Any]:
        """What the method selected and on which data (best epoch on source_val, a threshold, C of a probe);
        recorded. A method that selects anything must select it on source_val only."""
        return {"rule": "last epoch", "on": None}

    def artifact_state(self) -> dict[str, torch.Tensor]:
        """Everything ``adapt`` changed, as named tensors (labeled-source methods: what every evaluation of the
        trained model loads). The default: the trainable parameters, by group and position."""
        return {f"{g}.{i}": p.detach().cpu().clone() for g, ps in self.trainable_parameters().items()
                for i, p in enumerate(ps)}

    def load_artifact_state(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Put the method in the state ``artifact_state`` saved (called after ``setup`` instead of ``adapt``);
        ``meta`` is the artifact's ``extra`` (what ``artifact_meta`` returned at training time)."""
        expected = {f"{g}.{i}": p for g, ps in self.trainable_parameters().items() for i, p in enumerate(ps)}
        if set(expected) != set(state):
            raise ValueError(f"artifact holds {sorted(state)[:4]}..., the method has {sorted(expected)[:4]}...")
        with torch.no_grad():
            for k, p in expected.items():
                if tuple(state[k].shape) != tuple(p.shape):
                    raise ValueError(f"artifact tensor {k} has shape {list(state[k].shape)}, expected {list(p.shape)}")
                p.copy_(state[k].to(p.device, p.dtype))

    def finish(self, context: AdaptContext) -> None:
        """After the model is trained or loaded and its artifact saved: apply the ``eval_options`` (WiSE-FT's
        weight interpolation). Nothing by default."""

    def artifact_meta(self) -> dict[str, Any]:
        """JSON facts a trained model needs besides tensors (a selected epoch, a threshold); saved with it."""
        return {}

    def is_oracle(self) -> bool:
        """True when this configuration reads target labels; an option may turn it on (UEO's oracle weights)."""
        return self.uses_target_labels

    def info(self) -> dict[str, Any]:
        """Extra facts for the run record (resolved choices, reference values)."""
        return {}


def implements(method: Method, hook: str) -> bool:
    """True when ``method``'s class overrides ``Method.<hook>`` (an optional capability such as predict_features)."""
    return getattr(type(method), hook) is not getattr(Method, hook)


