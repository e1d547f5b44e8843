#!/usr/bin/env bash
# Set up (idempotent) and run the whole test-suite: lint, types, import layers, unit, integration (tiny real models),
# and the vLLM tests (a real vLLM CPU server on 127.0.0.1). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check .
.venv/bin/mypy                 # the packages listed in pyproject's [tool.mypy]
.venv/bin/lint-imports         # imports point one way (pyproject's [tool.importlinter])
exec .venv/bin/python -m pytest "$@"
