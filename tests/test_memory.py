"""store/memory.py: a run allocates so that what it frees goes back to the OS."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa

from llm2search.store.memory import lean_memory, release_freed_memory


def _backend(env: dict[str, str], code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code + "; import pyarrow as pa; print(pa.default_memory_pool().backend_name)"],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_importing_llm2search_chooses_arrows_system_pool_unless_the_user_chose() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    assert _backend(env, "import llm2search") == "system"
    assert _backend(env, "import pyarrow, llm2search") == "mimalloc"  # pyarrow loaded first: its own pick
    assert _backend({**env, "ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}, "import llm2search") == "mimalloc"  # the user's


def test_lean_memory_switches_the_pool_for_its_block_only() -> None:
    before = pa.default_memory_pool()
    with lean_memory():
        assert pa.default_memory_pool().backend_name == "system"
        table = pa.table({"x": list(range(1000))})  # made inside, freed outside: its pool frees it
    assert pa.default_memory_pool().backend_name == before.backend_name
    del table
    release_freed_memory()
