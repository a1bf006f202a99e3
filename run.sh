#!/usr/bin/env bash
# Install (first time only) and run llm2search: ./run.sh demo | ./run.sh index ~/Photos | ./run.sh query "..."
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/scripts/install.sh"
exec "$here/${LLM2SEARCH_VENV:-.venv}/bin/llm2search" "$@"
