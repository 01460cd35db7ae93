"""Leaderboards: golden files for every format, escaping, seeds, oracle handling, references, recomputation."""
from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from ueobench import __version__
from ueobench.report.requests import TableRequest
from ueobench.report.tables import Cell, build_table as _single
from ueobench.report.reference import read_reference
from ueobench.report.render import render
from ueobench.scoring.metrics import evaluate
from ueobench.store.records import write_run

GOLDEN = Path(__file__).parent / "golden"


def table_of(results, metrics=None, **kw):
    """The single table of a selection of records (``TableRequest`` fields as keywords)."""
    return _single(TableRequest(results, metrics or ["acc"], **kw))


def fake_run(results: Path, method: str, shift: str, domain: str, seed: int, quality: float, oracle: bool = False):
    """A record whose metrics are computed from synthetic predictions, as a real run's are."""
    rng = np.random.default_rng([seed, len(method), len(domain), len(shift)])
    k, n = 4, 120
    labels = rng.integers(0, 6 if shift == "opda" else 4, n)
    cos = rng.normal(0.2, 0.02, (n, k))
    known = labels < k
    cos[known, labels[known]] += quality * 0.012  # better methods separate classes more
    cos[~known] -= quality * 0.01
    metrics = {s: evaluate(cos, labels, k, logit_scale=100.0) for s in ("test", "target")}
    identity = {"method": method, "options": {}, "dataset": "shapes", "shift": shift, "domain": domain,
                "backbone": "tiny-vit:random", "seed": seed}
    code = {"fingerprint": "sha256:synthetic", "ueobench": __version__, "files": {}}  # no file: counts as current
    record = {"schema": 2, "run_id": f"{method}{'-oracle' if oracle else ''}-{shift}-{domain}-{seed}", "config": identity, "metrics": metrics,
              "method": {"name": method, "label": method, "oracle": oracle, "code": code}, "protocol": {"num_known": k},
              "evaluation": {"score": "mcm", "hscore_rule": "nent:0.5"}, "history": []}
    arrays = {"logit_scale": np.array(100.0)}
    for s in ("test", "target"):
        arrays[f"{s}_logits"], arrays[f"{s}_labels"] = cos.astype(np.float32), labels
    write_run(results, re.sub(r"[^A-Za-z0-9_.-]+", "-", record["run_id"]).lstrip("."), record, arrays)


@pytest.fixture
def results(tmp_path) -> Path:
    res = tmp_path / "res"
    for method, q in (("zeroshot", 1.0), ("ent", 1.5), ("ueo", 2.0), ("<script>alert(1)</script>", 0.5)):
        for shift in ("opda", "cda"):
            for domain in ("clipart", "sketch"):
                for seed in ((0, 1) if method != "ent" else (0,)):
                    fake_run(res, method, shift, domain, seed, q)
    fake_run(res, "ueo", "opda", "clipart", 0, 3.0, oracle=True)
    fake_run(res, "ueo", "opda", "sketch", 0, 3.0, oracle=True)
    return res


def table_text(results, fmt, **kw):
    args = dict(metrics=["acc", "auroc"], filters={"shift": "opda"}, seeds=2)
    args.update(kw)
    return render(table_of(results, **args), fmt)


