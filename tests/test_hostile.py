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
from ueobench.data.sources import open_image, read_folder_tree, read_image_list
from ueobench.core.errors import DataError, UeobenchError

RUN = ["run", "--method", "zeroshot", "--protocol", "oda", "--domain", "real", "--backbone", TINY]
FUZZ = int(os.environ.get("UEOBENCH_FUZZ_EXAMPLES", "30"))  # examples per generated-input test; -m slow: 1000


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
    assert "is a file, not a folder" in one_line_error(cli(*RUN))
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


@settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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


@settings(max_examples=FUZZ, deadline=None)
@given(name=names)
def test_any_name_is_escaped_in_every_format(tmp_path_factory, name):
    from test_leaderboard import fake_run

    from ueobench.report.requests import TableRequest
    from ueobench.report.tables import build_table as _single
    from ueobench.report.render import render

    res = tmp_path_factory.mktemp("res")
    fake_run(res, name, "opda", "clipart", 0, 1.0)
    t = _single(TableRequest(res, ["acc"]))
    md = render(t, "md")
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(rows) == 2 and all(ln.count(" | ") - ln.count("\\\\|") == rows[0].count(" | ") for ln in rows)
    tex = render(t, "latex").splitlines()
    # needs-comment, table, centering, caption, label, tabular, toprule, header, midrule, rows, bottomrule,
    # end tabular, end table: a name can add no line (a newline would end a comment and start live LaTeX)
    assert len(tex) == 12 + len(t.rows)
    assert tex[0].startswith("% ") and all(" & " in ln for ln in tex[7:8] + tex[9:9 + len(t.rows)])
    assert "<script" not in render(t, "html").lower().replace("&lt;script", "")
    for cell in render(t, "csv").splitlines()[1].split(","):
        assert not cell.startswith(("=", "+", "@"))
    json.loads(render(t, "json"))


def test_protocol_paths_stay_inside_the_data_root(cli, tmp_path):
    from conftest import toy_protocol

    proto = toy_protocol(tmp_path)
    doc = json.loads(proto.read_text())
    for key, value in (("adapt", "../../etc/passwd"), ("folder", "/etc"), ("test", "a/../../b.txt")):
        bad = json.loads(json.dumps(doc))
        bad["domains"][0][key] = value
        f = tmp_path / f"bad_{key}.json"
        f.write_text(json.dumps(bad))
        line = one_line_error(cli("show", "protocol", str(f), "opda"))
        assert f"domains[0].{key}: must be a path relative to the data root" in line


def test_table_with_unreadable_predictions_leaves_the_run_out_and_says_so(cli):
    assert cli(*RUN).exit_code == 0
    assert cli("run", "--method", "zeroshot", "--protocol", "oda", "--domain", "clipart", "--dataset", "shapes",
               "--backbone", TINY).exit_code == 0
    [victim] = [p for p in Path("results/runs").iterdir() if "_real_" in p.name]
    (victim / "predictions.npz").write_bytes(b"not a zip")
    r = cli("table", "--score", "energy")
    assert r.exit_code == 0 and "1 unreadable run left out" in r.output and "clipart" in r.output
    (victim / "record.json").write_text("{")
    r = cli("table")
    assert r.exit_code == 0 and "1 unreadable run left out" in r.output


def test_identical_runs_started_at_once_compute_once(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "ueobench.cli", *RUN], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    states = [o[0] for o in outs]
    assert sum(": done" in s for s in states) == 1 and sum("already done, reused" in s for s in states) == 3
    assert not Path("results/failed").exists() or not any(Path("results/failed").iterdir())
    assert len(list(Path("results/runs").iterdir())) == 1


@settings(max_examples=FUZZ, deadline=None)
@given(value=st.one_of(st.text(max_size=12), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                       st.integers(min_value=-2**70, max_value=2**70).map(str)))
def test_any_option_value_is_accepted_in_range_or_refused_with_one_error(value):
    from ueobench.method.options import build_options
    from ueobench.method.registry import get_method

    for key in ("epochs", "lr_prompt", "aug_scale_min", "tune", "ctx_init"):
        try:
            opts = build_options(get_method("ueo"), {key: value})
        except UeobenchError as e:
            assert "\n" not in str(e) and key in str(e)
            continue
        v = getattr(opts, key)
        if key == "epochs":
            assert isinstance(v, int) and v >= 1
        elif key in ("lr_prompt", "aug_scale_min"):
            assert np.isfinite(v) and v >= 0 and (key != "aug_scale_min" or 0 < v <= 1)
        elif key == "tune":
            assert v in ("both", "prompt", "norm")


@settings(max_examples=FUZZ, deadline=None)
@given(doc=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=20))
def test_any_record_content_is_read_or_refused_as_a_record_error(doc):
    from ueobench.store.records import NewerSchema, RecordError, parse_record

    for candidate in (doc, {"schema": 2, "config": doc, "run_id": "x", "method": doc, "metrics": doc}):
        try:
            rec = parse_record(candidate)
        except (RecordError, NewerSchema):
            continue
        assert isinstance(rec.run_id, str) and all(isinstance(v, dict) for v in rec.metrics.values())


@settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_any_config_file_is_read_or_refused_with_one_error(tmp_path_factory, text):
    from ueobench.data import settings as settings_mod

    d = tmp_path_factory.mktemp("cfg")
    (d / "ueobench.toml").write_text(text, encoding="utf-8", errors="replace")
    cwd = os.getcwd()
    os.chdir(d)
    try:
        try:
            settings_mod.load().resolve_root(None)
            settings_mod.load().dataset("shapes")
        except UeobenchError as e:
            assert "ueobench.toml" in str(e)
    finally:
        os.chdir(cwd)


def test_a_cache_that_is_a_file_is_one_clear_error(cli, tmp_path, monkeypatch):
    blocker = tmp_path / "cache-file"
    blocker.write_text("x")
    monkeypatch.setenv("UEOBENCH_CACHE", str(blocker))
    line = one_line_error(cli(*RUN, "--dataset", "shapes"))
    assert "set UEOBENCH_CACHE to a writable folder" in line or "is not a usable folder" in line


@pytest.mark.slow
def test_long_fuzzing_run():
    """The generated-input tests above with 1,000 examples each (opt-in: pytest -m slow)."""
    import subprocess
    import sys

    env = {**os.environ, "UEOBENCH_FUZZ_EXAMPLES": "1000"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "any_",
                          "-m", "not slow"], env=env, capture_output=True, text=True, timeout=3000)
    assert out.returncode == 0, out.stdout[-3000:]
