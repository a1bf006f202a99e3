"""Where llm2search keeps its data when the user does not say."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HOME_ENV = "LLM2SEARCH_HOME"


def data_home() -> Path:
    """`$LLM2SEARCH_HOME`, else the platform's per-user data directory."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "llm2search"


def default_index_dir() -> Path:
    return data_home() / "index"


def decode_log_path() -> Path:
    """Where decoder libraries' own warnings (libtiff, ...) are written during indexing."""
    return data_home() / "logs" / "decode.log"
