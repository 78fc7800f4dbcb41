#!/usr/bin/env bash
# Create .venv in the repository root and install hpo into it, with the versions pinned in
# constraints.txt. Usage: bash scripts/setup.sh [--test]
#   --test  also install the test dependencies (pytest, database drivers, Playwright) and
#           Debian's Chromium for the browser tests.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi

# torch comes first and pinned: an unpinned torch would pull a multi-GB CUDA build,
# while torch==2.13.0 resolves to the CPU build that this kind of machine keeps on disk.
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt)
"${pip[@]}" torch
if [ "${1:-}" = "--test" ]; then
    "${pip[@]}" -e ".[test]"
else
    "${pip[@]}" -e .
fi

# The browser tests drive Debian's Chromium through Playwright, because Playwright's own
# browser download needs network access that CI machines may not have.
if [ "${1:-}" = "--test" ] && [ ! -x /usr/bin/chromium ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
