"""The method interface: the lifecycle every method shares.

::

    m = MethodClass(options)
    m.setup(backbone, class_names, context)   # build prompts, pick what to tune
    m.trainable_parameters()                  # named groups; everything else stays frozen (the session
                                              # snapshots them here, and reset() restores the snapshot)
    m.adapt(context) -> history               # unlabeled target data; [] for zero-shot
    m.predict(images) -> cosine similarities  # [batch, K], unscaled; scores are computed downstream
    m.reset()                                 # back to the state right after setup

The evaluator (``ueobench.runs.evaluation``), not the method, decides how predictions are computed: from the
shared cached image features (``predict_features``) when the method implements it and nothing it declared
trainable lives in the image tower (and no BatchNorm uses batch statistics), else by a pass over the images
with ``predict``. A method whose predictions depend on the batch says so with ``eval_batching``; one that needs
other inputs than the eval tensor (TPT's views of the original image) supplies ``prediction_transform``; one
that predicts online while it adapts (TENT) returns those outputs from ``online_predictions``.
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
    #: eval-transform image features of the adaptation data [N, D] (shared, cached), in ``make_loader`` index order
    image_features: Callable[[], torch.Tensor] | None = None
    progress: Any = None
    #: autocast dtype of the forward pass (None: full fp32); trainable parameters stay fp32 regardless
    amp_dtype: Any = None


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

    def is_oracle(self) -> bool:
        """True when this configuration reads target labels; an option may turn it on (UEO's oracle weights)."""
        return self.uses_target_labels

    def info(self) -> dict[str, Any]:
        """Extra facts for the run record (resolved choices, reference values)."""
        return {}


def implements(method: Method, hook: str) -> bool:
    """True when ``method``'s class overrides ``Method.<hook>`` (an optional capability such as predict_features)."""
    return getattr(type(method), hook) is not getattr(Method, hook)


