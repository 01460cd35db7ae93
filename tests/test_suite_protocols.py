"""The cross-dataset suite's protocol files (ImageNet and its variants, CoOp's ten datasets, PACS, VLCS, MCM's OOD
sets) against the official sources, and each official on-disk layout read from generated files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import TINY
from ueobench.core.errors import UeobenchError
from ueobench.data.dataset import DataResolver, load_domain
from ueobench.data.protocols import load_protocol

#: the class lists as the official sources have them (tests/data/suite_sources.json records repo, path, commit)
SOURCES = json.loads((Path(__file__).parent / "data" / "suite_sources.json").read_text())
FILES = {"imagenet": "imagenet", "imagenet_a": "imagenet-a", "imagenet_r": "imagenet-r", "caltech101": "caltech101",
         "dtd": "dtd", "eurosat": "eurosat", "fgvc_aircraft": "fgvc-aircraft", "food101": "food101",
         "oxford_flowers": "oxford-flowers", "oxford_pets": "oxford-pets", "stanford_cars": "stanford-cars",
         "sun397": "sun397", "ucf101": "ucf101", "pacs": "pacs", "vlcs": "vlcs", "cifar10": "cifar10",
         "cifar100": "cifar100"}
COUNTS = {"imagenet": 1000, "imagenet_a": 200, "imagenet_r": 200, "caltech101": 100, "dtd": 47, "eurosat": 10,
          "fgvc_aircraft": 100, "food101": 101, "oxford_flowers": 102, "oxford_pets": 37, "stanford_cars": 196,
          "sun397": 397, "ucf101": 101, "pacs": 7, "vlcs": 5, "cifar10": 10, "cifar100": 100}


@pytest.mark.parametrize("key", sorted(FILES))
def test_class_names_and_order_are_the_official_sources(key):
    proto = load_protocol(FILES[key])
    assert list(proto.classes) == SOURCES[key]["classes"] and len(proto.classes) == COUNTS[key]
    assert proto.source and proto.checksum.startswith("sha256:")
    if "template" in SOURCES[key]:
        assert proto.prompt == SOURCES[key]["template"]


def test_imagenet_wnids_are_the_sorted_thousand_and_the_subsets_are_imagenet_classes():
    inet = load_protocol("imagenet")
    assert inet.wnids == tuple(sorted(inet.wnids)) and len(set(inet.wnids)) == 1000
    assert (inet.classes[0], inet.classes[-1], inet.wnids[0], inet.wnids[-1]) == (
        "tench", "toilet paper", "n01440764", "n15075141")
    for name in ("imagenet-a", "imagenet-r"):
        sub = load_protocol(name)
        idx = [inet.wnids.index(w) for w in sub.wnids]
        assert idx == sorted(idx) and len(idx) == 200  # subset labels follow ImageNet's index order
        assert [inet.classes[i] for i in idx] == list(sub.classes)
    assert load_protocol("imagenet-a").classes[:2] == ("stingray", "goldfinch")


def test_food101_follows_coops_label_order_not_tpts():
    # CoOp sorts the folders: cheese_plate (16) before cheesecake (17); TPT's list swaps them
    assert load_protocol("food101").classes[16:18] == ("cheese_plate", "cheesecake")


def _png(path: Path, colour=(120, 30, 200)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("UEOBENCH_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def test_imagenet_layouts_wnid_and_index_folders(root):
    inet = load_protocol("imagenet")
    for i in (0, 1, 999):
        _png(root / "imagenet" / "val" / inet.wnids[i] / f"ILSVRC2012_val_{i:08d}.JPEG")
        _png(root / "imagenet" / "imagenetv2-matched-frequency-format-val" / str(i) / "a.jpeg")
        _png(root / "imagenet" / "sketch" / inet.wnids[i] / "sketch_1.JPEG")
    for dom in ("val", "v2", "sketch"):
        d = load_domain(inet, dom)
        assert sorted(e.label for e in d.test) == [0, 1, 999] and d.adapt == d.test
    sub = load_protocol("imagenet-r")
    _png(root / "imagenet-r" / sub.wnids[5] / "art_0.jpg")
    assert [e.label for e in load_domain(sub, "imagenet-r").test] == [5]
    _png(root / "imagenet" / "val" / "n99999999" / "x.JPEG")
    with pytest.raises(UeobenchError, match="n99999999: folder matches no class.*WordNet id"):
        load_domain(inet, "val")


def test_coop_split_files_are_read_and_checked_against_the_protocol(root):
    pets = load_protocol("oxford-pets")
    base = root / "oxford_pets"
    for name in ("Abyssinian_1.jpg", "Bombay_2.jpg", "yorkshire_terrier_3.jpg"):
        _png(base / "images" / name)
    assert pets.classes.index("bombay") == 7
    split = {"train": [["Abyssinian_1.jpg", 0, "abyssinian"], ["Bombay_2.jpg", 7, "bombay"]],
             "val": [], "test": [["yorkshire_terrier_3.jpg", 36, "yorkshire_terrier"]]}
    (base / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    d = load_domain(pets, "oxford-pets")
    assert [e.label for e in d.adapt] == [0, 7] and [e.label for e in d.test] == [36]
    split["test"][0][1] = 35
    (base / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    with pytest.raises(UeobenchError, match="label 35 is 'yorkshire_terrier' here but 'wheaten_terrier'"):
        load_domain(pets, "oxford-pets")


def test_fgvc_aircraft_variant_lists(root):
    air = load_protocol("fgvc-aircraft")
    base = root / "fgvc_aircraft"
    _png(base / "images" / "1025794.jpg")
    _png(base / "images" / "0056978.jpg")
    (base / "images_variant_trainval.txt").write_text(f"1025794 {air.classes[0]}\n")
    (base / "images_variant_test.txt").write_text(f"0056978 {air.classes[99]}\n")
    d = load_domain(air, "fgvc-aircraft")
    assert [e.label for e in d.adapt] == [0] and [e.label for e in d.test] == [99]


def test_pacs_official_kfold_lists_count_labels_from_one_and_the_tree_is_the_fallback(root):
    pacs = load_protocol("pacs")
    for c in ("dog", "person"):
        _png(root / "PACS" / "sketch" / c / "1.png")
    d = load_domain(pacs, "sketch")  # no lists: DomainBed's folder tree, every image both splits
    assert sorted(e.label for e in d.test) == [0, 6] and d.source == "folder"
    (root / "PACS" / "sketch_train_kfold.txt").write_text("sketch/dog/1.png 1\n")
    (root / "PACS" / "sketch_test_kfold.txt").write_text("sketch/person/1.png 7\n")
    d = load_domain(pacs, "sketch")
    assert [e.label for e in d.adapt] == [0] and [e.label for e in d.test] == [6]
    (root / "PACS" / "sketch_test_kfold.txt").write_text("sketch/person/1.png 0\n")
    with pytest.raises(UeobenchError, match=r"label 0 is outside the protocol's 7 classes \(1\.\.7\)"):
        load_domain(pacs, "sketch")


def test_vlcs_tree_and_a_run_on_it_from_the_cli(root, cli):
    for i, c in enumerate(("bird", "car", "chair", "dog", "person")):
        for k in range(2):
            _png(root / "VLCS" / "VOC2007" / c / f"{k}.jpg", (40 * i, 20 * k, 90))
    r = cli("run", "--method", "zeroshot", "--dataset", "vlcs", "--protocol", "csda", "--domain", "VOC2007",
            "--backbone", TINY)
    assert r.exit_code == 0, r.output
    assert "(n=10, unknown=0)" in r.output
    bad = cli("run", "--method", "zeroshot", "--dataset", "vlcs", "--protocol", "opda", "--domain", "VOC2007",
              "--backbone", TINY)
    assert bad.exit_code == 2 and "unknown protocol 'opda' for dataset 'vlcs'" in bad.output
    assert "it has csda" in bad.output


def test_mcm_style_composition_on_generated_imagenet_and_textures(root, cli):
    inet = load_protocol("imagenet")
    for i in range(20):
        _png(root / "imagenet" / "val" / inet.wnids[i % 4] / f"v{i}.JPEG", (10 * i, 50, 100))
    for c in ("banded", "zigzagged"):
        for k in range(3):
            _png(root / "dtd" / "images" / c / f"{c}_{k}.jpg", (200, 10 * k, 30))
    r = DataResolver().resolve(inet, "val", "ood-textures", None)
    ood = [y for _, y in r.shift.test if y >= 1000]
    assert len(ood) == round(0.1128 * 20) == 2 and r.shift.adapt == r.shift.test  # one stream, one draw
    run = cli("run", "--method", "zeroshot", "--dataset", "imagenet", "--protocol", "ood-textures", "--domain", "val",
              "--backbone", TINY)
    assert run.exit_code == 0, run.output
    assert "(n=22, unknown=2)" in run.output


def test_data_check_reports_a_missing_file_of_a_split_file(root, cli):
    base = root / "oxford_pets"
    _png(base / "images" / "Abyssinian_1.jpg")
    split = {"train": [["Abyssinian_1.jpg", 0, "abyssinian"]], "val": [], "test": [["gone.jpg", 1, "american_bulldog"]]}
    base.mkdir(parents=True, exist_ok=True)
    (base / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    r = cli("data", "check", "--dataset", "oxford-pets", "--protocol", "csda", "--json")
    assert r.exit_code == 1, r.output  # missing files fail the check
    [rep] = json.loads(r.output)
    assert rep["missing"] and rep["missing"][0].endswith("gone.jpg")


def test_crofts_setup_two_on_generated_pacs_and_dtd(root, cli):
    """PACS against DTD as CRoFT draws it: DTD's train + val + test pooled, at most 100 images per class."""
    for i, c in enumerate(("dog", "house")):
        for k in range(3):
            _png(root / "PACS" / "photo" / c / f"{k}.jpg", (60 * i, 20 * k, 90))
    dtd = load_protocol("dtd")
    split = {role: [] for role in ("train", "val", "test")}
    for c in ("banded", "zigzagged"):
        for k in range(4):
            _png(root / "dtd" / "images" / c / f"{c}_{k}.jpg", (200, 30 * k, 10))
            split[("train", "val", "test", "test")[k]].append([f"{c}/{c}_{k}.jpg", dtd.classes.index(c), c])
    (root / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    assert len(load_domain(dtd, "dtd").adapt) == 4  # CoOp's train + val: the unlabeled adaptation data
    pacs = load_protocol("pacs")
    r = DataResolver().resolve(pacs, "photo", "ood-dtd", None)
    assert len([y for _, y in r.shift.test if y >= 7]) == 8  # every image of both classes (fewer than 100 each)
    run = cli("run", "--method", "zeroshot", "--dataset", "pacs", "--protocol", "ood-dtd", "--domain", "photo",
              "--backbone", TINY)
    assert run.exit_code == 0, run.output
    assert "(n=14, unknown=8)" in run.output
    comp = pacs.composition("ood-caltech101")
    assert len(comp.parts[0].classes) == 92 and "dog" not in comp.parts[0].classes  # CRoFT's whitelist, as it matches
    assert len(load_protocol("vlcs").composition("ood-caltech101").parts[0].classes) == 84


def test_crofts_setup_one_draws_its_400_known_classes_per_seed_as_crofts_code_does(root, cli):
    """Setup I: np.random.seed(S); np.random.choice(names, 400, replace=False), one split per CRoFT seed."""
    inet = load_protocol("imagenet")
    first = SOURCES["croft_setup1"]["first_drawn"]
    splits = {s: inet.split(f"croft1-s{s}") for s in "123"}
    for s, sp in splits.items():
        assert len(sp.known) == 400 and len(sp.unknown) == 600 and set(first[s]) <= set(sp.known)
    assert len({sp.known for sp in splits.values()}) == 3
    for i in (0, 1):  # tench (class 0) is known at seed 1, goldfish (1) is not
        for k in range(2):
            _png(root / "imagenet" / "val" / inet.wnids[i] / f"v{i}_{k}.JPEG", (90 * i, 40 * k, 100))
    assert (0 in splits["1"].known, 1 in splits["1"].known) == (True, False)
    run = cli("run", "--method", "zeroshot", "--dataset", "imagenet", "--protocol", "croft1-s1", "--domain", "val",
              "--seed", "1", "--backbone", TINY)
    assert run.exit_code == 0, run.output
    assert "(n=4, unknown=2)" in run.output


@pytest.mark.parametrize("shift, match", [
    ({"croft-x": {"known": {"draw": 0, "seed": 1}, "target": "all"}}, r"shifts.croft-x.known: draw 0 of the 5"),
    ({"mine": {"known": {"draw": 2}, "target": "all"}}, r"shifts.mine.known: a drawn class set is"),
    ({"Bad_Name": {"known": "all", "target": "all"}}, r"shifts.Bad_Name: a named shift is lower-case"),
])
def test_a_named_shift_or_a_drawn_class_set_that_is_wrong_is_a_one_line_error(tmp_path, shift, match):
    from ueobench.core.errors import ProtocolError
    from ueobench.data.protocols import load_protocol_file

    doc = {"format": 1, "name": "mini", "classes": list("abcde"),
           "domains": [{"name": "d", "folder": "d", "adapt": "a.txt", "test": "t.txt"}],
           "shifts": {"csda": {"known": "all", "target": "all"}, **shift}}
    path = tmp_path / "mini.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ProtocolError, match=match):
        load_protocol_file(path)


def _cifar_and_svhn(root: Path, n: int = 40):
    import pickle

    import numpy as np
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    (root / "CIFAR-10" / "cifar-10-batches-py").mkdir(parents=True)
    with open(root / "CIFAR-10" / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"labels": [i % 10 for i in range(n)], b"data": data,
                     b"filenames": [b"x.png"] * n}, f)
    (root / "SVHN").mkdir()
    x = rng.integers(0, 256, (32, 32, 3, 60), dtype=np.uint8)
    savemat(root / "SVHN" / "test_32x32.mat", {"X": x, "y": (np.arange(60) % 10 + 1).reshape(-1, 1)})
    return data, x


