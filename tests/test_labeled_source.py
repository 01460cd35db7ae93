"""The labeled-source track: methods trained on a labeled source domain and judged on other domains.

Driven by the registry where it can be: every labeled-source method refuses to run without ``--source``,
trains once per (source, known classes, options, seed) and is reused on every target and shift, reads only
source images while it trains, and gives the same predictions from a reused model as from a fresh one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY
from ueobench.scoring.metrics import (
    batched_calibration_error,
    calibration_error_torchmetrics,
    evaluate,
    expected_calibration_error,
)

#: cheap options per labeled-source method (the recipes train for tens of epochs)
SOURCE_QUICK: dict[str, dict[str, str]] = {
    "lp": {"search_steps": "1"},
    "croft": {"epochs": "1"},
    "coop": {"epochs": "1"},
    "ft": {"epochs": "1", "batch_size": "32"},
    "wiseft": {"epochs": "1", "batch_size": "32"},
    "flyp": {"epochs": "1", "batch_size": "32"},
    "carot": {"epochs": "1", "batch_size": "32"},
}


def _labeled() -> list[str]:
    from ueobench.method.registry import get_method, list_methods

    return [m for m in list_methods() if get_method(m).track == "labeled-source"]


def _sets(method: str) -> list[str]:
    return [a for k, v in SOURCE_QUICK.get(method, {}).items() for a in ("--set", f"{k}={v}")]


def _run(cli, method: str, *args: str, results: str = "results"):
    r = cli("run", "--method", method, "--backbone", TINY, "--results", results, *_sets(method), *args)
    return r


def _record(results: str, line: str) -> dict:
    path = Path(line.split("record: ", 1)[1].strip())
    return json.loads((path / "record.json").read_text())


def _record_of(output: str) -> dict:
    [line] = [ln for ln in output.splitlines() if ln.startswith("record: ")]
    return _record("", line)


def _preds(rec: dict, results: str = "results") -> dict:
    with np.load(Path(results) / "runs" / rec["run_id"] / "predictions.npz") as z:
        return {k: z[k] for k in z.files}


# ------------------------------------------------------------------------------------ hand-worked metrics


CONF = np.array([0.95, 0.85, 0.85, 0.35, 1.0])
CORRECT = np.array([1, 0, 1, 1, 1], bool)


def test_ece10_is_torchmetrics_binning_by_hand():
    # bins [k/10, (k+1)/10) and a bin of its own for 1.0: |1-.95|/5 + |.5-.85|*2/5 + |1-.35|/5 + 0 = 0.28
    assert calibration_error_torchmetrics(CONF, CORRECT) == pytest.approx(0.28)
    # the 15-bin (lo, hi] ECE puts 0.95 and 1.0 together: |1 - .975| * 2/5 + 0.14 + 0.13 = 0.28 as well
    assert expected_calibration_error(CONF, CORRECT) == pytest.approx(0.28)
    # a confidence of exactly 0.9 opens the [0.9, 1.0) bin (torchmetrics), where (lo, hi] bins would close 0.9
    assert calibration_error_torchmetrics(np.array([0.9, 0.9]), np.array([1, 1], bool)) == pytest.approx(0.1)


def test_ece10_b512_averages_per_batch_ece_weighted_by_batch_size():
    # batches of 2 in list order: [.95 ok, .85 wrong] -> .025 + .425; [.85 ok, .35 ok] -> .075 + .325; [1.0] -> 0
    assert batched_calibration_error(CONF, CORRECT, batch=2) == pytest.approx((2 * 0.45 + 2 * 0.4 + 0) / 5)
    # one batch holding everything is the dataset-level ece10; batching never lowers it (triangle inequality)
    assert batched_calibration_error(CONF, CORRECT, batch=512) == pytest.approx(0.28)
    rng = np.random.default_rng(0)
    conf, ok = rng.uniform(0.1, 1, 2000), rng.uniform(size=2000) < 0.6
    assert batched_calibration_error(conf, ok) >= calibration_error_torchmetrics(conf, ok) - 1e-12


def test_croft_detection_metrics_against_correct_source_val_by_hand():
    # reference = scores of correctly classified source_val images; threshold = np.percentile(ref, 5) = 0.52
    ref = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    cos = np.array([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 2, 2, 2])  # three unknowns (label >= 2)
    scores = np.array([0.99, 0.98, 0.97, 0.53, 0.52, 0.1])
    m = evaluate(cos, labels, 2, scores, logit_scale=1.0, rule="idval:0.95", reference_scores=ref)
    assert m["fpr95_idval"] == pytest.approx(1 / 3)  # only 0.53 is strictly above 0.52
    assert m["auroc_idval"] == pytest.approx(13 / 15)  # ref above ood in 4 + 4 + 5 of 15 pairs
    # the idval rule accepts a sample as known when its score is strictly above the same threshold
    assert m["unknown_recall"] == pytest.approx(2 / 3)
    # without a reference (an unlabeled-target run) both are undefined and the idval rule is refused
    m2 = evaluate(cos, labels, 2, scores, logit_scale=1.0)
    assert m2["auroc_idval"] is None and m2["fpr95_idval"] is None
    with pytest.raises(Exception, match="source_val"):
        evaluate(cos, labels, 2, scores, logit_scale=1.0, rule="idval:0.95")


# ---------------------------------------------------------------------------------- the source split


def test_source_split_is_seeded_per_class_and_disjoint():
    from ueobench.data.dataset import DataResolver
    from ueobench.data.protocols import load_protocol

    proto = load_protocol("shapes")
    res = DataResolver()
    a = res.resolve_source(proto, "real", "opda", None, seed=0, shots=None)
    b = DataResolver().resolve_source(proto, "real", "opda", None, seed=0, shots=None)
    c = res.resolve_source(proto, "real", "opda", None, seed=1, shots=None)
    assert a.train == b.train and a.val == b.val  # seeded: the same split on every call
    assert a.val != c.val  # another seed, another held-out set
    train, val = {r for r, _ in a.train}, {r for r, _ in a.val}
    assert not train & val
    assert {y for _, y in a.train} == set(range(a.split.num_known))  # known classes only, labels 0..K-1
    per_class = np.bincount([y for _, y in a.val], minlength=a.split.num_known)
    sizes = np.bincount([y for _, y in a.train], minlength=a.split.num_known) + per_class
    assert all(v == max(1, round(0.1 * n)) for v, n in zip(per_class, sizes))
    shots = res.resolve_source(proto, "real", "opda", None, seed=0, shots=2)
    assert shots.val == a.val and len(shots.train) == 2 * a.split.num_known
    assert {r for r, _ in shots.train} <= train


# ------------------------------------------------------------------------------- every labeled method


@pytest.mark.parametrize("method", _labeled())
def test_a_labeled_source_method_needs_a_source(cli, method):
    r = cli("run", "--method", method, "--protocol", "oda", "--domain", "real", "--backbone", TINY)
    assert r.exit_code != 0 and "pass --source DOMAIN" in r.output and len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize("method", _labeled())
def test_one_model_per_source_serves_every_target_and_shift(cli, method, tmp_path, monkeypatch):
    """Trained once on the labeled source (reading source images only), then reused on another target and
    shift; a model reused from the store predicts exactly what a freshly trained one does."""
    from ueobench.data import loader

    reads: list = []
    original = loader.ImageDataset.__getitem__

    def spy(self, j):
        reads.append(self.items[self.indices[j]][0])
        return original(self, j)

    monkeypatch.setattr(loader.ImageDataset, "__getitem__", spy)
    from ueobench.method.registry import get_method

    cls = get_method(method)
    owner = next(c for c in cls.__mro__ if "adapt" in vars(c))  # a trains_as subclass shares its parent's
    adapt = owner.adapt
    during: list = []

    def watched(self, context):
        start = len(reads)
        out = adapt(self, context)
        during.extend(reads[start:])
        return out

    monkeypatch.setattr(owner, "adapt", watched)
    r1 = _run(cli, method, "--source", "real", "--protocol", "opda", "--domain", "clipart")
    assert r1.exit_code == 0, r1.output
    rec1 = _record_of(r1.output)
    assert rec1["artifact"]["reused"] is False and rec1["method"]["uses_source_labels"] is True
    assert rec1["source"]["domain"] == "real" and rec1["config"]["source"] == "real"
    assert rec1["method"]["selection"] and "rule" in rec1["method"]["selection"]
    on = rec1["method"]["selection"].get("on")
    assert on in (None, "source_val"), on  # whatever was selected was selected on source_val
    # the images opened while training are source images only (the cached features are read separately)
    target_refs = set(reads) - set(during)
    assert all("/real/" in str(ref) for ref in during), [r for r in during if "/real/" not in str(r)][:3]
    assert "source_val" in rec1["metrics"] and "test" in rec1["metrics"]
    del target_refs

    r2 = _run(cli, method, "--source", "real", "--protocol", "cda", "--domain", "painting")
    assert r2.exit_code == 0, r2.output
    rec2 = _record_of(r2.output)
    assert rec2["artifact"]["id"] == rec1["artifact"]["id"] and rec2["artifact"]["reused"] is True
    assert rec2["history"] == rec1["history"] and rec2["method"]["selection"] == rec1["method"]["selection"]
    assert "(reused)" in r2.output
    arts = list(Path("results/artifacts").iterdir())
    assert len(arts) == 1

    fresh = str(tmp_path / "fresh")
    r3 = _run(cli, method, "--source", "real", "--protocol", "cda", "--domain", "painting", results=fresh)
    assert r3.exit_code == 0, r3.output
    rec3 = _record_of(r3.output)
    assert rec3["artifact"]["reused"] is False and rec3["run_id"] == rec2["run_id"]
    a, b = _preds(rec2), _preds(rec3, fresh)
    for k in ("test_logits", "target_logits", "source_val_logits"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("method", _labeled())
def test_a_labeled_source_rerun_with_force_is_identical(cli, method):
    args = ("--source", "real", "--protocol", "oda", "--domain", "clipart")
    r = _run(cli, method, *args)
    assert r.exit_code == 0, r.output
    rec = _record_of(r.output)
    before = (Path("results/runs") / rec["run_id"] / "predictions.npz").read_bytes()
    r2 = _run(cli, method, *args, "--force")
    assert r2.exit_code == 0, r2.output
    assert (Path("results/runs") / rec["run_id"] / "predictions.npz").read_bytes() == before


# ------------------------------------------------------------------------------------------- the track


def test_refusals_name_what_to_do(cli):
    def err(*args):
        r = cli("run", "--backbone", TINY, "--protocol", "oda", "--domain", "real", *args)
        assert r.exit_code != 0
        assert len(r.output.strip().splitlines()) == 1, r.output
        return r.output

    assert "drop --source" in err("--method", "ueo", "--source", "clipart")
    assert "use it with --source" in err("--method", "zeroshot", "--shots", "4")
    assert "only labeled-source runs" in err("--method", "zeroshot", "--rule", "idval:0.95")
    assert "choose from" in err("--method", "lp", "--source", "nowhere")
    assert "idval:0.95" in err("--method", "lp", "--source", "clipart", "--rule", "idval:2")


def test_zero_shot_is_the_reference_row_of_the_track_and_the_tracks_are_separate_tables(cli):
    assert cli("run", "--method", "zeroshot", "--backbone", TINY, "--protocol", "oda", "--domain", "clipart").exit_code == 0
    r = cli("run", "--method", "zeroshot", "--backbone", TINY, "--protocol", "oda", "--domain", "clipart",
            "--source", "real")
    assert r.exit_code == 0, r.output
    rec = _record_of(r.output)
    assert rec["artifact"] is None and rec["method"]["uses_source_labels"] is False
    assert rec["config"]["source"] == "real" and "source_val" not in rec["metrics"]
    assert _run(cli, "lp", "--source", "real", "--protocol", "oda", "--domain", "clipart").exit_code == 0
    t = cli("table", "--metric", "acc,auroc,ece10_b512")
    assert t.exit_code == 0, t.output
    blocks = [b for b in t.output.split("\n\n") if "| method |" in b or b.startswith("acc")]
    captions = [ln for ln in t.output.splitlines() if ln.startswith("acc / auroc")]
    assert len(captions) == 2, t.output
    labeled = [c for c in captions if "labeled source: real" in c]
    assert len(labeled) == 1 and "never on target images" in labeled[0]
    tables = t.output.split(labeled[0])
    assert "Linear probe" in tables[1] and "Zero-shot" in tables[1]
    assert "Linear probe" not in tables[0]
    del blocks


def test_in_distribution_runs_leave_the_training_images_out(cli):
    r = _run(cli, "lp", "--source", "real", "--protocol", "oda", "--domain", "real")
    assert r.exit_code == 0, r.output
    rec = _record_of(r.output)
    n_train = rec["source"]["n_train"]
    assert rec["data"]["excluded_source_train"] == n_train > 0
    assert "left out" in rec["evaluation"]["splits"]["note"]


def test_shots_subsample_the_source_and_are_their_own_model(cli):
    r = _run(cli, "lp", "--source", "real", "--shots", "2", "--protocol", "oda", "--domain", "clipart")
    assert r.exit_code == 0, r.output
    rec = _record_of(r.output)
    assert rec["config"]["shots"] == 2 and rec["source"]["n_train"] == 2 * rec["protocol"]["num_known"]
    assert "2shot" in rec["artifact"]["id"] and "2-shot" in r.output
    r2 = _run(cli, "lp", "--source", "real", "--protocol", "oda", "--domain", "clipart")
    assert _record_of(r2.output)["artifact"]["id"] != rec["artifact"]["id"]


def test_a_damaged_model_is_trained_again_not_trusted(cli):
    args = ("--source", "real", "--protocol", "oda", "--domain", "clipart")
    rec = _record_of(_run(cli, "lp", *args).output)
    [art] = list(Path("results/artifacts").iterdir())
    state = art / "state.safetensors"
    state.write_bytes(state.read_bytes()[:-8] + b"\0" * 8)
    with pytest.warns(UserWarning, match="damaged"):
        r = _run(cli, "lp", "--source", "real", "--protocol", "cda", "--domain", "painting")
    assert r.exit_code == 0, r.output
    again = _record_of(r.output)
    assert again["artifact"]["id"] == rec["artifact"]["id"] and again["artifact"]["reused"] is False


def test_a_sweep_over_targets_and_shifts_trains_each_model_once_and_resumes_without_training(cli):
    args = ("sweep", "--method", "lp", "--source", "real", "--domain", "clipart,painting", "--protocol", "oda,cda",
            "--backbone", TINY, *_sets("lp"))
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert "4 runs: 4 done" in r.output
    [art] = list(Path("results/artifacts").iterdir())
    meta = json.loads((art / "artifact.json").read_text())
    records = [json.loads((d / "record.json").read_text()) for d in Path("results/runs").iterdir()]
    assert sorted(r["artifact"]["reused"] for r in records) == [False, True, True, True]
    assert all(r["artifact"]["id"] == meta["artifact_id"] for r in records)
    again = cli(*args)
    assert again.exit_code == 0 and "4 done" in again.output
    assert json.loads((art / "artifact.json").read_text()) == meta  # resuming never re-trains
    st = cli("status")
    assert st.exit_code == 0 and "4 done" in st.output
