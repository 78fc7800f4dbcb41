#!/usr/bin/env bash
# Run the whole main path on one table: optimize, finalize, then predict the same file.
# Usage: scripts/run_study.sh DATA TARGET STUDY [N_TRIALS]
# Extra options for `hpo optimize` can be passed in HPO_OPTIMIZE_ARGS, e.g.
#   HPO_OPTIMIZE_ARGS="--max-epochs 10 --pruner hyperband" scripts/run_study.sh ocean.csv Quality ocean 40
# Writes the study to study_db/STUDY.db, the model to models/STUDY and predictions to
# models/STUDY/predictions.csv. Exits with the first failing command's exit code.
set -euo pipefail

if [ "$#" -lt 3 ]; then
    echo "usage: $0 DATA TARGET STUDY [N_TRIALS]" >&2
    exit 2
fi
data=$1 target=$2 study=$3 n_trials=${4:-40}
hpo=${HPO:-hpo}

# shellcheck disable=SC2086  # HPO_OPTIMIZE_ARGS is a list of options on purpose
"$hpo" optimize --data "$data" --target "$target" --study "$study" --n-trials "$n_trials" ${HPO_OPTIMIZE_ARGS:-}
"$hpo" finalize --study "$study" --out "models/$study"
"$hpo" predict --model "models/$study" --data "$data" --output "models/$study/predictions.csv"
