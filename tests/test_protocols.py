"""Protocol files reproduce the reference splits exactly, and malformed files fail with file and field."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ueobench.core.errors import ProtocolError, UeobenchError
from ueobench.data.protocols import SHIFTS, load_protocol, load_protocol_file, parse_protocol

REFERENCE = json.loads((Path(__file__).parent / "data" / "protocols_reference.json").read_text())


def expand(ranges):
    return [i for a, b in ranges for i in range(a, b + 1)]


@pytest.mark.parametrize("dataset", sorted(REFERENCE))
def test_real_protocols_match_reference(dataset):
    ref = REFERENCE[dataset]
    p = load_protocol(dataset)
    assert list(p.classes) == ref["classes"]
    assert len(p.classes) == ref["num_classes"]
    assert [d.name for d in p.domains] == ref["domains"]
    for shift in ("cda", "pda", "oda", "opda"):
        s = p.split(shift)
        assert list(s.known) == list(range(ref["num_known"])), shift
        assert list(s.target) == expand(ref[shift]), shift
    csda = p.split("csda")
    assert list(csda.known) == list(range(ref["num_classes"]))
    assert list(csda.target) == list(range(ref["num_classes"]))


def test_domainnet_uses_official_train_test_lists():
    p = load_protocol("domainnet")
    d = p.domain("clipart")
    assert (d.adapt, d.test) == ("clipart_train.txt", "clipart_test.txt")
    oh = load_protocol("officehome").domain("clipart")  # case-insensitive lookup
    assert oh.name == "Clipart" and oh.adapt == oh.test == "Clipart_list.txt"


def test_roles_of_officehome_opda():
    r = load_protocol("officehome").roles("opda")
    assert r["num_classes"] == 65
    assert len(r["known"]) == 50 and len(r["target"]) == 45
    assert r["unknown"] == REFERENCE["officehome"]["classes"][50:60]
    assert r["absent"] == REFERENCE["officehome"]["classes"][35:50]


def test_label_map_known_first_then_rest():
    s = load_protocol("office").split("opda")
    m = s.label_map()
    assert [m[i] for i in range(25)] == list(range(25))
    assert sorted(m[i] for i in range(25, 31)) == list(range(25, 31))


def test_shapes_protocol_has_every_shift_and_enough_classes():
    p = load_protocol("shapes")
    assert set(p.splits) == set(SHIFTS)
    assert len(p.classes) >= 12 and len(p.domains) >= 4
    assert {"clipart", "sketch"} <= {d.name for d in p.domains}
    assert p.split("opda").unknown and p.split("opda").absent


def test_checksum_changes_with_content():
    a = parse_protocol(Path(load_protocol("visdac").path).read_text(), "a.json")
    text = Path(load_protocol("visdac").path).read_text().replace('"bus"', '"coach"')
    b = parse_protocol(text, "b.json")
    assert a.checksum != b.checksum and a.checksum.startswith("sha256:")


def _doc():
    return json.loads(Path(load_protocol("visdac").path).read_text())


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("classes"), "missing field 'classes'"),
        (lambda d: d["shifts"].clear(), "shifts: define at least one"),
        (lambda d: d["shifts"].update(XDA={"known": "all", "target": "all"}), "shifts.XDA: a named shift is lower-case"),
        (lambda d: d["domains"][0].update(class_folders="wnid"), "domains[0].class_folders: expected one of"),
        (lambda d: d["domains"][0].update(class_folders="wnids"), "wnids: a domain names its class folders"),
        (lambda d: d["domains"][0].update(label_base=2), "domains[0].label_base: expected 0 or 1"),
        (lambda d: d["domains"][0].update(adapt="../x.json:train"), "domains[0].adapt: must be a path relative"),
        (lambda d: d["shifts"]["pda"].update(target=[[0, 99]]), "shifts.pda.target"),
        (lambda d: d["shifts"]["opda"].update(target=[[0, 5], [4, 9]]), "shifts.opda.target: ranges overlap"),
        (lambda d: d["domains"][0].pop("test"), "domains[0]: missing field 'test'"),
        (lambda d: d.update(classes=["a", "a"]), "classes: duplicate"),
        (lambda d: d.update(prompt="a photo"), ".prompt"),
        (lambda d: d.update(format=99), ".format"),
        (lambda d: d["shifts"].update(**{"ood:x": {"known": "all", "target": "all"}}), "a named shift is lower-case"),
    ],
)
def test_malformed_protocol_names_file_and_field(tmp_path, mutate, field):
    d = _doc()
    mutate(d)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(d))
    with pytest.raises(ProtocolError) as e:
        load_protocol_file(f)
    assert str(f) in str(e.value)
    assert field in str(e.value)


def test_invalid_json_reports_position(tmp_path):
    f = tmp_path / "broken.json"
    f.write_text('{"format": 1,')
    with pytest.raises(ProtocolError, match=r"broken.json: not valid JSON \(line 1"):
        load_protocol_file(f)


def test_unknown_dataset_suggests():
    with pytest.raises(UeobenchError, match="did you mean 'officehome'"):
        load_protocol("ofiicehome")
    with pytest.raises(UeobenchError, match="did you mean 'Clipart'"):
        load_protocol("officehome").domain("clipat")
