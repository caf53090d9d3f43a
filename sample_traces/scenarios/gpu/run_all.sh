#!/usr/bin/env bash
# One command for a GPU lease (see sample_traces/README.md): record every fix type both ways into $OUT.
#   bash sample_traces/scenarios/gpu/run_all.sh            # on the GPU machine, $OUT set by the device tool
#   bash sample_traces/scenarios/gpu/run_all.sh --cpu      # here, end to end on CPU (OUT defaults to runs-gpu)
set -euo pipefail
cd "$(dirname "$0")/../../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" sample_traces/scenarios/gpu/run_all.py --out "${OUT:-runs-gpu}" "$@"
