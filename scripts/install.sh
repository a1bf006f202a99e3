#!/usr/bin/env bash
# Create .venv and install llm2search with everything the tests need. Idempotent: a second run
# with an unchanged pyproject.toml does nothing. CPU machines get the local CPU build of torch
# (an unpinned torch would pull several GB of CUDA wheels); GPU hosts keep pip's default build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${LLM2SEARCH_VENV:-.venv}"
# The browser test drives Debian's chromium (Playwright's own browser download is never used).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "warning: could not install chromium; tests/test_browser.py will not run" >&2
fi
stamp="$VENV/.llm2search-installed-$(sha256sum pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
$pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  $pip install -q "torch>=2.1,<2.15" 2>&1 | grep -v '^WARNING: Location' || true
else
  $pip install -q torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
fi
$pip install -q -e ".[dev,server]" 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -c "import llm2search, torch, faiss, llm2vec, transformers" \
  || { echo "install failed: see pip output above" >&2; exit 1; }
rm -f "$VENV"/.llm2search-installed-*
touch "$stamp"
