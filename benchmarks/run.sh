#!/usr/bin/env bash
# modelhaul benchmarks: one command, modelhaul vs. peers, ratios from the same run.
#   benchmarks/run.sh [--quick] [--reps N] [--only A,B,C,D,E,F,G,H] [--tools REGEX] [--tool-cmd CMD] ...
# Installs what is missing (nginx, aria2, curl, openssl via apt; hf_transfer, requests and
# huggingface_hub into a separate venv under benchmarks/_work/), then runs benchmarks/bench.py
# with that venv's python.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
WORK="$HERE/_work"
VENV="$WORK/venv"
mkdir -p "$WORK"

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v aria2c >/dev/null 2>&1 || missing+=(aria2)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "run.sh: missing ${missing[*]}; install them (apt-get install -y ${missing[*]}) or run as root" >&2
        exit 1
    fi
    echo "run.sh: installing ${missing[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! "$VENV/bin/python" -c 'import hf_transfer, requests, huggingface_hub' >/dev/null 2>&1; then
    # Build the bench venv from the project's interpreter (Python 3.11), never touching .venv.
    base_py="python3"
    [ -x "$REPO/.venv/bin/python" ] && base_py="$REPO/.venv/bin/python"
    echo "run.sh: creating $VENV with hf_transfer, requests, huggingface_hub"
    [ -x "$VENV/bin/python" ] || "$base_py" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check hf_transfer requests huggingface_hub
fi

exec "$VENV/bin/python" "$HERE/bench.py" "$@"
