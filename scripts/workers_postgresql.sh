#!/usr/bin/env bash
# Share one hpo study in PostgreSQL between several machines, or several GPUs of one machine.
#
#   export HPO_STORAGE='postgresql://user:password@dbhost:5432/hpo'
#   export STUDY=ocean
#   # once, on any machine: create the study and queue 200 trials (runs no trial itself)
#   bash scripts/workers_postgresql.sh queue --data /data/ocean.csv --target Quality --n-trials 200
#   # on every machine: one worker per visible GPU (or WORKERS=4 on a CPU machine)
#   bash scripts/workers_postgresql.sh work
#
# The workers stop when the 200 trials are done, however many machines joined. Ctrl-C or
# SIGTERM stops this machine's workers; their running trials are marked and queued again,
# so running `work` again (here or elsewhere) finishes the study. The data file must exist
# at the same absolute path on every machine, and the PostgreSQL driver must be installed:
# `.venv/bin/python -m pip install -e '.[postgresql]'`.
#
# Variables: HPO_STORAGE (required), STUDY (required), HPO (default: .venv/bin/hpo),
# GPUS (comma-separated CUDA indices, default: all visible), WORKERS_PER_GPU (default 1),
# WORKERS (CPU workers when no GPU is visible, default 1), THREADS (torch threads per CPU
# worker, default: cores / WORKERS).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${HPO_STORAGE:?set HPO_STORAGE to the PostgreSQL URL}"
: "${STUDY:?set STUDY to the study name}"
hpo="${HPO:-.venv/bin/hpo}"
action="${1:-}"
shift || true

case "$action" in
queue)
    # --workers 0: store the study, its goal and the queued trials; workers join below.
    exec "$hpo" optimize --study "$STUDY" --workers 0 "$@"
    ;;
work)
    ;;
*)
    echo "usage: $0 queue [hpo optimize options] | work" >&2
    exit 2
    ;;
esac

pids=()
stop() {
    trap '' INT TERM
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" || true
    exit 130
}
trap stop INT TERM

if command -v nvidia-smi >/dev/null && [ -z "${WORKERS:-}" ]; then
    gpus="${GPUS:-$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)}"
    IFS=, read -r -a gpu_list <<<"$gpus"
    threads="${THREADS:-$(( $(nproc) / (${#gpu_list[@]} * ${WORKERS_PER_GPU:-1}) ))}"
    for gpu in "${gpu_list[@]}"; do
        for _ in $(seq "${WORKERS_PER_GPU:-1}"); do
            # The worker sees only its GPU, as cuda:0; the trial records the real index.
            CUDA_VISIBLE_DEVICES="$gpu" "$hpo" worker --study "$STUDY" --device cuda --threads "$(( threads > 0 ? threads : 1 ))" &
            pids+=($!)
        done
    done
else
    workers="${WORKERS:-1}"
    threads="${THREADS:-$(( $(nproc) / workers ))}"
    for _ in $(seq "$workers"); do
        CUDA_VISIBLE_DEVICES="" "$hpo" worker --study "$STUDY" --device cpu --threads "$(( threads > 0 ? threads : 1 ))" &
        pids+=($!)
    done
fi
wait "${pids[@]}"
