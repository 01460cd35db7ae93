"""Cross-dataset compositions: another dataset's images mixed into a domain as unknowns, seeded and recorded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY
from ueobench.core.errors import UeobenchError
from ueobench.data.dataset import DataResolver
from ueobench.data.protocols import load_protocol, parse_protocol


def _resolve(shift: str, dataset: str = "shapes65", domain: str = "product"):
    proto = load_protocol(dataset)
    return DataResolver().resolve(proto, domain, shift, None)


def test_the_builtin_composition_draws_its_ratio_of_novel_shapes_with_labels_never_known():
    r = _resolve("ood-shapes")
    sd, proto = r.shift, r.protocol
    k = sd.split.num_known
    assert k == proto.num_classes == 65  # csda: every ID class known
    for role, n_id in (("adapt", 65 * 36), ("test", 65 * 20)):
        entries = getattr(sd, role)
        ood = [y for _, y in entries if y >= k]
        assert len(ood) == 4 * round(0.045 * n_id)  # four parts, each 0.045 OOD images per ID image
        assert sorted(set(ood)) == [65, 66, 67, 68]  # one unknown label per part, all >= K
        assert len(entries) - len(ood) == n_id
    # the OOD images are the shapes world's octagons, trapezoids and lightnings, nothing else
    shapes = load_protocol("shapes")
    novel = {shapes.classes.index(c) for c in ("octagon", "trapezoid", "lightning")}
    ood_refs = {ref for ref, y in sd.test if y >= k}
    from ueobench.data.dataset import load_domain

    labels = {}
    for dom in ("real", "clipart", "painting", "sketch"):
        labels.update({e.ref: e.label for e in load_domain(shapes, dom).test})
    assert ood_refs and {labels[ref] for ref in ood_refs} <= novel


def test_a_composition_is_reproducible_and_its_identity_is_its_content(tmp_path, monkeypatch):
    a, b = _resolve("ood-shapes"), _resolve("ood-shapes")
    assert a.shift.test == b.shift.test and a.checksum == b.checksum
    assert _resolve("ood:shapes/real@0.1").checksum != _resolve("ood:shapes/real@0.2").checksum
    assert _resolve("opda").checksum != a.checksum  # the plain domain is another set of images
    # the same images generated under another cache root: the same checksum (no machine path in it)
    monkeypatch.setenv("UEOBENCH_CACHE", str(tmp_path / "elsewhere"))
    moved = _resolve("ood-shapes")
    assert moved.shift.test[0][0] != a.shift.test[0][0] and moved.checksum == a.checksum


def test_ad_hoc_compositions_keep_only_classes_not_named_like_id_ones():
    proto = load_protocol("shapes")
    comp = proto.composition("ood:shapes65/sketch@0.1")
    assert comp.base == "csda" and comp.parts[0].domain == "sketch" and len(comp.parts[0].classes) == 65
    # shapes65 composed with the demo world: no shapes65 class name is a shapes class name, all 16 are OOD
    assert len(load_protocol("shapes65").composition("ood:shapes@0.1").parts[0].classes) == 16
    assert load_protocol("shapes65").composition("ood:shapes").parts[0].domain == "real"  # its first domain


@pytest.mark.parametrize("shift, message", [
    ("ood:shapes65", "another dataset"),
    ("ood:nope/real", "unknown dataset 'nope'"),
    ("ood:shapes/clipartt@0.1", "did you mean 'clipart'"),
    ("ood:shapes/real@-1", "positive number"),
    ("ood:shapes/real@x", "positive number"),
    ("oda2", "unknown protocol 'oda2'"),
])
def test_bad_compositions_are_refused_in_one_line(shift, message):
    with pytest.raises(UeobenchError) as e:
        load_protocol("shapes65").split(shift)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_ratio_beyond_the_available_images_names_the_largest_possible():
    with pytest.raises(UeobenchError, match=r"ratio of at most 0\.27"):
        _resolve("ood:shapes/real@0.5")


def _proto_text(comp: dict) -> str:
    d = json.loads(Path(load_protocol("shapes65").path).read_text())
    d["compositions"] = {"mine": comp}
    return json.dumps(d)


@pytest.mark.parametrize("comp, field", [
    ({"ood": []}, "compositions.mine.ood"),
    ({"base": "xda", "ood": [{"dataset": "shapes"}]}, "compositions.mine.base"),
    ({"ood": [{"dataset": "shapes", "ratio": 0}]}, "compositions.mine.ood[0].ratio"),
    ({"ood": [{"dataset": "shapes", "classes": []}]}, "compositions.mine.ood[0].classes"),
    ({"ood": [{"ratio": 0.1}]}, "compositions.mine.ood[0]: missing field 'dataset'"),
])
def test_a_bad_composition_in_a_protocol_file_names_the_file_and_field(comp, field):
    with pytest.raises(UeobenchError, match="shapes65.json." + field.replace("[", r"\[").replace("]", r"\]")):
        parse_protocol(_proto_text(comp), "shapes65.json")


def test_a_named_ood_class_that_is_an_id_class_is_refused():
    proto = parse_protocol(_proto_text({"ood": [{"dataset": "shapes", "classes": ["octagon", "circles"]}]}),
                           "shapes65.json")
    with pytest.raises(UeobenchError, match=r"\['circles'\] are not classes of 'shapes'"):
        proto.split("mine")


def test_a_composition_runs_is_recorded_and_tabled_apart_from_the_plain_shift(cli):
    base = ("--dataset", "shapes65", "--domain", "sketch", "--backbone", TINY)
    r = cli("sweep", "--method", "zeroshot", "--protocol", "opda,ood-shapes", *base)
    assert r.exit_code == 0, r.output
    recs = {json.loads(p.read_text())["protocol"]["shift"]: json.loads(p.read_text())
            for p in Path("results/runs").glob("*/record.json")}
    comp = recs["ood-shapes"]
    assert comp["protocol"]["composition"]["ood"][0]["classes"] == ["octagon", "trapezoid", "lightning"]
    assert comp["protocol"]["unknown"] == [f"OOD: shapes/{d}" for d in ("real", "clipart", "painting", "sketch")]
    assert comp["data"]["checksum"] != recs["opda"]["data"]["checksum"]
    assert comp["data"]["n_test"] == 65 * 20 + 4 * 58
    # one table per protocol when the protocol axis is averaged over; both side by side as columns
    t = cli("table", "--metric", "auroc", "--cols", "protocol", "--dataset", "shapes65")
    assert t.exit_code == 0, t.output
    [header] = [ln for ln in t.output.splitlines() if ln.startswith("| method")]
    assert [c.strip() for c in header.strip("|").split("|")] == ["method", "ood-shapes", "opda", "avg"]
    shown = cli("show", "protocol", "shapes65", "ood-shapes")
    assert shown.exit_code == 0 and "shapes/real x0.045: octagon, trapezoid, lightning" in shown.output


def test_per_class_draws_that_many_of_each_ood_class_for_both_splits(tmp_path):
    text = _proto_text({"ood": [{"dataset": "shapes", "domain": "real", "classes": ["octagon", "lightning"],
                                 "per_class": 5}]})
    f = tmp_path / "shapes65-pc.json"
    f.write_text(text.replace('"name": "shapes65"', '"name": "shapes65-pc"'))
    proto = load_protocol(str(f))
    comp = proto.composition("mine")
    assert comp.describe()["ood"][0]["per_class"] == 5 and "ratio" not in comp.describe()["ood"][0]
    r = DataResolver().resolve(proto, "product", "mine", None)
    test_ood = [ref for ref, y in r.shift.test if y >= 65]
    adapt_ood = [ref for ref, y in r.shift.adapt if y >= 65]
    assert len(test_ood) == 10 and test_ood == adapt_ood
    with pytest.raises(UeobenchError, match=r"per_class: expected a positive number of images per OOD class, without"):
        parse_protocol(_proto_text({"ood": [{"dataset": "shapes", "per_class": 5, "ratio": 0.1}]}), "x.json")
