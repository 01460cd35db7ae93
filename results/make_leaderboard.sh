#!/usr/bin/env bash
# Regenerates the built-in leaderboard, results/shapes65_leaderboard.md, the per-run metrics beside it,
# results/shapes65_runs.csv, and its page results/shapes65_site/index.html: every method at its reference recipe, unchanged (no option set), on every shift and
# domain of shapes65, with the shipped tiny-shapes65:builtin, on the CPU. Resumable: rerun it after an interrupt and
# finished runs are skipped. Run from the repository root:
#
#   bash results/make_leaderboard.sh --workers 2
#
# Options: --workers N (sweep worker processes, default 2), --results DIR (run store, default results/shapes65),
# --seeds S (seeds of the methods that draw at random, default 0-2), --tables-only (render the files from the runs
# stored so far, run nothing), --restore (first put into the store every committed record it lacks: the page's
# runs/ and results/shapes65_pending/; a machine reset loses the store, git keeps the records, so a regeneration
# resumes instead of starting over), --save-pending (copy into results/shapes65_pending/ every stored record the
# committed page lacks, to commit before the machine goes, and stop). CLIPN is left out: no CLIPN weights exist
# for the built-in model.
set -euo pipefail
W=2; R=results/shapes65; S=0-2; RUN=1; RESTORE=0; SAVE=0
PENDING=results/shapes65_pending
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) W=$2; shift 2 ;;
    --results) R=$2; shift 2 ;;
    --seeds) S=$2; shift 2 ;;
    --tables-only) RUN=0; shift ;;
    --restore) RESTORE=1; shift ;;
    --save-pending) SAVE=1; shift ;;
    *) echo "Error: unknown option $1; use --workers N, --results DIR, --seeds S, --tables-only, --restore or --save-pending" >&2; exit 2 ;;
  esac
done
common=(--dataset shapes65 --protocol cda,pda,oda,opda,csda,ood-shapes --domain all --results "$R" --workers "$W")
METHODS=zeroshot,gda,tda,transclip,stata,dpe,zero,adand,tent,unient,cliptta,ent,im,ueo,tpt,pouf,upl
# copies records between the store and git: restore (git -> store, only ids the store lacks) or save (store ->
# results/shapes65_pending, only ids the committed page lacks); each copy is made under a hidden name and renamed
# into place, so an interrupted copy leaves no half folder
copy_records() {
  python3 - "$1" "$R" "$PENDING" <<'PY'
import json, os, shutil, sys, tempfile
from pathlib import Path
mode, store, pending = sys.argv[1], Path(sys.argv[2]) / "runs", Path(sys.argv[3]) / "runs"
site = Path("results/shapes65_site/runs")
def place(src, dest_root, rid):
    dest_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{rid}.tmp-", dir=dest_root))
    shutil.copyfile(src, tmp / "record.json")
    os.rename(tmp, dest_root / rid)
n = 0
if mode == "restore":
    for f in sorted(site.glob("*.json")) + sorted(pending.glob("*/record.json")):
        rid = json.loads(f.read_text())["run_id"]
        if not (store / rid).exists():
            place(f, store, rid); n += 1
    print(f"restored {n} committed records into {store} (records only: their saved predictions are not in git)")
else:
    for f in sorted(store.glob("*/record.json")):
        rid = json.loads(f.read_text())["run_id"]
        if not (site / f"{rid}.json").exists() and not (pending / rid).exists():
            place(f, pending, rid); n += 1
    print(f"copied {n} records the committed page lacks into {pending}; commit them")
PY
}
if [ "$SAVE" = 1 ]; then copy_records save; exit 0; fi
if [ "$RESTORE" = 1 ]; then copy_records restore; fi
if [ "$RUN" = 1 ]; then
  # zero-shot and GDA draw nothing at random: one seed is every seed
  ueobench sweep --method zeroshot,gda --seed 0 "${common[@]}"
  # every seed of UEO, IM and entropy minimisation first (the paper claims the README checks, with their seed
  # noise), then the cheap methods, then the ones that cost minutes a run (64 views per image, POUF, UPL): an
  # interrupted regeneration leaves whole rows rather than one seed of everything
  ueobench sweep --method ueo,im,ent --seed "$S" "${common[@]}"
  ueobench sweep --method tda,transclip,stata,adand,tent,unient,cliptta --seed "$S" "${common[@]}"
  ueobench sweep --method dpe,zero,tpt,pouf,upl --seed 0 "${common[@]}"
  ueobench sweep --method dpe,zero,tpt,pouf,upl --seed "$S" "${common[@]}"
