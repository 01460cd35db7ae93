"""Label-shift streams (``--stream``): StatA's orders, built by the harness, seeded, part of the run's identity."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY
from ueobench.core.errors import UeobenchError
from ueobench.data.streams import parse_stream, stream_order

Y = np.repeat(np.arange(12), 25)


@pytest.mark.parametrize("text, name", [("dirichlet:0.01", "dirichlet:0.01@128"), ("dirichlet:0.1@64", "dirichlet:0.1@64"),
                                        ("separate", "separate"), ("keff:1-4", "keff:1-4@64"), ("keff:5-25@1000", "keff:5-25@1000")])
def test_streams_parse_to_canonical_names_with_statas_defaults(text, name):
    assert parse_stream(text).name == name
    assert parse_stream("iid") is None and parse_stream(None) is None


@pytest.mark.parametrize("bad", ["dirichlet:0", "dirichlet:-1", "dirichlet:x", "keff:4-1", "keff:0-2", "zipf", "keff:1-4@0"])
def test_a_bad_stream_is_one_line_naming_the_forms(bad):
    with pytest.raises(UeobenchError) as e:
        parse_stream(bad)
    assert "dirichlet:GAMMA[@B]" in str(e.value) and "\n" not in str(e.value)


def _classes_per_batch(order, b=32):
    return np.mean([len(set(Y[order[i:i + b]])) for i in range(0, len(order), b)])


@pytest.mark.parametrize("text", ["dirichlet:0.001@32", "dirichlet:10@32", "separate", "keff:1-3@32"])
def test_every_stream_is_a_seeded_permutation(text):
    s = parse_stream(text)
    o = stream_order(Y, s, 3)
    assert sorted(o) == list(range(len(Y)))
    assert o == stream_order(Y, s, 3) and o != stream_order(Y, s, 4)


def test_streams_correlate_labels_as_their_parameters_say():
    iid = np.random.default_rng(0).permutation(len(Y)).tolist()
    high = stream_order(Y, parse_stream("dirichlet:0.001@32"), 0)
    low = stream_order(Y, parse_stream("dirichlet:10@32"), 0)
    assert _classes_per_batch(high) < _classes_per_batch(low) <= _classes_per_batch(iid) + 0.5
    sep = stream_order(Y, parse_stream("separate"), 0)
    runs = [Y[sep[i]] != Y[sep[i - 1]] for i in range(1, len(sep))]
    assert sum(runs) == 11  # every class contiguous: 12 runs
    one = stream_order(Y, parse_stream("keff:1-1@8"), 0)
    left, pos = {c: 25 for c in range(12)}, 0
    while pos < len(one):  # batches of min(8, the class's images left), each from one class (K_eff = 1)
        c = int(Y[one[pos]])
        size = min(8, left[c])
        assert set(Y[one[pos:pos + size]].tolist()) == {c}
        left[c] -= size
        pos += size
    two = stream_order(Y, parse_stream("keff:3-3@30"), 0)
    assert len(set(Y[two[:30]].tolist())) <= 3  # the first batch: 30 of the 75 images of 3 classes


def _streaming():
    from ueobench.method.registry import get_method, list_methods

    return [m for m in list_methods() if get_method(m).streams]


def test_only_stream_reading_methods_accept_a_stream(cli):
    from ueobench.method.registry import get_method, list_methods

    for m in list_methods():
        if get_method(m).streams or get_method(m).track == "labeled-source":
            continue
        r = cli("run", "--method", m, "--protocol", "oda", "--domain", "real", "--backbone", TINY, "--stream", "separate")
        assert r.exit_code == 2 and "does not read its adaptation data as a stream" in r.output, (m, r.output)
    assert set(_streaming()) >= {"tda", "dpe", "stata", "tent", "unient", "cliptta"}


QUICK = {"tent": ("--set", "epochs=1"), "unient": ("--set", "steps=1"), "cliptta": ("--set", "steps=1"),
         "stata": ("--set", "batch_size=64")}


@pytest.mark.parametrize("method", _streaming())
def test_a_stream_reaches_the_method_and_is_part_of_the_run_identity(cli, method):
    base = ("run", "--method", method, "--protocol", "oda", "--domain", "real", "--backbone", TINY,
            *QUICK.get(method, ()))
    assert cli(*base).exit_code == 0
    assert cli(*base, "--stream", "iid").output.count("already done, reused") == 1  # iid is the default order
    r = cli(*base, "--stream", "separate")
    assert r.exit_code == 0, r.output
    runs = sorted(Path("results/runs").iterdir())
    assert len(runs) == 2
    recs = [json.loads((d / "record.json").read_text()) for d in runs]
    assert sorted(str(rec["config"].get("stream")) for rec in recs) == ["None", "separate"]
    preds = [np.load(d / "predictions.npz")["target_logits"] for d in runs]
    assert not np.array_equal(*preds)  # the order changed what the online method predicted


def test_stata_refuses_a_stream_it_would_ignore(cli):
    r = cli("run", "--method", "stata", "--protocol", "oda", "--domain", "real", "--backbone", TINY, "--stream", "separate")
    assert r.exit_code != 0 and "batch_size=64" in r.output


def test_a_sweep_takes_streams_as_an_axis(cli):
    r = cli("sweep", "--method", "tda", "--protocol", "oda", "--domain", "real", "--backbone", TINY,
            "--stream", "iid,dirichlet:0.01@32,separate")
    assert r.exit_code == 0, r.output
    assert len(list(Path("results/runs").iterdir())) == 3