def test_cifar_batches_and_svhn_mat_in_their_official_layouts_and_a_composition_from_the_cli(root, cli):
    import numpy as np

    data, x = _cifar_and_svhn(root)
    cifar = load_domain(load_protocol("cifar10"), "test")
    assert [e.label for e in cifar.test] == [i % 10 for i in range(40)] and cifar.adapt == cifar.test
    img = np.asarray(cifar.opener(cifar.test[3].ref))  # rows are channel-major 32 x 32: HWC after the reshape
    assert img.shape == (32, 32, 3) and (img == data[3].reshape(3, 32, 32).transpose(1, 2, 0)).all()
    svhn = load_domain(load_protocol("ood-svhn"), "test")
    assert len(svhn.test) == 60 and {e.label for e in svhn.test} == {0}  # an OOD set: one unlabeled class
    assert (np.asarray(svhn.opener(svhn.test[7].ref)) == x[..., 7]).all()
    for k in range(3):
        _png(root / "LSUN" / "test" / f"{k}.jpg", (30 * k, 90, 10))
    r = DataResolver().resolve(load_protocol("cifar10"), "test", "ood-svhn", None)
    assert len([y for _, y in r.shift.test if y >= 10]) == 40  # ratio 1.0: one SVHN digit per CIFAR image
    run = cli("run", "--method", "ueo", "--dataset", "cifar10", "--protocol", "ood-svhn", "--domain", "test",
              "--backbone", TINY, "--set", "epochs=1")
    assert run.exit_code == 0, run.output
    assert "(n=80, unknown=40)" in run.output
    assert cli("run", "--method", "zeroshot", "--dataset", "cifar10", "--protocol", "ood:ood-lsun@0.05",
               "--domain", "test", "--backbone", TINY).exit_code == 0


def test_a_cifar_batch_that_would_run_code_when_unpickled_is_refused(root):
    import pickle

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    (root / "CIFAR-10" / "cifar-10-batches-py").mkdir(parents=True)
    (root / "CIFAR-10" / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Boom()}))
    with pytest.raises(UeobenchError, match=r"refusing builtins.print: a CIFAR batch holds only arrays"):
        load_domain(load_protocol("cifar10"), "test")
