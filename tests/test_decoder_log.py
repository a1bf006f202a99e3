"""Decoder libraries' raw messages (libtiff prints straight to file descriptor 2) go to the decode
log with the file's name, not to the terminal, whether files are decoded in workers or in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import make_photos


def _corrupt_tiffs(folder: Path) -> list[Path]:
    """Deflate and LZW TIFFs with damaged data: libtiff reports the damage on stderr."""
    rng = np.random.default_rng(0)
    out = []
    for compression in ("tiff_adobe_deflate", "tiff_lzw"):
        path = folder / f"broken_{compression}.tif"
        Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(path, compression=compression)
        data = bytearray(path.read_bytes())
        for i in range(200, 2000, 7):
            data[i] ^= 0x5A
        path.write_bytes(bytes(data))
        out.append(path)
    return out


def test_libtiff_messages_go_to_the_log_not_the_terminal(tmp_path: Path, capfd) -> None:
    from llm2search.indexer.decode import DecodeOptions, decode_stream
    from llm2search.indexer.scan import FileEntry, scan
    from llm2search.models.spec import PreprocessConfig

    photos = tmp_path / "photos"
    make_photos(photos, 3)
    broken = _corrupt_tiffs(photos)
    entries = [e for e in scan(photos) if isinstance(e, FileEntry)]
    for workers in (0, 1):  # in-process, and in a worker process
        log = tmp_path / f"decode{workers}.log"
        options = DecodeOptions(PreprocessConfig(image_size=32), log_path=str(log))
        results = {d.entry.path: d for d in decode_stream(entries, options, workers)}
        assert all(results[str(p)].error for p in broken) and sum(d.error is None for d in results.values()) == 3
        captured = capfd.readouterr()
        assert "Decod" not in captured.err and "scanline" not in captured.err, captured.err
        text = log.read_text()
        for path in broken:
            assert f"{path}: " in text, text
        assert "ZIPDecode" in text or "Decoding error" in text


def test_the_cli_run_writes_the_decode_log_under_the_data_home(tiny_model: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    make_photos(photos, 2)
    broken = _corrupt_tiffs(photos)
    home = tmp_path / "home"
    done = subprocess.run(
        [sys.executable, "-m", "llm2search.cli", "index", str(photos), "--index", str(tmp_path / "index"),
         "--model", str(tiny_model), "--device", "cpu", "-q"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "LLM2SEARCH_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert "Decod" not in done.stderr and "scanline" not in done.stderr, done.stderr
    assert str(broken[0]) in (home / "logs" / "decode.log").read_text()
