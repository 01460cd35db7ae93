"""Hostile and careless input: each case either succeeds correctly or fails with one clear line, never a
traceback, a hang or a silently wrong number, and nothing stored changes."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import TINY, make_toy_tree
from ueobench.data import open_image, read_folder_tree, read_image_list
from ueobench.errors import DataError

RUN = ["run", "--method", "zeroshot", "--protocol", "oda", "--domain", "real", "--backbone", TINY]


def one_line_error(r) -> str:
    assert r.exit_code != 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("Error:") and "Traceback" not in r.output, r.output
    return lines[-1]


def test_sixteen_bit_png_and_float_tiff_keep_their_content(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    rgb = np.asarray(open_image(str(tmp_path / "deep.png")))
    assert rgb.min() == 0 and rgb.max() == 255 and 100 < rgb.mean() < 155  # a ramp, not all white
    Image.fromarray(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64), mode="F").save(tmp_path / "f.tif")
    rgb = np.asarray(open_image(str(tmp_path / "f.tif")))
    assert rgb.max() == 255 and 100 < rgb.mean() < 155  # not all black


def test_fifo_nul_byte_and_decompression_bomb_fail_with_one_line(tmp_path, monkeypatch):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        open_image(str(fifo))  # would block forever if opened
    lst = tmp_path / "l.txt"
    lst.write_bytes(b"a.png 0\nb\x00.png 1\n")
    with pytest.raises(DataError, match=r"l.txt:2: the line holds a NUL byte"):
        read_image_list(lst, tmp_path, 5)
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(DataError, match="cannot read image"):
        open_image(str(tmp_path / "big.png"))


def test_folder_trees_do_not_follow_links_out_of_the_root(tmp_path):
    root = make_toy_tree(tmp_path / "data" / "toy", "Art", per_class=1)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    (root / "Bike" / "link.png").symlink_to(outside / "secret.png")
    with pytest.raises(DataError, match="link out of"):
        read_folder_tree(root, ["alarm_clock", "back pack", "bike", "cup", "desk-lamp", "eraser"])


@pytest.mark.parametrize("args, needle", [
    (["--set", "epochs=-1"], None),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**32)], "--seed"),
    (["--workers", "-1"], "--workers"),
    (["--eval-batch-size", "0"], "--eval-batch-size"),
    (["--rule", "nent:nan"], "TAU is a normalised entropy"),
    (["--set", "prompt=a photo"], "must contain {}"),
    (["--device", "meta"], "is not supported"),
    (["--device", "mps"], "is not supported"),
])
def test_bad_values_are_refused_before_anything_is_loaded(cli, args, needle):
    method = ["--method", "ueo"] if "epochs=-1" in args else []
    full = [*RUN, *args]
    if method:
        full[full.index("--method") + 1] = "ueo"
    r = cli(*full)
    assert r.exit_code != 0
    if needle:
        assert needle in r.output, r.output
    assert not Path("results/runs").exists() or not any(Path("results/runs").iterdir())
    assert not Path("results/failed").exists()


def test_bad_config_and_cache_locations(cli, tmp_path, monkeypatch):
    Path("ueobench.toml").write_bytes(b"data_root = '\xff\xfe'\n")
    assert "ueobench.toml: cannot parse" in one_line_error(cli(*RUN, "--dataset", "shapes"))
    Path("ueobench.toml").write_text("[datasets.shapes]\nroot = 5\n")
    assert ".root must be a string" in one_line_error(cli("data", "check", "--dataset", "shapes"))
    Path("ueobench.toml").unlink()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("UEOBENCH_FEATURE_CACHE", str(blocker))
    assert "is not a usable folder" in one_line_error(cli(*RUN))
    assert "does not exist" in one_line_error(cli("table", "--output", str(tmp_path / "missing" / "t.md")))
    r = cli("sweep", "--method", "zeroshot", "--protocol", "oda", "--domain", "real", "--backbone", TINY,
            "--results", str(blocker))
    assert "is not writable" in one_line_error(r)


def test_a_truncated_feature_cache_entry_is_recomputed(cli, tmp_path):
    assert cli(*RUN).exit_code == 0
    for entry in (tmp_path / "feature-cache").glob("*.npz"):
        entry.write_bytes(entry.read_bytes()[:100])
    assert cli(*RUN, "--force").exit_code == 0


def test_results_respect_the_umask(cli):
    old = os.umask(0o002)
    try:
        assert cli(*RUN).exit_code == 0
    finally:
        os.umask(old)
    [run] = list(Path("results/runs").iterdir())
    assert stat.S_IMODE(run.stat().st_mode) == 0o775
    assert stat.S_IMODE((run / "record.json").stat().st_mode) & 0o040  # the group can read it


def test_plugin_clash_and_exit_name_the_files(cli, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "same.py").write_text("from ueobench import Method, register_method\n\n\n@register_method('twin')\n"
                                   "class Twin(Method):\n    pass\n")
    r = cli("--plugins", str(a), "--plugins", str(b), "list", "methods")
    line = one_line_error(r)
    assert "duplicate method name 'twin'" in line and str(a / "same.py") in line and str(b / "same.py") in line
    c = tmp_path / "c"
    c.mkdir()
    (c / "bye.py").write_text("import sys\nsys.exit(3)\n")
    assert "called sys.exit(3)" in one_line_error(cli("--plugins", str(c), "list", "methods"))


# ---------------------------------------------------------------------------------------- generated input

names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.text(max_size=60))
def test_any_list_line_reads_or_fails_with_one_data_error(tmp_path_factory, line):
    d = tmp_path_factory.mktemp("lists")
    lst = d / "l.txt"
    lst.write_text(line + "\n", encoding="utf-8", errors="surrogatepass") if "\ud800" not in line else None
    if not lst.exists():
        return
    try:
        entries, _ = read_image_list(lst, d, 6)
    except DataError as e:
        assert "\n" not in str(e).strip() or str(e).startswith(str(lst))
        return
    for e in entries:  # whatever was accepted lies inside the root with a valid label
        assert e.ref.startswith(os.path.realpath(d) + os.sep) and 0 <= e.label < 6


@settings(max_examples=25, deadline=None)
@given(name=names)
def test_any_name_is_escaped_in_every_format(tmp_path_factory, name):
    from test_leaderboard import fake_run

    from ueobench.leaderboard import build_table, render

    res = tmp_path_factory.mktemp("res")
    fake_run(res, name, "opda", "clipart", 0, 1.0)
    t = build_table(res, ["acc"])
    md = render(t, "md")
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(rows) == 2 and all(ln.count(" | ") - ln.count("\\\\|") == rows[0].count(" | ") for ln in rows)
    tex = render(t, "latex").splitlines()
    assert len(tex) == 7 + len(t.rows)  # comment, begin, toprule, header, midrule, rows, bottomrule, end
    assert tex[0].startswith("% ") and all(" & " in ln for ln in tex[3:4] + tex[5:5 + len(t.rows)])
    assert "<script" not in render(t, "html").lower().replace("&lt;script", "")
    for cell in render(t, "csv").splitlines()[1].split(","):
        assert not cell.startswith(("=", "+", "@"))
    json.loads(render(t, "json"))
