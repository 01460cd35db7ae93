"""The method interface and registry.

Every method shares one lifecycle::

    m = MethodClass(options)
    m.setup(backbone, class_names, context)   # build prompts, pick what to tune
    m.trainable_parameters()                  # named groups; everything else stays frozen (the runner
                                              # snapshots them here, and reset() restores the snapshot)
    m.adapt(context) -> history               # unlabeled target data; [] for zero-shot
    m.predict(images) -> cosine similarities  # [batch, K], unscaled; scores are computed downstream
    m.reset()                                 # back to the state right after setup

The runner, not the method, decides how predictions are computed: from the shared cached image features
(``predict_features``) when the method implements it and nothing it declared trainable lives in the image tower
(and no BatchNorm uses batch statistics), else by a pass over the images with ``predict``. A method whose
predictions depend on the batch says so with ``eval_batching``; one that needs other inputs than the eval
tensor (TPT's views of the original image) supplies ``prediction_transform``; one that predicts online while it
adapts (TENT) returns those outputs from ``online_predictions``.

Methods are found through the ``ueobench.methods`` entry-point group (built-ins included), the modules of the
built-in ``methods/`` folder, and folders given with ``--plugins``. Core code never imports a method by name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import pkgutil
import sys
import types
import typing
import warnings
from dataclasses import dataclass, fields
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from .errors import UeobenchError
from .plugins import ENTRY_POINT_GROUP, PLUGIN_DIRS, add_plugin_folder, plugin_files  # noqa: F401 (re-exported)
from .registry import Registry, suggest



@dataclass
class Options:
    """Base of every method's hyperparameters. Subclass it as a dataclass with typed defaults; declare each
    with ``option(default, "help", min=..., max=..., choices=...)`` so ``show method`` can explain it and
    ``--set`` values out of range are refused before any model or data is loaded."""


def option(default: Any, help: str = "", *, min: float | None = None, max: float | None = None,
           min_exclusive: bool = False, choices: tuple[Any, ...] | None = None, contains: str | None = None) -> Any:
    """A dataclass field with its one-line help and its valid values: a range (inclusive unless
    ``min_exclusive``), a set of ``choices``, or a text it must ``contain`` (a prompt template's ``{}``)."""
    meta = {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive, "choices": choices,
            "contains": contains}
    return dataclasses.field(default=default, metadata=meta)


def check_option(method: str, f: dataclasses.Field, value: Any) -> None:
    """Range, choice and finiteness checks of one option value; raises a one-line UeobenchError."""
    import math

    meta = f.metadata or {}
    where = f"{method} option '{f.name}'"
    if isinstance(value, float) and not math.isfinite(value):
        raise UeobenchError(f"bad value for {where}: {value} is not a finite number")
    if meta.get("contains") and isinstance(value, str):
        ok = meta["contains"] in value
        if ok and meta["contains"] == "{}":  # a template: it must format with one class name, nothing else
            try:
                value.format("x")
            except (IndexError, KeyError, ValueError):
                ok = False
        if not ok:
            raise UeobenchError(f"bad value for {where}: {value!r} must contain {meta['contains']} and nothing "
                                f"else in braces (e.g. 'a photo of a {{}}.')")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise UeobenchError(f"bad value for {where}: {value!r}; choose from {', '.join(map(str, choices))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
            bound = f"greater than {lo}" if meta.get("min_exclusive") else f"at least {lo}"
            raise UeobenchError(f"bad value for {where}: {value}; it must be {bound}")
        if hi is not None and value > hi:
            raise UeobenchError(f"bad value for {where}: {value}; it must be at most {hi}")


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
    Options: ClassVar[type] = Options
    #: True when the method reads target labels (oracle ablations); such runs are marked and ranked apart.
    uses_target_labels: ClassVar[bool] = False
    #: "none" (zero-shot), "transductive" (adapts on the whole unlabeled set), "online" (one pass, predicting
    #: each batch before adapting on it) or "episodic" (per image).
    adaptation: ClassVar[str] = "none"
    #: Reference defaults that differ per dataset, e.g. {"domainnet": {"epochs": 5}}; user overrides win.
    dataset_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Kinds of per-image evidence (``scores.EXTRAS``) that ``extra_outputs`` returns, e.g. ("no_cos",).
    extras: ClassVar[tuple[str, ...]] = ()

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
            raise RuntimeError(f"{type(self).__name__}.reset() before snapshot(); the runner snapshots after setup")
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

    def is_oracle(self) -> bool:
        """True when this configuration reads target labels; an option may turn it on (UEO's oracle weights)."""
        return self.uses_target_labels

    def info(self) -> dict[str, Any]:
        """Extra facts for the run record (resolved choices, reference values)."""
        return {}


# ----------------------------------------------------------------------------------------------- options


def _coerce(value: str, typ: Any, name: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value.lower() in ("none", "null"):
            return None
        typ = args[0]
    if typ is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false for '{name}', got {value!r}")
    if typ in (int, float, str):
        return typ(value)
    raise ValueError(f"option '{name}' has a type ({typ}) that cannot be set from the command line")


def build_options(method_cls: type[Method], overrides: dict[str, str] | None, dataset: str | None = None) -> Any:
    """Method defaults, then the method's reference defaults for ``dataset``, then validated ``--set`` overrides."""
    opts_cls = method_cls.Options
    hints = typing.get_type_hints(opts_cls)
    valid = {f.name: f for f in fields(opts_cls)}
    kwargs: dict[str, Any] = dict(method_cls.dataset_defaults.get(dataset or "", {}))
    for key, raw in (overrides or {}).items():
        if key not in valid:
            raise UeobenchError(
                f"method '{method_cls.name}' has no option '{key}'{suggest(key, list(valid))}"
                if valid else f"method '{method_cls.name}' takes no options (got '{key}')"
            )
        try:
            kwargs[key] = _coerce(str(raw), hints[key], key)
        except (ValueError, OverflowError) as e:
            raise UeobenchError(f"bad value for {method_cls.name} option '{key}': {e}") from None
    options = opts_cls(**kwargs)
    for f in fields(opts_cls):
        check_option(method_cls.name, f, getattr(options, f.name))
    return options


def options_dict(options: Any) -> dict[str, Any]:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}


def implements(method: Method, hook: str) -> bool:
    """True when ``method``'s class overrides ``Method.<hook>`` (an optional capability such as predict_features)."""
    return getattr(type(method), hook) is not getattr(Method, hook)


# ---------------------------------------------------------------------------------------------- registry

def _load_plugins() -> None:
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            ep.load()
        except UeobenchError:
            raise
        except Exception as e:  # noqa: BLE001 - one broken plugin must not break every command
            warnings.warn(f"method plugin '{ep.name}' ({ep.value}) failed to load: {e}", stacklevel=2)
    import ueobench.methods as builtin  # the methods/ folder: a dropped-in file appears without reinstalling

    for info in pkgutil.iter_modules(builtin.__path__):
        importlib.import_module(f"ueobench.methods.{info.name}")
    for d in PLUGIN_DIRS:
        _load_folder(d)


def _load_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise UeobenchError(f"plugin folder {folder} does not exist")
    for f in plugin_files(folder):
        key = hashlib.sha256(str(f).encode()).hexdigest()[:8]
        mod_name = f"ueobench_plugins.{f.stem}_{key}"  # one module per file: same-named files in two folders differ
        if mod_name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(mod_name, f)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except UeobenchError:
            del sys.modules[mod_name]
            raise
        except BaseException as e:  # noqa: BLE001 - SystemExit included: a plugin never ends the CLI silently
            del sys.modules[mod_name]
            what = f"called sys.exit({e.code})" if isinstance(e, SystemExit) else f"{type(e).__name__}: {e}"
            raise UeobenchError(f"plugin {f} failed to load ({what})") from None


METHODS: Registry[type[Method]] = Registry("method", loader=_load_plugins)


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: ``@register_method("ueo")``."""

    def deco(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method('{name}') must decorate a Method subclass")
        if not dataclasses.is_dataclass(cls.Options):
            raise TypeError(f"{cls.__qualname__}.Options must be a dataclass")
        valid = {f.name for f in fields(cls.Options)}
        for dataset, overrides in cls.dataset_defaults.items():
            bad = sorted(set(overrides) - valid)
            if bad:
                raise UeobenchError(
                    f"method '{name}' ({cls.__module__}): dataset_defaults['{dataset}'] names unknown option(s) "
                    f"{', '.join(bad)}{suggest(bad[0], sorted(valid))}"
                )
        cls.name = name
        module = sys.modules.get(cls.__module__)
        METHODS.register(name, cls, origin=getattr(module, "__file__", None) or cls.__module__)
        return cls

    return deco


def get_method(name: str) -> type[Method]:
    return METHODS.get(name)


def list_methods() -> list[str]:
    return METHODS.names()