@pytest.mark.parametrize("fmt, ext", [("md", "md"), ("latex", "tex"), ("csv", "csv"), ("json", "json"), ("html", "html")])
def test_golden_files(results, fmt, ext):
    text = table_text(results, fmt)
    assert text == table_text(results, fmt), "rendering must be deterministic"
    golden = GOLDEN / f"table.{ext}"
    if os.environ.get("UEOBENCH_UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_markdown_content(results):
    md = table_text(results, "md")
    assert "| ueo (oracle) |" in md and "oracle rows (target labels) unranked" in md
    ent = next(line for line in md.splitlines() if line.startswith("| ent |"))
    assert "†" in ent  # ent has one seed, two were asked for
    assert "±" in next(line for line in md.splitlines() if line.startswith("| ueo |"))
    oracle = next(line for line in md.splitlines() if line.startswith("| ueo (oracle) |"))
    assert "**" not in oracle and "<u>" not in oracle  # never ranked with label-free runs
    ranked = render(table_of(results, ["acc"], filters={"shift": "opda"}, rank_oracle=True), "md")
    assert "**" in next(line for line in ranked.splitlines() if line.startswith("| ueo (oracle) |"))


def test_best_is_bold_and_second_underlined(results):
    t = table_of(results, ["acc"], filters={"shift": "opda", "method": "zeroshot,ent,ueo"})
    means = {r: t.cells[(r, "clipart", "acc")].mean for r in t.rows if r not in t.oracle_rows}
    order = sorted(means, key=means.get, reverse=True)
    assert t.cells[(order[0], "clipart", "acc")].rank == 1
    assert t.cells[(order[1], "clipart", "acc")].rank == 2
    assert t.cells[(order[2], "clipart", "acc")].rank is None
    avg = t.cells[("ueo", "avg", "acc")]
    assert avg.mean == pytest.approx((t.cells[("ueo", "clipart", "acc")].mean + t.cells[("ueo", "sketch", "acc")].mean) / 2)


def test_mean_and_std_over_seeds(results):
    t = table_of(results, ["acc"], filters={"shift": "opda", "method": "zeroshot"})
    recs = [json.loads((results / "runs" / f"zeroshot-opda-clipart-{s}" / "record.json").read_text()) for s in (0, 1)]
    vals = [100 * r["metrics"]["test"]["acc"] for r in recs]
    cell = t.cells[("zeroshot", "clipart", "acc")]
    assert cell.n == 2 and cell.mean == pytest.approx(np.mean(vals)) and cell.std == pytest.approx(np.std(vals, ddof=1))


def test_protocols_averaged_over_domains(results):
    t = table_of(results, ["acc"], rows="method", cols="protocol", filters={"method": "ueo"})
    per_domain = table_of(results, ["acc"], filters={"shift": "cda", "method": "ueo"})
    assert t.cells[("ueo", "cda", "acc")].mean == pytest.approx(per_domain.cells[("ueo", "avg", "acc")].mean)
    assert t.meta["averaged_over"] == ["domain"]


def test_undefined_metric_is_a_dash_never_zero(results):
    md = render(table_of(results, ["auroc"], filters={"shift": "cda"}), "md")
    row = next(line for line in md.splitlines() if line.startswith("| ueo |"))
    assert row == "| ueo | – | – | – |"


def test_html_parses_and_escapes_hostile_names(results):
    page = table_text(results, "html")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.cells = [], 0

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.cells += tag == "td"

    p = Collect()
    p.feed(page)
    p.close()
    assert "script" not in p.tags and "table" in p.tags and p.cells == 5 * 3


def test_latex_escapes(results):
    tex = table_text(results, "latex")
    assert r"\textless{}" not in tex  # no raw < > in LaTeX output either
    assert "<script>" in tex  # angle brackets are literal in LaTeX text; the & and _ specials are escaped
    assert r"\toprule" in tex and r"\bottomrule" in tex


def test_glob_filters_and_clear_errors(results):
    t = table_of(results, ["acc"], filters={"shift": "op*", "method": "u*"})
    assert t.rows == ["ueo", "ueo (oracle)"]
    with pytest.raises(Exception, match="no records match method 'nope'"):
        table_of(results, ["acc"], filters={"method": "nope"})
    with pytest.raises(Exception, match="select one with --protocol"):
        table_of(results, ["acc"], rows="domain", cols="method")  # protocols are never averaged silently


def test_recomputed_metrics_equal_stored_when_nothing_changed(results):
    stored = table_of(results, ["acc", "auroc", "hscore"], filters={"shift": "opda"})
    again = table_of(results, ["acc", "auroc", "hscore"], filters={"shift": "opda"}, score="mcm", rule="nent:0.5")
    forced = table_of(results, ["acc", "auroc", "hscore"], filters={"shift": "opda"}, score="energy")
    for key, cell in stored.cells.items():
        assert again.cells[key].mean == pytest.approx(cell.mean) if cell.mean is not None else again.cells[key].mean is None
    assert any(forced.cells[k].mean != c.mean for k, c in stored.cells.items() if k[2] == "auroc" and c.mean)
    assert all(forced.cells[k].mean == pytest.approx(c.mean) for k, c in stored.cells.items() if k[2] == "acc" and c.mean)


def test_cli_table_recompute_and_output(cli, results, tmp_path):
    out = tmp_path / "t.html"
    r = cli("table", "--results", str(results), "--protocol", "opda", "--metric", "auroc", "--score", "energy",
            "--format", "html", "--output", str(out))
    assert r.exit_code == 0, r.output
    assert "recomputed with score energy" in out.read_text()


REFERENCE = """dataset,protocol,domain,backbone,method,metric,value,citation
shapes,opda,clipart,tiny-vit:random,ueo,acc,50.0,"Example: a number typed in by hand, not a published result"
"""


def test_reference_numbers_side_by_side(results, tmp_path):
    ref = tmp_path / "ref.csv"
    ref.write_text(REFERENCE)
    t = table_of(results, ["acc"], filters={"shift": "opda"}, reference=ref)
    cell = t.cells[("ueo", "clipart", "acc")]
    assert cell.reference == 50.0
    md = render(t, "md")
    assert f"(rep. 50.0, Δ {cell.mean - 50:+.1f})" in md and "Reported numbers: Example" in md


@pytest.mark.parametrize("line, message", [
    ("shapes,xda,clipart,b,ueo,acc,50,c", "protocol 'xda'"),
    ("shapes,opda,nowhere,b,ueo,acc,50,c", "no domain 'nowhere'"),
    ("shapes,opda,clipart,b,ueo,accuracy,50,c", "metric 'accuracy'"),
    ("shapes,opda,clipart,b,ueo,acc,150,c", "not a percentage"),
    ("shapes,opda,clipart,b,ueo,acc,x,c", "is not a number"),
    ("shapes,opda,clipart,b,ueo,acc,50,", "needs a citation"),
])
def test_reference_validator(tmp_path, line, message):
    f = tmp_path / "bad.csv"
    f.write_text(REFERENCE.splitlines()[0] + "\n" + line + "\n")
    with pytest.raises(Exception, match=message) as e:
        read_reference(f)
    assert f"{f}:2" in str(e.value)


def test_shipped_reference_example_is_valid(cli):
    example = Path(__file__).resolve().parents[1] / "reference" / "example.csv"
    r = cli("reference", "check", str(example))
    assert r.exit_code == 0 and "all valid" in r.output


@pytest.mark.parametrize("kind, extra", [("scatter", []), ("bars", ["--metric", "auroc", "--protocol", "opda"])])
def test_plots_are_non_empty_images(cli, results, tmp_path, kind, extra):
    from PIL import Image

    for ext in ("png", "svg"):
        out = tmp_path / f"{kind}.{ext}"
        r = cli("plot", kind, "--results", str(results), "--output", str(out), *extra)
        assert r.exit_code == 0, r.output
        assert out.stat().st_size > 1000
        if ext == "png":
            im = Image.open(out).convert("L")
            assert np.asarray(im).std() > 5  # not a blank canvas
        else:
            assert out.read_text().lstrip().startswith("<?xml") and "<path" in out.read_text()


def test_training_curves_plot(cli, tmp_path):
    from conftest import TINY

    r = cli("run", "--method", "ueo", "--protocol", "oda", "--domain", "real", "--backbone", TINY,
            "--epochs", "2", "--set", "eval_every=1")
    assert r.exit_code == 0, r.output
    out = tmp_path / "curves.png"
    r = cli("plot", "curves", "--run", "ueo_shapes_oda_real", "--output", str(out))
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 5000


# ------------------------------------------------------------------------------------ tables that just work


def mixed_results(tmp_path) -> Path:
    """Two shifts with different domains, two backbones, two datasets' worth of records."""
    res = tmp_path / "mixed"
    for method, q in (("zeroshot", 1.0), ("ueo", 2.0)):
        for domain in ("clipart", "sketch"):
            fake_run(res, method, "opda", domain, 0, q)
        fake_run(res, method, "cda", "clipart", 0, q)  # cda has one domain only
    for name in ("zeroshot-opda-clipart-0",):  # the same run on another backbone
        rec = json.loads((res / "runs" / name / "record.json").read_text())
        rec["config"]["backbone"] = "ViT-B-16:openai"
        rec["run_id"] = name + "-vit"
        (res / "runs" / rec["run_id"]).mkdir()
        (res / "runs" / rec["run_id"] / "record.json").write_text(json.dumps(rec))
    return res


def test_bare_table_renders_a_mixed_folder_as_groups(cli, tmp_path):
    res = mixed_results(tmp_path)
    r = cli("table", "--results", str(res))
    assert r.exit_code == 0, r.output
    assert r.output.count("| method |") == 3  # (cda, tiny) (opda, tiny) (opda, ViT-B-16)
    assert "protocol cda" in r.output and "backbone ViT-B-16:openai" in r.output
    cols = cli("table", "--results", str(res), "--cols", "protocol", "--backbone", "tiny*")
    ueo = next(line for line in cols.output.splitlines() if line.startswith("| ueo"))
    assert "–" not in ueo  # cda's single domain does not void it: completeness is judged per column
    for fmt in ("markdown", "md", "latex", "csv", "json", "html"):
        assert cli("table", "--results", str(res), "--format", fmt).exit_code == 0
    doc = json.loads(cli("table", "--results", str(res), "--format", "json").output)
    assert len(doc["tables"]) == 3
    for kind in ("scatter", "bars"):  # figures of a mixed folder: a panel per group, never "no open-set runs"
        assert cli("plot", kind, "--results", str(res), "--output", str(tmp_path / f"{kind}.png")).exit_code == 0


def test_errors_name_only_options_that_exist(cli, tmp_path):
    from ueobench.cli.report import table as table_cmd

    res = mixed_results(tmp_path)
    options = {o for p in table_cmd.params for o in p.opts}
    messages = []
    for args in (["--rows", "protocol", "--cols", "protocol"], ["--method", "nope"], ["--metric", "acx"],
                 ["--rows", "protocl"]):
        r = cli("table", "--results", str(res), *args)
        assert r.exit_code != 0
        messages.append(r.output)
    with pytest.raises(Exception) as e:
        table_of(res, ["acc"])
    messages.append(str(e.value))
    for text in messages:
        for opt in re.findall(r"--[a-z][a-z-]*", text):
            assert opt in options, (opt, text)


def test_ranking_follows_the_method_axis_and_displayed_values(tmp_path):
    res = mixed_results(tmp_path)
    t = table_of(res, ["acc"], rows="domain", cols="method", filters={"shift": "opda", "backbone": "tiny*"})
    assert "avg" not in t.cols  # an average over methods means nothing
    assert all(t.cells[(d, m, "acc")].rank in (1, 2, None) for d in t.rows for m in t.cols)
    ranks = {m: t.cells[("clipart", m, "acc")].rank for m in t.cols}
    assert sorted(r for r in ranks.values() if r) == [1, 2]  # methods compete within a domain
    cells = [Cell(76.64, None, 1), Cell(76.56, None, 1), Cell(70.0, None, 1)]
    from ueobench.report.tables import _rank

    grid = {(f"m{i}", "c", "acc"): c for i, c in enumerate(cells)}
    _rank(grid, ["m0", "m1", "m2"], ["c"], ["acc"], set(), along="rows")
    assert grid[("m0", "c", "acc")].rank == grid[("m1", "c", "acc")].rank == 1  # both show 76.6: a tie
    assert grid[("m2", "c", "acc")].rank == 2


def test_standard_error_over_seeds(results):
    std = table_of(results, ["acc"], filters={"shift": "opda", "method": "zeroshot"})
    se = table_of(results, ["acc"], filters={"shift": "opda", "method": "zeroshot"}, error="se")
    a, b = std.cells[("zeroshot", "clipart", "acc")], se.cells[("zeroshot", "clipart", "acc")]
    assert b.std == pytest.approx(a.std / np.sqrt(2))
    assert "standard error" in render(se, "md") and "± std" in render(std, "md")


def test_new_metrics_against_sklearn_and_hand_values():
    from sklearn.metrics import average_precision_score

    from ueobench.scoring.metrics import METRICS, expected_calibration_error

    rng = np.random.default_rng(0)
    cos = rng.normal(0.2, 0.05, (200, 5))
    labels = rng.integers(0, 7, 200)
    m = evaluate(cos, labels, 5, logit_scale=100.0)
    known = labels < 5
    from ueobench.scoring.scores import compute_score

    s = compute_score("mcm", cos, 100.0)
    assert m["aupr_in"] == pytest.approx(average_precision_score(known, s))
    assert m["aupr_out"] == pytest.approx(average_precision_score(~known, -s))
    assert {"os_star", "unknown_recall", "aupr_in", "aupr_out", "ece"} <= set(METRICS)
    # ECE by hand: two bins used; |acc - conf| weighted by bin size
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([1, 0, 1, 1], dtype=bool)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.5 * abs(0.5 - 0.95) + 0.5 * abs(1 - 0.55))


