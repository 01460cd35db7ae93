"""Predictions and metrics of a method on the test and target splits.

The evaluator, not the method, decides how predictions are made:

1. **Online outputs.** A method that predicted while it adapted (TENT) reports those outputs for the adaptation
   ("target") split.
2. **Cached features.** When the method implements ``predict_features`` and its image tower is untouched, the
   shared eval-transform features are used instead of a pass over the images. Untouched means: no BatchNorm in
   the image tower uses batch statistics, and every image-tower parameter the method declared trainable still
   equals its value right after setup (so a training method's epoch-0 evaluation uses the cache, later ones do
   not). Nothing the method sets inside its loss can change this decision.
3. **A pass over the images** otherwise, with the method's ``prediction_transform`` and ``eval_batching``
   (batches drawn from a seeded shuffle are mapped back to list order).

Scores that need more than the cosines (``scores.EXTRAS``) get their evidence here and it is saved with the
predictions: GL-MCM's local term from the tower's local (patch) features (cached like the global ones while the
tower is untouched, else from a pass with the adapted tower) classified by the method's ``predict_features``;
a method's own evidence (CLIPN's "no" cosines) from ``extra_outputs`` on the image features. For a method that
predicts online (TENT), the local term comes from the tower after adaptation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..core.errors import UeobenchError
from ..method.base import implements
from ..models.clip_ops import encode_images, encode_local, local_features_unsupported
from ..models.norms import batchnorms
from ..scoring.metrics import METRICS, evaluate
from ..scoring.scores import DEFAULT_RULE, compute_score, score_needs


@dataclass
class EvalSplit:
    """One evaluated split: its ``(ref, label)`` items, its cached eval-transform features (``kind -> [N, ...]``
    in item order, or None without a feature store) and a loader over its images
    (``make_loader(items, transform, batch_size, shuffle)``, seeded with the run's seed)."""

    items: list[tuple[Any, int]]
    features: Callable[[str], np.ndarray] | None
    make_loader: Callable[..., Any]


class Evaluator:
    """Evaluates one method on a run's splits (``test``, ``target``; labeled-source runs also ``source_val``, the
    reference of CRoFT's detection metrics and of ``idval`` rules); ``paths`` records how predictions were made."""

    def __init__(self, method: Any, backbone: Any, splits: dict[str, EvalSplit], num_known: int,
                 eval_batch_size: int, device: torch.device, score: str, rule: str, progress: Any):
        self.method, self.backbone, self.splits, self.num_known = method, backbone, splits, num_known
        self.eval_batch_size, self.device = eval_batch_size, device
        self.score, self.rule, self.progress = score, rule, progress
        visual = {id(p) for p in backbone.model.visual.parameters()}
        self._visual_trainable = [p for ps in method.trainable_parameters().values() for p in ps if id(p) in visual]
        self._initial = [p.detach().clone() for p in self._visual_trainable]
        self.paths: dict[str, str] = {}
        self.needs = score_needs(score)
        self.check_score()

    @property
    def make_loader(self) -> Callable[..., Any]:
        """The loader factory over the target domain's images (``(items, transform, batch_size, shuffle)``)."""
        return self.splits["test"].make_loader

    @property
    def logit_scale(self) -> float:
        """The classifier's logit scale: the method's own when it learned one, else the backbone's."""
        own = self.method.logit_scale()
        return float(self.backbone.logit_scale if own is None else own)

    def check_score(self) -> None:
        """Refuse, before any adaptation, local features this backbone or method cannot give (a method's own
        evidence, such as CLIPN's "no" cosines, is checked when the run is planned)."""
        for kind in self.needs:
            if kind == "local_mcm":
                reason = local_features_unsupported(self.backbone)
                if reason:
                    raise UeobenchError(f"score '{self.score}' needs local features: {reason}; use mcm")
                if not implements(self.method, "predict_features") or self.method.feature_kind != "global":
                    raise UeobenchError(f"score '{self.score}' classifies local features with the method's "
                                        f"predict_features, which '{self.method.name}' does not have; use mcm")

    # ---------------------------------------------------------------------------------------- the rule

    def image_tower_untouched(self) -> bool:
        if any(bn.training for bn in batchnorms(self.backbone.model.visual)):
            return False  # batch statistics: an image's features depend on its batch
        return all(torch.equal(p.detach(), p0) for p, p0 in zip(self._visual_trainable, self._initial))

    def uses_cached_features(self) -> bool:
        return (implements(self.method, "predict_features") and all(sp.features is not None for sp in self.splits.values())
                and self.method.prediction_transform(self.backbone.preprocess) is self.backbone.preprocess
                and self.image_tower_untouched())

    # ------------------------------------------------------------------------------------- predictions

    def split_features(self, split: str, kind: str = "global") -> np.ndarray:
        features = self.splits[split].features
        if features is None:
            raise UeobenchError(f"no cached features for split {split} (--no-cache)")
        return features(kind)

    def _labels(self, items) -> np.ndarray:
        return np.array([y for _, y in items], dtype=np.int64)

    def logits(self, split: str, final: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Cosine logits and labels of a split; ``final`` (after adapting) admits the method's online outputs."""
        items = self.splits[split].items
        online = self.method.online_predictions() if split == "target" and final else None
        if online is not None:
            cos = np.asarray(online, dtype=np.float32)
            self.paths[split] = "online outputs while adapting"
        elif self.uses_cached_features():
            feats = torch.from_numpy(self.split_features(split, self.method.feature_kind)).to(self.device)
            with torch.no_grad():
                cos = torch.cat([self.method.predict_features(feats[i: i + self.eval_batch_size]).float().cpu()
                                 for i in range(0, len(feats), self.eval_batch_size)]).numpy()
            self.paths[split] = "cached image features"
        else:
            cos = self._pass(split, items)
        if cos.shape != (len(items), self.num_known):
            raise UeobenchError(f"{self.method.name} on {split}: predictions have shape {list(cos.shape)}, expected "
                                f"[{len(items)}, {self.num_known}]")
        if not np.isfinite(cos).all():
            raise UeobenchError(f"{self.method.name} on {split}: the method produced NaN or inf logits; the run is not recorded")
        return cos, self._labels(items)

    @torch.no_grad()
    def _pass(self, split: str, items) -> np.ndarray:
        batching = self.method.eval_batching()
        batch_size, shuffle = batching if batching is not None else (self.eval_batch_size, False)
        transform = self.method.prediction_transform(self.backbone.preprocess)
        loader = self.splits[split].make_loader(items, transform, batch_size, shuffle=shuffle)
        out = np.zeros((len(items), self.num_known), dtype=np.float32)
        task = self.progress.add_task(f"{self.method.name} on {split}", total=len(items))
        for images, _, idx in loader:
            out[idx.numpy()] = self.method.predict(images).detach().float().cpu().numpy()
            self.progress.advance(task, len(idx))
        self.progress.remove_task(task)
        self.paths[split] = f"pass over the images (batch {batch_size}{', seeded shuffle' if shuffle else ''})"
        return out

    # ---------------------------------------------------------------------------------- score evidence

    @torch.no_grad()
    def _feature_pass(self, split: str, kind: str) -> np.ndarray:
        """Features of a split from the tower as it is now (after adaptation), eval transform, list order."""
        items = self.splits[split].items
        loader = self.splits[split].make_loader(items, self.backbone.preprocess, self.eval_batch_size, shuffle=False)
        out: list[np.ndarray | None] = [None] * len(items)
        for images, _, idx in loader:
            f = encode_images(self.backbone, images) if kind == "global" else encode_local(self.backbone, images)
            for i, row in zip(idx.tolist(), f.cpu().numpy()):
                out[i] = row
        return np.stack(out)

    def _split_features(self, split: str, kind: str) -> np.ndarray:
        if self.splits[split].features is not None and self.image_tower_untouched():
            return self.split_features(split, kind)
        return self._feature_pass(split, kind)

    @torch.no_grad()
    def extras(self, split: str) -> dict[str, np.ndarray]:
        """The evidence of the run's score and the method's own extra outputs for a split, in list order."""
        out: dict[str, np.ndarray] = {}
        online = self.method.online_extra_outputs() if split == "target" and self.method.extras else None
        if online is not None:
            out.update({k: np.asarray(v, dtype=np.float32) for k, v in online.items()})
        elif self.method.extras:
            feats = torch.from_numpy(self._split_features(split, "global")).to(self.device)
            parts: dict[str, list[np.ndarray]] = {}
            for i in range(0, len(feats), self.eval_batch_size):
                for k, v in self.method.extra_outputs(feats[i: i + self.eval_batch_size]).items():
                    parts.setdefault(k, []).append(v.detach().float().cpu().numpy())
            out.update({k: np.concatenate(v) for k, v in parts.items()})
        if "local_mcm" in self.needs:
            local = self._split_features(split, "local")  # [N, P, D]
            n, p, d = local.shape
            best = np.zeros(n, dtype=np.float32)
            step = max(1, self.eval_batch_size)
            for i in range(0, n, step):
                chunk = torch.from_numpy(local[i: i + step].astype(np.float32)).to(self.device).reshape(-1, d)
                cos = self.method.predict_features(chunk).float().reshape(-1, p, self.num_known)
                best[i: i + step] = torch.softmax(cos, dim=-1).amax(dim=(1, 2)).cpu().numpy()  # T = 1
            out["local_mcm"] = best
        return out

    # ------------------------------------------------------------------------------------------ metrics

    def evaluate_splits(self, final: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        scale = self.logit_scale
        metrics, arrays = {}, {"logit_scale": np.array(scale)}
        reference = None
        for split in sorted(self.splits, key=lambda s: s != "source_val"):  # source_val first: the reference
            cos, labels = self.logits(split, final)
            extras = self.extras(split)
            scores = compute_score(self.score, cos, scale, extras)
            if split == "source_val":
                m = evaluate(cos, labels, self.num_known, scores, logit_scale=scale, rule=DEFAULT_RULE)
                m["score"] = self.score
                reference = scores[cos.argmax(1) == labels]
            else:
                m = evaluate(cos, labels, self.num_known, scores, logit_scale=scale, rule=self.rule,
                             reference_scores=reference)
                m["score"], m["rule"] = self.score, self.rule
            metrics[split] = m
            arrays[f"{split}_logits"] = cos.astype(np.float32)
            arrays[f"{split}_labels"] = labels
            arrays[f"{split}_scores"] = scores.astype(np.float32)
            for k, v in extras.items():
                arrays[f"{split}_{k}"] = np.asarray(v, dtype=np.float32)
        return metrics, arrays

    def metrics_now(self) -> dict[str, Any]:
        """Metrics of every split with the method's current state (training curves)."""
        return {split: {k: m[k] for k in METRICS} for split, m in self.evaluate_splits(final=False)[0].items()}
