#!/usr/bin/env bash
# The main job: set up, ingest PubMed files, and serve the API (which launches vLLM).
#   bash scripts/run.sh [FILE_OR_DIR ...]
# With no arguments it ingests the real PubMed baseline + update samples in ../shared/data.
# The model is PUBMIND_LLM__MODEL (a local directory or hub id, e.g. Qwen/Qwen2.5-7B-Instruct on a GPU
# machine). If it is unset and there is no GPU, a tiny random demo model is built so every path runs
# on a CPU; its answers are noise until curators' corrections re-tune it (a warning says so).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
export PUBMIND_HOME=${PUBMIND_HOME:-$PWD/var}
PM=.venv/bin/pubmind
DATA=../shared/data
if [ $# -gt 0 ]; then
  sources=("$@")
else
  sources=("$DATA/pmparser/history_991ec7d/tests/testthat/data/baseline/pubmed20n1015.xml.gz"
           "$DATA/pmparser/history_991ec7d/tests/testthat/data/testfiles/pubmed20n1016.xml.gz")
fi
$PM ingest file "${sources[@]}"
$PM stats --json

if [ -z "${PUBMIND_LLM__MODEL:-}" ] && ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
  echo "[run] WARNING: PUBMIND_LLM__MODEL is not set and there is no GPU: serving a tiny RANDOM demo model" \
       "($PUBMIND_HOME/models/tiny). Set PUBMIND_LLM__MODEL to a real instruct model for real answers." >&2
  $PM make-tiny-model "$PUBMIND_HOME/models/tiny"
  # its context length comes from its config (pubmind serve derives llm.max_model_len)
  export PUBMIND_LLM__MODEL="$PUBMIND_HOME/models/tiny" PUBMIND_LLM__MAX_LORA_RANK=${PUBMIND_LLM__MAX_LORA_RANK:-16}
fi
if [ "$($PM keys list)" = "[]" ]; then
  echo "[run] creating the first admin API key (shown once; keep it):" >&2
  $PM keys create --role admin --name admin
fi
exec $PM serve
