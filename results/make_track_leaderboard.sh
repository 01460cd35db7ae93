#!/usr/bin/env bash
# Regenerates the labeled-source track's built-in leaderboard, results/shapes65_track.md, and the per-run metrics
# beside it, results/shapes65_track_runs.csv, and its page results/shapes65_track_site/index.html: every labeled-source method at its reference recipe (CaRot's, FLYP's
# and FT's ImageNet schedules rescaled as the README says, nothing else set), trained on the labeled images of
# shapes65's `product` and evaluated on product (in distribution: its test split), real, sketch and painting under
# cda and opda, with the shipped tiny-shapes65:builtin, on the CPU. One model per (method, seed) is trained and
# every target and shift reuses it. Resumable: rerun it after an interrupt; finished runs and trained models are
# kept. Run from the repository root:
#
#   bash results/make_track_leaderboard.sh --workers 2
#
# Options: --workers N (sweep worker processes, default 2), --results DIR (run store, default
# results/shapes65_track), --seeds S (default 0-2), --tables-only (render from the runs stored so far).
set -euo pipefail
W=2; R=results/shapes65_track; S=0-2; RUN=1
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) W=$2; shift 2 ;;
    --results) R=$2; shift 2 ;;
    --seeds) S=$2; shift 2 ;;
    --tables-only) RUN=0; shift ;;
    *) echo "Error: unknown option $1; use --workers N, --results DIR, --seeds S or --tables-only" >&2; exit 2 ;;
  esac
done
common=(--dataset shapes65 --source product --domain product,real,sketch,painting --protocol cda,opda
        --results "$R" --workers "$W")
METHODS=zeroshot,lp,coop,croft,ft,wiseft,flyp,carot
if [ "$RUN" = 1 ]; then
  start=$(date +%s)
  # zero-shot reads no source and draws nothing at random: the table's reference row, one seed
  ueobench sweep --method zeroshot --seed 0 "${common[@]}"
  # seed 0 of every method first (cheapest first), then the other seeds
  ueobench sweep --method lp,ft,wiseft,flyp,carot,coop,croft --seed 0 "${common[@]}"
  ueobench sweep --method lp,ft,wiseft,flyp,carot,coop,croft --seed "$S" "${common[@]}"
  echo "sweeps took $(( $(date +%s) - start )) s"
fi
ueobench export --results "$R" --format csv --output results/shapes65_track_runs.csv
tab() { ueobench table --results "$R" --dataset shapes65 --method "$METHODS" "$@"; }
{
  echo "# The labeled-source track on shapes65: trained on labeled \`product\`, judged on every domain"
  echo
  echo "Every method at its reference recipe (README, \"The labeled-source track\"): trained on the labeled"
  echo "adaptation images of \`product\` (its 50 known classes, which cda and opda share, so one model per method and"
  echo "seed serves both), a seeded 10 % per class held out as source_val for every selection; evaluated on each"
  echo "domain's test split (\`product\` is in distribution: its test images, which no model trained on). Mean ± std"
  echo "over seeds 0-2 (zero-shot is deterministic and runs once). tiny-shapes65:builtin, CPU. Regenerate with"
  echo "\`bash results/make_track_leaderboard.sh --workers 2\`."
  echo
  echo "Accuracy and ECE are computed on the known-class test images, which are the same under cda and opda (and"
  echo "so are the numbers: one table each). Detection is opda's: its test split adds 15 unknown classes. It uses"
  echo "one score for every method, CRoFT's energy at each model's own logit scale (\`--score scaled_energy\`,"
  echo "recomputed from the saved predictions): \`auroc\` / \`fpr95\` separate the target test split's known from its"
  echo "unknown images, \`auroc_idval\` / \`fpr95_idval\` separate the unknowns from the correctly classified"
  echo "source_val images, as CRoFT's code does (zero-shot reads no source, so it has none). \`ece10_b512\` is"
  echo "CaRot's ECE (10 bins per batch of 512, averaged)."
  echo
  echo "Training time per model (seconds on this 2-core CPU, mean over the seeds; the evaluations are extra):"
  echo
  python3 - "$R" results/shapes65_track_runs.csv <<'PY'
import csv, json, sys
from collections import defaultdict
from pathlib import Path
used = {r["artifact"] for r in csv.DictReader(open(sys.argv[2])) if r.get("artifact")}  # the current code's models
t = defaultdict(list)
for f in sorted(Path(sys.argv[1], "artifacts").glob("*/artifact.json")):
    if f.parent.name not in used:
        continue
    a = json.loads(f.read_text())
    t[a["plan"]["method"]].append(a["train_s"])
print("| method | models | train s |")
print("|:---|---:|---:|")
for m in sorted(t):
    print(f"| {m} | {len(t[m])} | {sum(t[m]) / len(t[m]):.1f} |")
PY
  for metric in acc ece10_b512 ece; do
    echo
    echo "## ${metric} per target domain (cda; opda's are the same)"
    echo
    tab --metric "$metric" --protocol cda
  done
  for metric in auroc fpr95 auroc_idval fpr95_idval; do
    echo
    echo "## opda: ${metric} per target domain (score scaled_energy)"
    echo
    tab --metric "$metric" --protocol opda --score scaled_energy
  done
} > results/shapes65_track.md
rm -rf results/shapes65_track_site
ueobench site --results "$R" --output results/shapes65_track_site --metric acc,ece10_b512,auroc \
  --title "ueobench: the labeled-source track on shapes65 (trained on labeled product)"
echo "wrote results/shapes65_track.md, results/shapes65_track_runs.csv and results/shapes65_track_site/"
