#!/usr/bin/env bash
# Install (first time only) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install.sh --test
exec "${LLM2SEARCH_VENV:-.venv}/bin/python" -m pytest -q "$@"
