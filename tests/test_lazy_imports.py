"""Nothing is loaded that is not needed (DESIGN §5, §7): `--help` and `info` import neither torch
nor pandas (info not even pyarrow or numpy: it reads the manifest), and an `index` rerun that
embeds nothing (no change, or only a rename) imports neither torch nor the model. Each command
runs in a fresh interpreter that reports sys.modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from llm2search.indexer.pipeline import IndexingConfig, index_folder
from tests.conftest import make_photos

HEAVY = ("torch", "transformers", "llm2vec", "pandas", "faiss", "llm2search.models.embedder",
         "llm2search.models.image_encoder")
ARRAYS = ("pyarrow", "numpy")
RUN = r"""
import json, sys
from llm2search.cli.app import app
try:
    app(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("MODULES " + json.dumps([m for m in HEAVY if m in sys.modules]))
"""


def loaded(*args: str) -> tuple[list[str], str]:
    code = f"HEAVY = {HEAVY + ARRAYS!r}\n{RUN}"
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "120"}, timeout=300)
    line = next(x for x in out.stdout.splitlines() if x.startswith("MODULES "))
    return json.loads(line[len("MODULES "):]), out.stdout + out.stderr


def test_help_info_and_reruns_that_embed_nothing_stay_light(tiny_model: Path, tmp_path: Path) -> None:
    folder, index = tmp_path / "photos", tmp_path / "index"
    files = make_photos(folder, 6)
    index_folder(folder, index, IndexingConfig(model=str(tiny_model), workers=0, progress=False))

    modules, out = loaded("--help")
    assert modules == [] and "index" in out
    (folder / "broken.jpg").write_bytes(b"not a photo")  # an error list, counted by info
    index_folder(folder, index, IndexingConfig(model=str(tiny_model), workers=0, progress=False))
    modules, out = loaded("info", "--index", index)
    assert modules == [] and "6 live" in out and "1 files" in out

    modules, out = loaded("index", folder, "--index", index, "--json")
    assert json.loads(out[out.index("{"):out.rindex("}") + 1])["unchanged"] == 6
    assert not set(HEAVY) & set(modules), modules

    files[0].rename(folder / "renamed.jpg")  # same bytes: the stored vector is reused
    modules, out = loaded("index", folder, "--index", index, "--json")
    report = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert (report["reused"], report["deleted"], report["embedded"]) == (1, 1, 0)
    assert not {"torch", "transformers", "llm2search.models.embedder"} & set(modules), modules


def test_info_counts_errors_of_a_manifest_written_before_the_count(tiny_model: Path, tmp_path: Path) -> None:
    from llm2search.search.info import index_info

    folder, index = tmp_path / "photos", tmp_path / "index"
    make_photos(folder, 2)
    (folder / "broken.jpg").write_bytes(b"not a photo")
    index_folder(folder, index, IndexingConfig(model=str(tiny_model), workers=0, progress=False))
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest.pop("errors_count") == 1
    (index / "manifest.json").write_text(json.dumps(manifest))
    assert index_info(index)["errors"] == 1