fi
# the kmeans2 section of the file being replaced, with its note (used only when stored runs lack predictions)
KEPT_KMEANS2=""
if [ -f results/shapes65_leaderboard.md ]; then
  KEPT_KMEANS2=$(awk '/^## hscore with the data-adaptive kmeans2/{on=1; next} on && /^## /{exit} on' results/shapes65_leaderboard.md \
    | sed '/./,$!d')
  case "$KEPT_KMEANS2" in
    "Kept from the render of commit"*) ;;
    ?*) KEPT_KMEANS2="Kept from the render of commit $(git log -1 --format=%h -- results/shapes65_leaderboard.md 2>/dev/null || echo unknown), whose store held every run's saved predictions. This render's store was restored from committed records, which carry none, so the rule cannot be recomputed here, and the runs added since that render are not in this table.

$KEPT_KMEANS2" ;;
  esac
fi
ueobench export --results "$R" --format csv --output results/shapes65_runs.csv
tab() { ueobench table --results "$R" --dataset shapes65 --method "$METHODS" "$@"; }
{
  echo "# The built-in leaderboard: shapes65, tiny-shapes65:builtin, reference recipes"
  echo
  echo "Every method at its own reference recipe, unchanged (no option set): 50 epochs of ent, im and UEO, one pass"
  echo "of TENT, 10 x 500 iterations of POUF, 16 prompts x 50 epochs of UPL, 64 views of TPT, GDA and TDA as"
  echo "published. Test split (all 65 classes), mean ± std over the seeds each cell holds (the seed count is in"
  echo "the per-run file results/shapes65_runs.csv; zero-shot and GDA are deterministic and run once). Regenerate"
  echo "with \`bash results/make_leaderboard.sh --workers 2\`."
  echo
  echo "Runs per method (shifts x domains x seeds) in this file:"
  echo
  python3 - results/shapes65_runs.csv <<'PY'
import csv, sys
from collections import defaultdict
runs, seeds = defaultdict(int), defaultdict(set)
for r in csv.DictReader(open(sys.argv[1])):
    if r["dataset"] == "shapes65":
        runs[r["method"]] += 1
        seeds[r["method"]].add(int(r["seed"]))
print("| method | runs | seeds |")
print("|:---|---:|:---|")
for m in sorted(runs):
    print(f"| {m} | {runs[m]} of {24 * (1 if m in ('zeroshot', 'gda') else 3)} | {', '.join(map(str, sorted(seeds[m])))} |")
PY
  echo
  echo "## acc, methods x shifts (averaged over the 4 domains)"
  echo
  tab --metric acc --cols protocol --protocol 'cda,pda,oda,opda,csda'
  for metric in auroc hscore; do
    echo
    echo "## ${metric}, methods x shifts (averaged over the 4 domains; csda has no unknown class)"
    echo
    tab --metric "$metric" --cols protocol --protocol 'cda,pda,oda,opda'
  done
  echo
  echo "## hscore with the data-adaptive kmeans2 rejection rule (recomputed from the saved predictions)"
  echo
  lacking=$(find "$R/runs" -mindepth 1 -maxdepth 1 -type d ! -name '.*' ! -exec test -e '{}/predictions.npz' ';' -print | wc -l)
  if [ "$lacking" -gt 0 ] && [ -n "$KEPT_KMEANS2" ]; then
    # records restored from git have no predictions: keep the section of the last render that had them all
    # rather than print a table of the few runs that do
    echo "$KEPT_KMEANS2"
  else
    tab --metric hscore --cols protocol --protocol 'cda,pda,oda,opda' --rule kmeans2
  fi
  for proto in cda pda oda opda; do
    echo
    echo "## ${proto}: acc / auroc / hscore per domain"
    echo
    tab --metric acc,auroc,hscore --protocol "$proto"
  done
  echo
  echo "## csda: acc per domain"
  echo
  tab --metric acc --protocol csda
  echo
  echo "## ood-shapes (cross-dataset: the shapes world's octagons, trapezoids and lightnings as unknowns): acc / auroc / hscore per domain"
  echo
  tab --metric acc,auroc,hscore --protocol ood-shapes
} > results/shapes65_leaderboard.md
rm -rf results/shapes65_site
ueobench site --results "$R" --output results/shapes65_site \
  --title "ueobench: the built-in leaderboard, shapes65 (unlabeled target)"
# a pending record the page now holds is no longer pending
for d in "$PENDING"/runs/*/; do
  [ -d "$d" ] && [ -f "results/shapes65_site/runs/$(basename "$d").json" ] && rm -rf "$d"
done
rmdir "$PENDING/runs" "$PENDING" 2>/dev/null || true
echo "wrote results/shapes65_leaderboard.md, results/shapes65_runs.csv and results/shapes65_site/"
