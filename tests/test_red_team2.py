"""The second red team's findings, one test each (issues 31 and 33): stale or mixed numbers shown as current,
code run from data, tracebacks and silent wrong values, unescaped output, unvalidated input."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, make_toy_tree, toy_protocol, write_image

RUN = ["run", "--method", "zeroshot", "--protocol", "oda", "--domain", "real", "--backbone", TINY]


def one_line_error(r) -> str:
    assert r.exit_code != 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("Error:") and "Traceback" not in r.output, r.output
    return lines[-1]


def tiny_checkpoint(path: Path, seed: int, edit=None) -> Path:
    """A random tiny-vit CLIP saved as safetensors (``edit`` may change its state dict first)."""
    import open_clip
    from safetensors.torch import save_file

    from ueobench.models.backbones import register_model_configs

    register_model_configs()
    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in open_clip.create_model("tiny-vit").state_dict().items()}
    if edit:
        edit(state)
    save_file(state, str(path))
    return path


def record_of(cli, *args) -> dict:
    r = cli(*args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


# ----------------------------------------------------------------------------- stale or mixed numbers


def test_other_weights_in_the_same_file_are_another_run(cli, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "model.safetensors", seed=1)
    args = [*RUN[:-1], f"tiny-vit:{ckpt}"]
    first = record_of(cli, *args)
    tiny_checkpoint(ckpt, seed=2)  # replaced by other weights: same path, same size
    second = record_of(cli, *args)
    assert second["run_id"] != first["run_id"] and second["config"]["weights"] != first["config"]["weights"]
    assert second["metrics"]["test"] != first["metrics"]["test"]
    assert first["config"]["weights"].startswith("sha256:")


def test_pretrain_never_writes_into_the_installed_package_unless_asked(cli, tmp_path):
    from ueobench.core.hashing import file_sha256
    from ueobench.models.pretrain import installed_output

    installed = installed_output("shapes65")
    before = file_sha256(installed)
    r = cli("pretrain", "shapes65", "--steps", "1", "--pool", "64")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[r.output.index("{"):])
    assert Path(summary["path"]).resolve() == (tmp_path / "tiny-shapes65-retrained.safetensors").resolve()
    assert summary["use_with"].startswith("--backbone tiny-shapes65:")
    assert file_sha256(installed) == before


@pytest.mark.parametrize("args, message", [(["--steps", "0"], "--steps"), (["--steps", "-3"], "--steps"),
                                           (["--minutes", "-1"], "--minutes"), (["--minutes", "nan"], "--minutes"),
                                           (["--pool", "0"], "--pool")])
def test_pretrain_refuses_options_that_would_write_an_untrained_model(cli, args, message):
    r = cli("pretrain", "shapes65", *args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert not list(Path.cwd().glob("*.safetensors"))


def test_the_feature_cache_is_keyed_by_the_images_content(cli, tmp_path):
    proto = toy_protocol(tmp_path)
    root = tmp_path / "data"
    make_toy_tree(root / "toy", "Art", per_class=3)
    args = ["run", "--method", "zeroshot", "--protocol", "opda", "--domain", "Art", "--dataset", str(proto),
            "--backbone", TINY, "--data-root", str(root)]
    first = record_of(cli, *args)
    for i, img in enumerate(sorted((root / "toy" / "Art").rglob("*.png"))):  # other images: same size, old times
        st = img.stat()
        data = np.random.default_rng(5000 + i).integers(0, 255, (16, 16, 3), dtype=np.uint8)
        from PIL import Image

        Image.fromarray(data).save(img, format="BMP")  # uncompressed: the same size as long as the shape is
        if i == 0:
            size = img.stat().st_size
        os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert img.stat().st_size == size and img.stat().st_mtime_ns == st.st_mtime_ns
    again = record_of(cli, *args, "--force")
    fresh = record_of(cli, *args, "--force", "--no-cache", "--results", str(tmp_path / "fresh"))
    assert again["metrics"] == fresh["metrics"] != first["metrics"]
    assert again["feature_cache"]["images_encoded"] == 18  # encoded again, never read from the old entry


def test_a_cell_never_averages_runs_of_different_data(cli, tmp_path):
    proto = toy_protocol(tmp_path)
    for root in ("a", "b"):
        make_toy_tree(tmp_path / root / "toy", "Art", per_class=3)
    for f in sorted((tmp_path / "b" / "toy" / "Art").rglob("*.png")):
        write_image(f, seed=777, size=16)
    base = ["run", "--method", "zeroshot", "--protocol", "opda", "--domain", "Art", "--dataset", str(proto),
            "--backbone", TINY]
    for root, seed in (("a", "0"), ("b", "1")):
        assert cli(*base, "--data-root", str(tmp_path / root), "--seed", seed).exit_code == 0
    line = one_line_error(cli("table", "--protocol", "opda"))
    assert "2 versions of its images" in line and "--data-version" in line
    kept = cli("table", "--protocol", "opda", "--data-version", json.loads(
        Path(next(Path("results/runs").iterdir()) / "record.json").read_text())["config"]["data_checksum"][7:15])
    assert kept.exit_code == 0 and "one seed per cell" in kept.output
    # a copy of the same images elsewhere is the same data: the run is reused, not a second version
    shutil.copytree(tmp_path / "a", tmp_path / "a2")
    r = cli(*base, "--data-root", str(tmp_path / "a2"), "--seed", "0")
    assert "already done, reused" in r.output


def test_an_edited_protocol_file_is_shown_apart(cli, tmp_path):
    proto = toy_protocol(tmp_path)
    make_toy_tree(tmp_path / "data" / "toy", "Art", per_class=2)
    base = ["run", "--method", "zeroshot", "--protocol", "cda", "--domain", "Art", "--dataset", str(proto),
            "--backbone", TINY, "--data-root", str(tmp_path / "data")]
    assert cli(*base).exit_code == 0
    doc = json.loads(proto.read_text())
    doc["prompt"] = "a drawing of a {}."
    proto.write_text(json.dumps(doc))
    assert cli(*base).exit_code == 0
    out = cli("table", "--rows", "dataset", "--cols", "method").output
    assert out.count("| toy") == 2 and "[protocol " in out


def test_a_column_never_mixes_scores_and_the_caption_names_them(cli):
    assert cli(*RUN).exit_code == 0
    assert cli(*RUN[:2], "gda", *RUN[3:], "--score", "energy").exit_code == 0
    out = cli("table", "--metric", "auroc").output
    assert out.count("score mcm") == 1 and out.count("score energy") == 1  # two tables, each saying its score
    acc_only = cli("table", "--metric", "acc").output
    assert acc_only.count("| method |") == 1  # accuracy does not depend on the score


def test_hscore_under_several_rules_shows_the_asked_or_default_rule(cli):
    for rule in ("kmeans2", "nent:0.5"):
        assert cli(*RUN, "--rule", rule).exit_code == 0
    records = [json.loads((d / "record.json").read_text()) for d in Path("results/runs").iterdir()]
    default = next(r for r in records if r["evaluation"]["hscore_rule"] == "nent:0.5")
    out = cli("table", "--metric", "hscore", "--format", "json").output
    shown = json.loads(out)["cells"][0]["mean"]
    assert shown == pytest.approx(100 * default["metrics"]["test"]["hscore"], abs=1e-3)


def test_duplicate_list_entries_written_as_aliases_are_skipped(tmp_path):
    from ueobench.data.sources import read_image_list

    (tmp_path / "a").mkdir()
    write_image(tmp_path / "a" / "x.png", seed=1)
    lst = tmp_path / "l.txt"
    lst.write_text("a/x.png 0\n./a/x.png 0\na//x.png 0\na/../a/x.png 0\n")
    entries, dupes = read_image_list(lst, tmp_path, 3)
    assert len(entries) == 1 and dupes == 3


# ---------------------------------------------------------------------------------------- code from data


def test_a_pickled_payload_never_runs_even_with_the_cluster_override(cli, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "model.pt"
    torch.save({"state_dict": {"x": Payload()}}, evil)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    line = one_line_error(cli(*RUN[:-1], f"tiny-vit:{evil}"))
    assert "never pickled code" in line and not marker.exists()


# --------------------------------------------------------------------------- tracebacks, silent values


@pytest.mark.parametrize("what, edit, message", [
    ("inf scale", lambda s: s.__setitem__("logit_scale", torch.tensor(float("inf"))), "logit_scale"),
    ("nan weight", lambda s: s["visual.proj"].fill_(float("nan")), "NaN or infinite"),
    ("huge scale", lambda s: s.__setitem__("logit_scale", torch.tensor(500.0)), "logit_scale is 500"),
    ("integers", lambda s: s.__setitem__("visual.proj", s["visual.proj"].to(torch.int32)), "not floating point"),
])
def test_checkpoint_content_is_checked_on_load(cli, tmp_path, what, edit, message):
    ckpt = tiny_checkpoint(tmp_path / "bad.safetensors", seed=0, edit=edit)
    assert message in one_line_error(cli(*RUN[:-1], f"tiny-vit:{ckpt}"))


def test_clipn_checkpoints_are_checked_and_read_in_every_layout(cli, tmp_path):
    from conftest import make_tiny_clipn
    from ueobench.models.checkpoints import read_state_dict

    good = make_tiny_clipn(tmp_path / "clipn.pt")
    state = read_state_dict(good)
    base = ["run", "--method", "clipn", "--protocol", "opda", "--domain", "clipart", "--set", "prompts=dataset"]
    from safetensors.torch import save_file

    as_st = tmp_path / "clipn.safetensors"  # the official layout (module. keys) stored as safetensors
    save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, str(as_st))
    assert cli(*base, "--backbone", f"tiny-vit:{as_st}").exit_code == 0
    short = dict(state, prompt_no=state["prompt_no"][:, :10])
    torch.save({"state_dict": short}, tmp_path / "short.pt")
    assert "prompt_no has shape" in one_line_error(cli(*base, "--backbone", f"tiny-vit:{tmp_path / 'short.pt'}"))
    nan = dict(state)
    nan["transformer_no.resblocks.0.attn.in_proj_weight"] = torch.full_like(
        state["transformer_no.resblocks.0.attn.in_proj_weight"], float("nan"))
    torch.save({"state_dict": nan}, tmp_path / "nan.pt")
    assert "NaN or infinite" in one_line_error(cli(*base, "--backbone", f"tiny-vit:{tmp_path / 'nan.pt'}"))
    handmade = {k: v for k, v in state.items() if k != "prompt_no"}
    torch.save({"state_dict": handmade}, tmp_path / "hand.pt")
    assert "hand-crafted-prompt release" in one_line_error(
        cli(*base, "--backbone", f"tiny-vit:{tmp_path / 'hand.pt'}"))


def test_hugging_face_labels_are_refused_or_skipped_and_counted(tmp_path):
    import datasets

    from ueobench.core.errors import DataError
    from ueobench.data.dataset import load_domain
    from ueobench.data.protocols import load_protocol_file

    proto = load_protocol_file(toy_protocol(tmp_path))
    images = [np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8) for i in range(4)]

    def saved(labels, image_feature=True, name="hf"):
        data = {"image": images if image_feature else ["a", "b", "c", "d"], "label": labels}
        feats = datasets.Features({"image": datasets.Image() if image_feature else datasets.Value("string"),
                                   "label": datasets.Value("int64") if all(isinstance(x, int) or x is None for x in labels)
                                   else datasets.Value("float32") if any(isinstance(x, float) for x in labels)
                                   else datasets.Value("string")})
        path = tmp_path / name
        datasets.Dataset.from_dict(data, features=feats).save_to_disk(str(path))
        (tmp_path / "ueobench.toml").write_text(f'[datasets.toy]\nsource = "hf"\nhf_path = "{path}"\n')
        return path

    saved([0, -1, 2, None], name="a")
    with pytest.warns(UserWarning, match="skipped 4 rows without a label"):  # 2 per split (adapt and test)
        dd = load_domain(proto, "Art")
    assert [e.label for e in dd.test] == [0, 2] and dd.skipped["rows without a label"] == 4
    saved(["bike", "cup", "eraser", "alarm_clock"], name="b")
    assert [e.label for e in load_domain(proto, "Art").test] == [2, 3, 5, 0]
    for labels, message, feature, name in ((
            [0.0, 1.5, 2.0, 3.0], "is a float", True, "c"), ([0, 1, 9, 2], "label 9 is outside", True, "d"),
            (["bike", "kayak", "cup", "cup"], "'kayak' matches no protocol class", True, "e"),
            ([0, 1, 2, 3], "holds Value values, not images", False, "f")):
        saved(labels, image_feature=feature, name=name)
        with pytest.raises(DataError, match=message):
            load_domain(proto, "Art")


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe dataset,protocol", "not UTF-8"),
    (b"", "no header"),
    (b"dataset,protocol,domain,backbone,method,metric,value,citation\n"
     b"shapes,opda,clipart,tiny-vit:random,zeroshot,acc,10.0,a,extra\n", "9 fields where the header has 8"),
    (b"dataset,protocol,domain,backbone,method,metric,value,citation\n"
     b"shapes,opda,clipart,x,zeroshot,acc,10.0,one\nshapes,opda,Clipart,x,zeroshot,acc,11.0,two\n",
     "already reported at line 2"),
])
def test_reference_files_are_refused_with_one_line(cli, tmp_path, content, message):
    (tmp_path / "ref.csv").write_bytes(content)
    assert message in one_line_error(cli("reference", "check", str(tmp_path / "ref.csv")))


def test_a_hash_inside_a_reference_field_is_text(tmp_path):
    from ueobench.report.reference import read_reference

    (tmp_path / "ref.csv").write_text("# a comment line\ndataset,protocol,domain,backbone,method,metric,value,"
                                      "citation\nshapes,opda,clipart,x,ueo#2,acc,10.0,Table #3 of the paper\n")
    df = read_reference(tmp_path / "ref.csv")
    assert list(df["method"]) == ["ueo#2"] and list(df["citation"]) == ["Table #3 of the paper"]


@pytest.mark.parametrize("content", [b'{"key": "x", "spe', b'{"key": "x", "spec": {"bogus": 1}, "jobs": [], '
                                     b'"names": []}', b"[1, 2]", b"\xff\xfe"])
def test_status_survives_a_damaged_sweep_plan(cli, content):
    assert cli("sweep", "--method", "zeroshot", "--protocol", "oda", "--domain", "real", "--backbone",
               TINY).exit_code == 0
    (Path("results/sweeps") / "damaged.json").write_bytes(content)
    with pytest.warns(UserWarning, match="damaged.json: not a readable saved sweep"):
        r = cli("status")
    assert r.exit_code == 0 and "1 done" in r.output


def test_every_option_a_sweep_error_suggests_exists_on_sweep(cli, tmp_path, monkeypatch):
    from ueobench.cli.run import sweep as sweep_cmd

    options = {o for p in sweep_cmd.params for o in p.opts}
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("UEOBENCH_FEATURE_CACHE", str(tmp_path / "a-file"))
    r = cli("sweep", "--method", "zeroshot", "--protocol", "oda", "--domain", "real", "--backbone", TINY)
    texts = [r.output] + [p.read_text() for p in Path("results/failed").glob("*.json")]
    named = {opt for t in texts for opt in re.findall(r"--[a-z][a-z-]*", t)}
    assert named and named <= options, named - options


# ----------------------------------------------------------------------------------------------- output


def test_markup_control_characters_and_formulas_never_reach_the_reader(cli, tmp_path):
    from test_leaderboard import fake_run

    hostile = "**x** [a](http://e.com) ![i](http://e.com/p.png) \x1b[31m\u202eevil"
    fake_run(Path("results"), hostile, "opda", "clipart", 0, 1.0)
    fake_run(Path("results"), "=HYPERLINK(1)", "opda", "clipart", 0, 1.0)
    md = cli("table").output
    [row] = [ln for ln in md.splitlines() if "evil" in ln]
    label = row.split(" | ")[0]
    assert "**" not in label and "](" not in label and "http://" not in label  # no bold, link, image or autolink
    for fmt in ("md", "latex", "csv", "json", "html"):
        out = cli("table", "--format", fmt).output
        assert "\x1b" not in out and "\u202e" not in out, fmt
    csv_text = cli("export", "--format", "csv").output
    assert "\x1b" not in csv_text and ",=HYPERLINK" not in csv_text and "'=HYPERLINK" in csv_text
    plugins = tmp_path / "p"
    plugins.mkdir()
    (plugins / "esc.py").write_text('"""Evil \\x1b[2J name\\u202e."""\nfrom ueobench import Method, register_method\n\n'
                                    '@register_method("esc")\nclass E(Method):\n    pass\n')
    listed = cli("--plugins", str(plugins), "list", "methods").output
    assert "\x1b" not in listed and "\u202e" not in listed and "\\x1b" in listed


def test_a_label_with_dollars_is_plotted_as_text(cli, tmp_path):
    from test_leaderboard import fake_run

    fake_run(Path("results"), "$\\frac{a}{$", "opda", "clipart", 0, 1.0)
    fake_run(Path("results"), "ueo", "opda", "clipart", 0, 2.0)
    for kind in ("scatter", "bars"):
        r = cli("plot", kind, "--output", str(tmp_path / f"{kind}.svg"))
        assert r.exit_code == 0, r.output
        assert "frac" in (tmp_path / f"{kind}.svg").read_text()  # the text itself, not math


def test_a_damaged_run_never_stops_a_recomputed_table(cli):
    from test_leaderboard import fake_run

    for domain in ("clipart", "sketch", "real"):
        fake_run(Path("results"), "ueo", "opda", domain, 0, 1.0)
    runs = sorted(Path("results/runs").iterdir())
    (runs[0] / "predictions.npz").write_bytes(b"not a zip file")
    np.savez(runs[1] / "predictions.npz", logit_scale=np.array(1.0), test_logits=np.zeros((3, 2)),
             test_labels=np.zeros(5), target_logits=np.zeros((3, 2)), target_labels=np.zeros(5))
    r = cli("table", "--score", "energy", "--metric", "auroc", "--cols", "domain")
    assert r.exit_code == 0 and "2 unreadable runs left out" in r.output
    assert r.output.count("| ueo |") == 1


def test_an_average_over_fewer_domains_than_the_dataset_has_is_marked(cli):
    from test_leaderboard import fake_run

    for domain in ("clipart", "sketch", "real"):  # shapes has 4 domains
        fake_run(Path("results"), "ueo", "opda", domain, 0, 1.0)
    out = cli("table", "--cols", "protocol").output
    assert "‡" in out and "fewer domains than the dataset has" in out


# -------------------------------------------------------------------------------------------- issue 33


def test_fpr95_on_tied_scores_matches_a_hand_count():
    from ueobench.scoring.metrics import fpr_at_95_tpr

    def by_hand(known, s):
        for t in sorted(set(s.tolist()), reverse=True):  # the highest threshold keeping 95% of the knowns
            if (s[known] >= t).mean() >= 0.95:
                return float((s[~known] >= t).mean())

    known = np.array([True] * 20 + [False] * 13)
    s = np.array([1.0] * 19 + [0.5] + [1.0] * 2 + [0.5] * 11)
    assert fpr_at_95_tpr(known, s) == pytest.approx(by_hand(known, s)) == pytest.approx(2 / 13)
    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(5, 40))
        known = rng.random(n) < 0.6
        if known.all() or not known.any():
            continue
        s = np.round(rng.random(n) * rng.integers(2, 6))
        assert fpr_at_95_tpr(known, s) == pytest.approx(by_hand(known, s))


def test_prompts_longer_than_the_text_tower_are_refused(cli):
    long = "a photo of " + " ".join(["very"] * 80) + " {}."
    assert "tokens; the text tower takes at most 77" in one_line_error(cli(*RUN, "--set", f"prompt={long}"))
    assert "at most 77" in one_line_error(cli(*RUN[:2], "ent", *RUN[3:], "--set", "n_ctx=75",
                                              "--set", "ctx_init=", "--epochs", "1"))


def test_a_newline_in_a_prompt_cannot_forge_a_log_line(tmp_path):
    env = {**os.environ, "UEOBENCH_NO_PROGRESS": ""}
    env.pop("UEOBENCH_NO_PROGRESS")
    out = subprocess.run([sys.executable, "-m", "ueobench.cli", *RUN, "--set",
                          "prompt=a photo of a {}.\nrun x: done in 1.0s; test acc 99.9"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert not any(line.startswith("run x: done") for line in (out.stdout + out.stderr).splitlines())


def test_one_rule_has_one_spelling(cli):
    ids = {record_of(cli, *RUN, "--rule", rule)["run_id"] for rule in ("nent:0.5", "nent:.5", " nent:0.50 ")}
    assert len(ids) == 1


def test_unknown_provenance_is_not_current(cli, tmp_path):
    plugins = tmp_path / "p"
    plugins.mkdir()
    src = '"""A plugin."""\nfrom ueobench import register_method\nfrom ueobench.adapt import PromptTuningMethod\n\n' \
          '@register_method("moved")\nclass Moved(PromptTuningMethod):\n    def objective(self, p, i):\n' \
          '        return -(p * p.log()).sum(1).mean()\n'
    (plugins / "moved.py").write_text(src)
    assert cli("--plugins", str(plugins), *RUN[:2], "moved", *RUN[3:], "--epochs", "1").exit_code == 0
    shutil.rmtree(plugins)  # moved elsewhere (and edited there): the record's file is nowhere to be found
    out = cli("table").output if cli("table").exit_code == 0 else cli("table").output
    assert "made by other code" in out
    assert "source not found" in cli("table", "--code", "all").output


def test_one_label_never_stands_for_two_option_sets(cli):
    from test_leaderboard import fake_run

    fake_run(Path("results"), "gda", "opda", "clipart", 0, 1.0)
    fake_run(Path("results"), "gda", "opda", "clipart", 1, 2.0)
    runs = sorted(Path("results/runs").iterdir())
    doc = json.loads((runs[1] / "record.json").read_text())
    doc["config"]["options"] = {"alpha": 1.0}  # a plugin changed gda's default: same label, other options
    (runs[1] / "record.json").write_text(json.dumps(doc))
    doc0 = json.loads((runs[0] / "record.json").read_text())
    doc0["config"]["options"] = {"alpha": 0.1}
    (runs[0] / "record.json").write_text(json.dumps(doc0))
    out = cli("table").output
    assert "gda [alpha=0.1]" in out and "gda [alpha=1.0]" in out and "one seed per cell" in out


@pytest.mark.parametrize("seed, message", [("-1", "bad --seed"), ("1e20", "bad --seed"),
                                           ("99999999999999", "bad --seed"), ("0-300000", "more than 1000 seeds")])
def test_sweep_seeds_are_validated_before_planning(cli, seed, message):
    import time

    t = time.perf_counter()
    line = one_line_error(cli("sweep", "--method", "zeroshot", "--seed", seed, "--dry-run"))
    assert message in line and time.perf_counter() - t < 30


def test_spellings_of_one_value_are_one_run(cli):
    r = cli("sweep", "--method", "gda", "--protocol", "oda", "--domain", "clipart,Clipart", "--backbone", TINY,
            "--set", "alpha=0.1,0.10,1e-1", "--dry-run")
    assert r.exit_code == 0 and r.output.strip().splitlines()[-1].startswith("1 runs:")


def test_table_metric_and_seed_options_are_validated(cli):
    from test_leaderboard import fake_run

    fake_run(Path("results"), "ueo", "opda", "clipart", 0, 1.0)
    assert "twice" in one_line_error(cli("table", "--metric", "acc,acc"))
    r = cli("table", "--seeds", "-1")
    assert r.exit_code == 2 and "fewer than -1" not in r.output


def test_workers_are_capped_at_the_runs_to_do(cli, monkeypatch):
    import subprocess as sp

    started = []
    real = sp.Popen

    def counting(*a, **k):
        started.append(a)
        return real(*a, **k)

    monkeypatch.setattr(sp, "Popen", counting)
    r = cli("sweep", "--method", "zeroshot", "--protocol", "oda", "--domain", "real", "--backbone", TINY,
            "--workers", "6")
    assert r.exit_code == 0 and len(started) == 1


def test_a_forced_sweep_reports_runs_only_once_redone(cli):
    grid = ["sweep", "--method", "zeroshot", "--protocol", "oda,opda", "--domain", "real", "--backbone", TINY]
    assert cli(*grid).exit_code == 0
    before = {d.name: (d / "record.json").stat().st_mtime_ns for d in Path("results/runs").iterdir()}
    r = cli(*grid, "--workers", "2", "--force")
    assert r.exit_code == 0 and r.output.count("done ") >= 2
    after = {d.name: (d / "record.json").stat().st_mtime_ns for d in Path("results/runs").iterdir()}
    assert all(after[n] > before[n] for n in before)


def test_plugin_names_and_option_types_are_checked_at_registration(cli, tmp_path):
    cases = {
        "pathopt": 'from dataclasses import dataclass\nfrom pathlib import Path\nfrom ueobench import Method, Options, '
                   'register_method\n\n@register_method("pathopt")\nclass P(Method):\n    @dataclass\n'
                   '    class Options(Options):\n        where: Path = Path("/tmp")\n',
        "empty": 'from ueobench import Method, register_method\n\n@register_method("")\nclass P(Method):\n    pass\n',
        "long": 'from ueobench import Method, register_method\n\n@register_method("x" * 300)\nclass P(Method):\n'
                '    pass\n',
    }
    for name, src in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / f"{name}.py").write_text(src)
        line = one_line_error(cli("--plugins", str(folder), "list", "methods"))
        assert ("option 'where' has type" in line) if name == "pathopt" else ("is not allowed" in line), line
    assert cli("list", "methods").exit_code == 0


def test_values_no_json_can_hold_are_stored_as_null(cli):
    rec = record_of(cli, *RUN[:2], "gda", *RUN[3:], "--set", "max_iter=0")
    assert rec["method"]["info"]["em_last_change"] is None
    lines = cli("export", "--format", "jsonl").output.splitlines()
    assert lines and all("NaN" not in ln and "Infinity" not in ln for ln in lines)
    for ln in lines:
        json.loads(ln)


def test_parquet_export_takes_options_of_two_types_under_one_name(cli, tmp_path):
    pytest.importorskip("pyarrow")
    from test_leaderboard import fake_run

    fake_run(Path("results"), "a", "opda", "clipart", 0, 1.0)
    fake_run(Path("results"), "b", "opda", "clipart", 0, 1.0)
    for d, value in zip(sorted(Path("results/runs").iterdir()), (0.1, "sharp")):
        doc = json.loads((d / "record.json").read_text())
        doc["config"]["options"] = {"alpha": value}
        (d / "record.json").write_text(json.dumps(doc))
    r = cli("export", "--format", "parquet", "--output", str(tmp_path / "runs.parquet"))
    assert r.exit_code == 0, r.output


def test_a_datasets_key_that_is_not_a_table_is_one_error(cli):
    Path("ueobench.toml").write_text('datasets = "x"\n')
    assert "datasets must be a table" in one_line_error(cli(*RUN))


def test_a_full_feature_cache_falls_back_to_computing_and_leaves_no_temporary_file(cli, tmp_path, monkeypatch):
    import errno

    from ueobench.runs import features

    cache = tmp_path / "full-cache"
    monkeypatch.setenv("UEOBENCH_FEATURE_CACHE", str(cache))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    import types

    numpy_but_full = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    numpy_but_full.savez = full  # only the feature cache's disk is full
    monkeypatch.setattr(features, "np", numpy_but_full)
    with pytest.warns(UserWarning, match="computing the features without it"):
        r = cli(*RUN)
    assert r.exit_code == 0, r.output
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_tda_runs_with_one_known_class(cli, tmp_path):
    doc = json.loads(toy_protocol(tmp_path).read_text())
    doc["name"] = "one"
    doc["folder"] = "one"
    doc["shifts"]["cda"] = {"known": [[0, 0]], "target": [[0, 0]]}
    (tmp_path / "one.json").write_text(json.dumps(doc))
    make_toy_tree(tmp_path / "data" / "one", "Art", per_class=2)
    r = cli("run", "--method", "tda", "--protocol", "cda", "--domain", "Art", "--dataset", str(tmp_path / "one.json"),
            "--backbone", TINY, "--data-root", str(tmp_path / "data"))
    assert r.exit_code == 0, r.output


def test_a_symlinked_claim_is_refused_and_its_target_untouched(cli, tmp_path):
    from ueobench.runs.plan import plan_run
    from ueobench.runs.request import RunRequest

    run_id = plan_run(RunRequest(method="zeroshot", protocol="oda", domain="real", backbone=TINY)).run_id
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    Path("results/claims").mkdir(parents=True)
    (Path("results/claims") / f"{run_id}.lock").symlink_to(target)
    assert "is a symbolic link" in one_line_error(cli(*RUN))
    assert target.read_text() == "keep me"


def test_an_output_that_cannot_be_written_is_one_error(cli):
    from test_leaderboard import fake_run

    fake_run(Path("results"), "ueo", "opda", "clipart", 0, 1.0)
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    assert "cannot write /dev/full" in one_line_error(cli("table", "--output", "/dev/full"))
    assert "cannot write /dev/full" in one_line_error(cli("export", "--output", "/dev/full"))


def test_curves_of_a_one_epoch_run_tell_the_splits_apart(cli, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from ueobench.report import plots

    r = cli(*RUN[:2], "ueo", *RUN[3:], "--epochs", "1", "--set", "eval_every=1")
    assert r.exit_code == 0, r.output
    captured = {}
    original = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, out: captured.setdefault("fig", fig) and original(fig, out))
    assert cli("plot", "curves", "--run", "ueo", "--output", str(tmp_path / "c.png")).exit_code == 0
    ax = captured["fig"].axes[1]
    markers = {line.get_label().split("(")[1]: line.get_marker() for line in ax.get_lines()}
    assert markers["test)"] != markers["target)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1"]