def test_every_format_escapes_every_name(tmp_path):
    res = tmp_path / "hostile"
    evil = "a|b\n\\input{x}<script>=HYPERLINK(1)"
    fake_run(res, evil, "opda", "clipart", 0, 1.0)
    fake_run(res, "=cmd|calc", "opda", "clipart", 0, 2.0)
    t = table_of(res, ["acc"], filters={"shift": "opda"}, reference=None)
    md = render(t, "md")
    assert all(line.count(" | ") <= 2 for line in md.splitlines() if line.startswith("|"))  # columns intact
    assert "<script>" not in md and "\n\\input" not in md
    tex = render(t, "latex")
    assert all(not line.startswith("\\input") for line in tex.splitlines())
    assert "\\textbackslash{}input" in tex
    csv_text = render(t, "csv")
    assert "\n=cmd" not in csv_text and "'=cmd|calc" in csv_text


def _figure_of(monkeypatch, fn, *args, **kw):
    from ueobench.report import plots

    figs = []
    original = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, out: (figs.append(fig), original(fig, out))[1])
    fn(*args, **kw)
    return figs[0]


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("kind", ["scatter", "bars"])
def test_figures_have_no_overlapping_text_and_stable_colours(monkeypatch, results, tmp_path, kind):
    from ueobench.report import plots

    args = (tmp_path / f"{kind}.pdf",)
    fig = (_figure_of(monkeypatch, plots.scatter, *args, results=str(results)) if kind == "scatter" else
           _figure_of(monkeypatch, plots.bars, *args, metric="acc", results=str(results)))
    assert (tmp_path / f"{kind}.pdf").read_bytes().startswith(b"%PDF")
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    legend = fig.legends[0].get_window_extent(renderer)
    titles = [ax.title.get_window_extent(renderer) for ax in axes]
    for ax in axes:
        assert not _overlap(legend, ax.get_window_extent(renderer))  # the legend covers no data
        ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        assert not any(_overlap(a, b) for i, a in enumerate(ticks) for b in ticks[i + 1:])
        lo, hi = ax.get_ylim()
        assert (lo == 0) if kind == "bars" else (lo > 0)  # bars from zero (lengths compare); scatter zoomed
    assert not any(_overlap(a, b) for i, a in enumerate(titles) for b in titles[i + 1:])
    assert fig.get_size_inches()[0] <= 7.2  # fits a two-column paper's full width
    styles = plots.method_styles(results)
    for text, handle in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles):
        colour = handle.get_facecolor() if kind == "bars" else handle.get_color()
        assert np.allclose(np.asarray(colour).ravel()[:3], np.asarray(styles[text.get_text()][0]).ravel()[:3])
