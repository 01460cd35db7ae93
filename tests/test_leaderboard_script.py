"""``results/make_leaderboard.sh``'s round trip through git: a machine reset loses the local run store, so the
script restores the committed records into a store (``--restore``) and saves the ones the committed page lacks
(``--save-pending``). Checked on a copy of the results folder holding a part of the committed records."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def _script(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", "results/make_leaderboard.sh", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _checkout(tmp_path: Path, prefix: str) -> Path:
    """A results folder whose page holds only the committed records named ``prefix*`` (a few seconds to render)."""
    repo = tmp_path / "repo"
    (repo / "results" / "shapes65_site" / "runs").mkdir(parents=True)
    for name in ("make_leaderboard.sh", "shapes65_leaderboard.md"):
        shutil.copy(RESULTS / name, repo / "results" / name)
    for f in sorted((RESULTS / "shapes65_site" / "runs").glob(f"{prefix}*.json")):
        shutil.copy(f, repo / "results" / "shapes65_site" / "runs" / f.name)
    return repo


def test_records_restore_render_and_survive_a_reset_through_pending(tmp_path):
    repo = _checkout(tmp_path, "zeroshot_")
    store = tmp_path / "store"
    out = _script(repo, "--restore", "--tables-only", "--results", str(store))
    assert out.returncode == 0, out.stderr
    assert "restored 24 committed records" in out.stdout
    restored = sorted(p.name for p in (store / "runs").iterdir())
    assert len(restored) == 24 and all((store / "runs" / r / "record.json").is_file() for r in restored)
    for r in restored:  # byte for byte, and the page rendered from the store holds the same bytes again
        committed = (RESULTS / "shapes65_site" / "runs" / f"{r}.json").read_bytes()
        assert (store / "runs" / r / "record.json").read_bytes() == committed
        assert (repo / "results" / "shapes65_site" / "runs" / f"{r}.json").read_bytes() == committed

    def rows(path: Path) -> dict[str, dict]:  # the export's columns follow the records it holds: compare values
        return {row["run_id"]: {k: v for k, v in row.items() if v} for row in csv.DictReader(open(path))
                if row["run_id"] in restored}

    assert rows(repo / "results" / "shapes65_runs.csv") == rows(RESULTS / "shapes65_runs.csv")
    board = (repo / "results" / "shapes65_leaderboard.md").read_text()
    committed_board = (RESULTS / "shapes65_leaderboard.md").read_text()
    head = "## hscore with the data-adaptive kmeans2 rejection rule"
    section = board.split(head)[1].split("\n## ")[0]
    assert "Kept from the render of commit" in section  # the restored records carry no predictions
    old = committed_board.split(head)[1].split("\n## ")[0]
    table = [line for line in old.splitlines() if line.startswith("|")]
    assert table and all(line in section.splitlines() for line in table)

    # a run the committed page lacks, finished in the store before the machine goes
    donor = sorted((RESULTS / "shapes65_site" / "runs").glob("gda_shapes65_cda_*.json"))[0]
    rid = json.loads(donor.read_text())["run_id"]
    (store / "runs" / rid).mkdir()
    shutil.copy(donor, store / "runs" / rid / "record.json")
    out = _script(repo, "--save-pending", "--results", str(store))
    assert out.returncode == 0 and "copied 1 records" in out.stdout, out.stdout + out.stderr
    pending = repo / "results" / "shapes65_pending" / "runs" / rid / "record.json"
    assert pending.read_bytes() == donor.read_bytes()
    assert "copied 0 records" in _script(repo, "--save-pending", "--results", str(store)).stdout

    fresh = tmp_path / "fresh"  # the reset: a new, empty store, restored from the page and the pending records
    out = _script(repo, "--restore", "--tables-only", "--results", str(fresh))
    assert out.returncode == 0 and "restored 25 committed records" in out.stdout, out.stderr
    assert (fresh / "runs" / rid / "record.json").read_bytes() == donor.read_bytes()
    assert rid in {row["run_id"] for row in csv.DictReader(open(repo / "results" / "shapes65_runs.csv"))}
    assert (repo / "results" / "shapes65_site" / "runs" / f"{rid}.json").read_bytes() == donor.read_bytes()
    assert not (repo / "results" / "shapes65_pending").exists()  # the page holds it: no longer pending
    again = (repo / "results" / "shapes65_leaderboard.md").read_text().split(head)[1].split("\n## ")[0]
    assert again.count("Kept from the render of commit") == 1  # a second render keeps one note, not two


def test_an_unknown_option_is_one_line_naming_the_real_ones(tmp_path):
    out = _script(_checkout(tmp_path, "none"), "--resume")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--restore or --save-pending" in out.stderr
