"""The leaderboard page (``ueobench site``), checked as text and in a real headless browser (Debian's Chromium,
driven by Playwright's Python package with the system browser as its executable; no browser download). The
browser part is skipped, with the reason, where Chromium or Playwright is missing (``.ci/run`` installs them)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from test_leaderboard import fake_run

HOSTILE = '<img src=x onerror="document.title=\'pwned\'">'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def site(cli, tmp_path) -> Path:
    res = tmp_path / "res"
    for method, q in (("zeroshot", 1.0), ("ueo", 2.0), ("ent", 1.5), (HOSTILE, 0.5)):
        for shift in ("opda", "cda"):
            for domain in ("clipart", "sketch"):
                for seed in (0, 1):
                    fake_run(res, method, shift, domain, seed, q)
    for d in sorted((res / "runs").iterdir())[:8]:  # a second backbone: a filter has something to hide
        doc = json.loads((d / "record.json").read_text())
        doc["config"]["backbone"] = "tiny-rn:random"
        (d / "record.json").write_text(json.dumps(doc))
    r = cli("site", "--results", str(res), "--output", str(tmp_path / "site"))
    assert r.exit_code == 0, r.output
    return tmp_path / "site" / "index.html"


def test_the_page_is_self_contained_escaped_and_links_every_cell_to_its_runs(site):
    text = site.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing fetched at view time
    assert HOSTILE not in text and "&lt;img src=x" in text
    links = re.findall(r'href="(runs/[^"]+\.json)"', text)
    assert links and all((site.parent / link).is_file() for link in links)
    assert "<svg" in text and text.count('<section class="board"') == 2  # a table per backbone, and the figure


def test_each_track_gets_its_own_board_named_for_it(cli, tmp_path):
    from conftest import TINY

    res = str(tmp_path / "res")
    base = ("--protocol", "oda", "--domain", "real", "--backbone", TINY, "--results", res)
    assert cli("run", "--method", "zeroshot", *base).exit_code == 0
    r = cli("run", "--method", "lp", "--source", "clipart", "--set", "search_steps=1", *base)
    assert r.exit_code == 0, r.output
    assert cli("site", "--results", res, "--output", str(tmp_path / "site")).exit_code == 0
    heads = re.findall(r"<h2>([^<]*)</h2>", (tmp_path / "site" / "index.html").read_text())
    assert sorted(h.rsplit(" · ", 1)[1] for h in heads) == ["labeled source: clipart", "unlabeled target"]


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium)")
def test_the_page_works_in_a_real_browser(site, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors, dialogs = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(site.as_uri())
        page.wait_for_load_state("load")
        assert errors == [] and dialogs == [] and page.title() != "pwned"
        # a hostile method name renders as its text
        names = page.locator("section.board:visible th.method").all_inner_texts()
        assert HOSTILE in names
        # sorting: a click orders the rows by that column, descending, then ascending
        board = page.locator("section.board").first
        header = board.locator("th.sortable").first

        def column():
            return [float(v) if v else float("-inf") for v in board.locator("tbody tr td:nth-child(2)").evaluate_all(
                "cells => cells.map(c => c.dataset.sort || '')")]

        header.click()
        assert column() == sorted(column(), reverse=True)
        header.click()
        assert column() == sorted(column())
        # filtering: one backbone hides the other's table
        visible = page.locator("section.board:visible").count()
        page.select_option("select[name=backbone]", "tiny-rn:random")
        assert page.locator("section.board:visible").count() == visible - 1
        page.select_option("select[name=backbone]", "*")
        assert page.locator("section.board:visible").count() == visible
        shot = tmp_path / "site.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert errors == []
