"""The CLI under test: typer's CliRunner with stdout and stderr kept apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from llm2search.cli import app

runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()


def invoke(*args: Any):
    return runner.invoke(app, [str(a) for a in args])


def ok_json(*args: Any) -> Any:
    result = invoke(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def indexed_paths(index: Path) -> set[str]:
    from tests.conftest import live_rows

    return {p for p, _ in live_rows(index)}
