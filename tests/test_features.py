"""The shared image-feature cache: identical results, observable reuse, content-based keys."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY
from ueobench.store.records import load_predictions

RUN = ("run", "--method", "zeroshot", "--domain", "painting", "--backbone", TINY)


def record(path: Path) -> dict:
    return json.loads((path / "record.json").read_text())


def only_run(results: str) -> Path:
    [d] = [p for p in Path(results, "runs").iterdir() if not p.name.startswith(".")]
    return d


def test_cached_and_uncached_runs_are_identical(cli):
    assert cli(*RUN, "--protocol", "oda", "--results", "a", "--no-cache").exit_code == 0
    assert cli(*RUN, "--protocol", "oda", "--results", "b").exit_code == 0  # fills the cache
    assert cli(*RUN, "--protocol", "oda", "--results", "c").exit_code == 0  # reads it
    a, b, c = only_run("a"), only_run("b"), only_run("c")
    assert a.name == b.name == c.name  # the cache is not part of a run's identity
    ra, rb, rc = record(a), record(b), record(c)
    assert ra["metrics"] == rb["metrics"] == rc["metrics"]
    assert rc["feature_cache"]["images_encoded"] == 0 and rc["feature_cache"]["images_reused"] > 0
    assert ra["feature_cache"]["enabled"] is False
    pa, pc = load_predictions(a), load_predictions(c)
    assert all(np.array_equal(pa[k], pc[k]) for k in pa)


def test_five_protocols_share_one_pass_per_domain_list(cli):
    encoded = []
    for shift in ("cda", "pda", "oda", "opda", "csda"):
        r = cli(*RUN, "--protocol", shift, "--json")
        assert r.exit_code == 0, r.output
        encoded.append(json.loads(r.output)["feature_cache"]["images_encoded"])
    # the first run encodes the test list (320) and the adaptation list (640); the other four encode nothing
    assert encoded == [16 * 20 + 16 * 40, 0, 0, 0, 0]


def test_ueo_weights_and_epoch0_reuse_the_zero_shot_pass(cli):
    assert cli(*RUN, "--protocol", "opda").exit_code == 0
    r = cli("run", "--method", "ueo", "--protocol", "opda", "--domain", "painting", "--backbone", TINY,
            "--epochs", "1", "--set", "eval_every=1", "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output)
    zs = record(next(p for p in Path("results/runs").iterdir() if p.name.startswith("zeroshot")))
    # epoch 0 of UEO is the zero-shot model: same metrics, computed from the cached features
    assert rec["history"][0]["epoch"] == 0
    for split in ("test", "target"):
        hist = rec["history"][0]["metrics"][split]
        assert hist == pytest.approx({k: zs["metrics"][split][k] for k in hist}, abs=1e-6)
    assert rec["feature_cache"]["images_encoded"] == 0


def test_changed_weights_never_reuse_an_entry(cli):
    assert cli(*RUN, "--protocol", "oda").exit_code == 0
    r = cli(*RUN, "--protocol", "oda", "--seed", "1", "--json")  # random weights differ per seed
    assert json.loads(r.output)["feature_cache"]["images_encoded"] > 0
