#!/usr/bin/env bash
# Create .venv and install llm2search.
#   scripts/install.sh          what the product needs (./run.sh): torch, faiss, the models, the server
#   scripts/install.sh --test   that plus the test tools and the browser (./test.sh, CI)
# What fits this machine (GPU or not, which torch build, which one faiss) is decided by
# scripts/install_plan.py. Idempotent: a rerun with the same inputs and the same GPU does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${LLM2SEARCH_VENV:-.venv}"
mode=main test_flag=()
if [ "${1:-}" = --test ]; then mode=test test_flag=(--test); fi
host="$("$PYTHON" scripts/install_plan.py --host)"
stamp="$VENV/.llm2search-$mode-$({ cat pyproject.toml scripts/install.sh scripts/install_plan.py \
  llm2search/models/cuda_builds.py; echo "$host"; } | sha256sum | cut -c1-16)"

if [ "$mode" = test ] && [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  # The browser test drives Debian's chromium (Playwright's own browser download is never used).
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "warning: could not install chromium; tests/test_browser.py will not run" >&2
fi
if [ -f "$stamp" ]; then exit 0; fi

eval "$("$PYTHON" scripts/install_plan.py "${test_flag[@]}")"  # TORCH TORCH_FALLBACK FAISS EXTRAS NOTE
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
pip_install() { "$py" -m pip install -q "$@" 2> >(grep -v '^WARNING: Location' >&2); }
pip_install --upgrade pip
if ! pip_install "${TORCH[@]}"; then
  [ ${#TORCH_FALLBACK[@]} -gt 0 ] && pip_install "${TORCH_FALLBACK[@]}"
fi
if [ "$FAISS" = faiss-gpu ] && ! "$py" -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then
  pip_install --force-reinstall "${TORCH[@]}"  # a CPU build left from before: take the CUDA one
fi
# faiss-cpu and faiss-gpu write the same files: remove the other one first, never after.
other=faiss-gpu; [ "$FAISS" = faiss-gpu ] && other=faiss-cpu
if "$py" -m pip show -q "$other" >/dev/null 2>&1; then "$py" -m pip uninstall -y -q "$other"; fi
pip_install -e ".[$EXTRAS]"
if ! "$py" -c "import faiss; faiss.IndexFlatIP" 2>/dev/null; then  # files lost to an earlier swap
  pip_install --force-reinstall --no-deps "$FAISS>=1.15,<1.16"
fi
"$py" -c "import llm2search, torch, faiss, llm2vec, transformers; faiss.IndexFlatIP" \
  || { echo "install failed: see pip output above" >&2; exit 1; }
[ -z "$NOTE" ] || echo "warning: $NOTE" >&2
"$py" -m llm2search.models.cuda_builds || true  # one line when torch cannot use the GPU present
rm -f "$VENV"/.llm2search-"$mode"-* "$VENV"/.llm2search-installed-*
touch "$stamp"
