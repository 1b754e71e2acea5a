#!/usr/bin/env bash
# Create a virtual environment (default .venv) with ttrl-engine and its test tools installed.
# torch is pinned to 2.13.0: where a CPU build of it is on disk (these machines) pip takes it; elsewhere
# install the CPU build first (pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)
# or let pip take the CUDA build on a GPU machine.
set -euo pipefail
venv="${1:-.venv}"
cd "$(dirname "$0")"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e ".[test]"
echo "installed into $venv: $("$venv/bin/python" -c 'import torch, transformers, trl, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__, "peft", peft.__version__)')"
