"""The list, folder and Hugging Face sources on tiny generated images, and the label remapping."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TOY_CLASSES, make_toy_tree, toy_protocol, write_image, write_list
from ueobench.data.check import check_domain
from ueobench.data.dataset import apply_shift, load_domain
from ueobench.data.sources import open_image
from ueobench.core.errors import DataError
from ueobench.data.protocols import load_protocol, load_protocol_file


@pytest.fixture
def toy(tmp_path):
    proto = load_protocol_file(toy_protocol(tmp_path))
    root = tmp_path / "data" / "toy"
    return proto, root


def test_folder_tree_matches_class_names_loosely(toy):
    proto, root = toy
    make_toy_tree(root, "Art", per_class=2)
    dd = load_domain(proto, "art", data_root=str(root.parent))
    assert dd.source == "folder"
    assert sorted({e.label for e in dd.test}) == list(range(6))
    assert len(dd.test) == 12 and dd.adapt == dd.test
    # Alarm_Clock -> alarm_clock (0); Back_Pack -> "back pack" (1); Desk_Lamp -> "desk-lamp" (4)
    by_folder = {Path(str(e.ref)).parent.name: e.label for e in dd.test}
    assert by_folder == {"Alarm_Clock": 0, "Back_Pack": 1, "Bike": 2, "CUP": 3, "Desk_Lamp": 4, "eraser": 5}


def test_folder_with_unknown_class_is_an_error(toy):
    proto, root = toy
    make_toy_tree(root, "Art", per_class=1)
    (root / "Art" / "Giraffe").mkdir()
    with pytest.raises(DataError, match="Giraffe: folder matches no class"):
        load_domain(proto, "Art", data_root=str(root.parent))


def test_image_list_and_shift_remapping(toy):
    proto, root = toy
    make_toy_tree(root, "Art", per_class=2)
    lines = [f"Art/{c}/{i:03d}.png {ci}" for ci, c in enumerate(["Alarm_Clock", "Back_Pack", "Bike", "CUP", "Desk_Lamp", "eraser"]) for i in range(2)]
    write_list(root, "Art", lines)
    dd = load_domain(proto, "Art", data_root=str(root.parent))
    assert dd.source == "list" and len(dd.test) == 12
    sd = apply_shift(proto, "opda", dd)
    # opda: known 0..3, target {0, 1, 4}; benchmark labels: known 0..3, then 4 -> 4, 5 -> 5
    assert sorted({y for _, y in sd.adapt}) == [0, 1, 4]
    assert sorted({y for _, y in sd.test}) == [0, 1, 2, 3, 4, 5]
    assert sd.known_names == TOY_CLASSES[:4]
    pda = apply_shift(proto, "pda", dd)
    assert sorted({y for _, y in pda.adapt}) == [0, 1]
    csda = apply_shift(proto, "csda", dd)
    assert csda.split.num_known == 6 and len(csda.adapt) == 12


def test_list_rejects_escaping_paths_and_bad_labels(toy, tmp_path):
    proto, root = toy
    root.mkdir(parents=True)
    write_image(tmp_path / "outside.png", 0)
    for line, msg in [
        ("../outside.png 0", "escapes the dataset root"),
        (f"{tmp_path / 'outside.png'} 0", "escapes the dataset root"),
        ("Art/x.png 6", "outside the protocol's 6 classes"),
        ("Art/x.png", "expected 'relative/path label'"),
    ]:
        write_list(root, "Art", [line])
        with pytest.raises(DataError, match=msg):
            load_domain(proto, "Art", data_root=str(root.parent))


def test_duplicate_list_entries_are_counted_and_skipped(toy):
    proto, root = toy
    make_toy_tree(root, "Art", per_class=1)
    write_list(root, "Art", ["Art/Bike/000.png 2", "Art/Bike/000.png 2", "Art/CUP/000.png 3"])
    with pytest.warns(UserWarning, match="duplicate"):
        dd = load_domain(proto, "Art", data_root=str(root.parent))
    assert len(dd.test) == 2 and dd.skipped["duplicate list entries"] == 1


def test_hugging_face_saved_dataset_with_classlabel(toy, tmp_path):
    import datasets

    proto, root = toy
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(6)]
    # the hub dataset's own label order differs from the protocol's; names are matched, not indices
    names = ["Eraser", "Bike", "Alarm Clock", "CUP", "Back_Pack", "desk lamp"]
    feats = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"img": imgs, "y": list(range(6))}, features=feats)
    ds.save_to_disk(str(root / "Art"))
    cfg = tmp_path / "ueobench.toml"
    cfg.write_text('[datasets.toy]\nimage_column = "img"\nlabel_column = "y"\n')
    dd = load_domain(proto, "Art", data_root=str(root.parent))
    assert dd.source == "hf"
    assert [e.label for e in dd.test] == [5, 2, 0, 3, 1, 4]
    assert dd.opener(dd.test[0].ref).size == (8, 8)


def test_hugging_face_imagefolder_source(toy, tmp_path):
    proto, root = toy
    make_toy_tree(root, "Art", per_class=2, folder_names=["alarm_clock", "back_pack", "bike", "cup", "desk_lamp", "eraser"])
    (tmp_path / "ueobench.toml").write_text(f'[datasets.toy]\nsource = "hf"\nhf_path = "{root / "Art"}"\n')
    dd = load_domain(proto, "Art")
    assert dd.source == "hf" and len(dd.test) == 12
    assert sorted({e.label for e in dd.test}) == list(range(6))
    assert dd.opener(dd.adapt[3].ref).mode == "RGB"


def test_data_root_precedence(tmp_path, monkeypatch):
    from ueobench.data import settings

    (tmp_path / "ueobench.toml").write_text('data_root = "from_toml"\n')
    assert settings.load().resolve_root(None)[0] == tmp_path / "from_toml"
    monkeypatch.setenv("UEOBENCH_DATA", "/from/env")
    assert settings.load().resolve_root(None)[0] == Path("/from/env")
    assert settings.load().resolve_root("/from/cli")[0] == Path("/from/cli")


def test_missing_data_names_dataset_path_and_homepage(tmp_path):
    proto = load_protocol("officehome")
    with pytest.raises(DataError) as e:
        load_domain(proto, "Art")
    assert "no data root for dataset 'officehome'" in str(e.value) and "hemanthdv.org" in str(e.value)
    with pytest.raises(DataError) as e:
        load_domain(proto, "Art", data_root=str(tmp_path))
    assert str(tmp_path / "office-home") in str(e.value) and "hemanthdv.org" in str(e.value)


def test_corrupt_image_gives_clear_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        open_image(str(bad))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="cannot read image"):
        open_image(str(empty))


def test_check_counts_roles_and_lists_bad_files(toy):
    proto, root = toy
    make_toy_tree(root, "Art", per_class=2)
    (root / "Art" / "Bike" / "000.png").write_bytes(b"not an image")
    lines = [f"Art/{c}/{i:03d}.png {ci}" for ci, c in enumerate(["Alarm_Clock", "Back_Pack", "Bike", "CUP", "Desk_Lamp", "eraser"]) for i in range(2)]
    write_list(root, "Art", lines + ["Art/CUP/404.png 3"])
    dd = load_domain(proto, "Art", data_root=str(root.parent))
    r = check_domain(proto, "opda", dd)
    assert r["splits"]["adapt"] == {"images": 6, "known": 4, "unknown": 2, "classes": 3}
    assert r["splits"]["test"] == {"images": 13, "known": 9, "unknown": 4, "classes": 6}
    assert [Path(p).name for p in r["missing"]] == ["404.png"]
    assert [Path(p).parent.name + "/" + Path(p).name for p in r["unreadable"]] == ["Bike/000.png"]


def test_shapes_generation_is_deterministic(tmp_path):
    from ueobench.data import worlds as shapes

    proto = load_protocol("shapes")
    doms = [(d.name, d.folder, d.adapt, d.test) for d in proto.domains[:2]]
    a = shapes.generate(list(proto.classes[:3]), doms, seed=3, per_class={"train": 2, "test": 1}, out=tmp_path / "a")
    b = shapes.generate(list(proto.classes[:3]), doms, seed=3, per_class={"train": 2, "test": 1}, out=tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 2 * 3 * 3
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "real_train.txt").read_text() == (b / "real_train.txt").read_text()
    c = shapes.generate(list(proto.classes[:3]), doms, seed=4, per_class={"train": 2, "test": 1}, out=tmp_path / "c")
    assert (a / files[0]).read_bytes() != (c / files[0]).read_bytes()
