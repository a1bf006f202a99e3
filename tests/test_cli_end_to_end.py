"""index -> query -> info through the real CLI, in English and Chinese."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from llm2search.cli import app

runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_index_then_query_english_and_chinese(tiny_model: Path, photos: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    result = invoke("index", photos, "--index", index, "--model", tiny_model, "--json", "--workers", "1")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["new"] == 20 and report["embedded"] == 20 and report["failed"] == 0

    for text in ("a dog running on a beach", "一群人在徒步"):
        result = invoke("query", text, "--index", index, "-k", "5", "--json")
        assert result.exit_code == 0, result.output
        hits = json.loads(result.stdout)
        assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
        assert all(Path(h["path"]).is_file() and Path(h["path"]).is_relative_to(photos) for h in hits)
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert all(-1.0001 <= s <= 1.0001 for s in scores)

    result = invoke("query", "一群人在徒步", "--index", index, "-k", "3")
    assert result.exit_code == 0
    assert len(result.stdout.strip().splitlines()) == 3


def test_info_reports_counts_shards_type_model_size(tiny_model: Path, photos: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    (photos / "broken.jpg").write_bytes(b"this is text, not a JPEG")
    assert invoke("index", photos, "--index", index, "--model", tiny_model, "-q").exit_code == 0
    result = invoke("info", "--index", index, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["count"] == 20
    assert info["shards"] == 1
    assert info["index_type"] == "flat"
    assert info["model"]["name"] == "tiny-random"
    assert info["errors"] == 1
    assert info["size_bytes"] > 0
    human = invoke("info", "--index", index)
    assert "tiny-random" in human.stdout and "size on disk" in human.stdout
    errors = json.loads(invoke("info", "--index", index, "--errors", "--json").stdout)
    assert errors[0]["path"].endswith("broken.jpg") and "not a readable image" in errors[0]["reason"]


def test_rerun_skips_unchanged_and_picks_up_changes(tiny_model: Path, photos: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    args = ("--index", index, "--model", tiny_model, "--json", "--workers", "0")
    first = json.loads(invoke("index", photos, *args).stdout)
    assert first["embedded"] == 20
    second = json.loads(invoke("index", photos, *args).stdout)
    assert second["unchanged"] == 20 and second["embedded"] == 0 and second["new"] == 0

    from tests.conftest import make_photos

    make_photos(photos / "more", 2, seed=99)
    victim = sorted(photos.glob("*.jpg"))[0]
    victim.unlink()
    third = json.loads(invoke("index", photos, *args).stdout)
    assert third["new"] == 2 and third["deleted"] == 1 and third["unchanged"] == 19
    info = json.loads(invoke("info", "--index", index, "--json").stdout)
    assert info["count"] == 21
    hits = json.loads(invoke("query", "photo", "--index", index, "-k", "50", "--json").stdout)
    paths = [h["path"] for h in hits]
    assert str(victim) not in paths and len(paths) == len(set(paths)) == 21


def test_user_errors_are_one_line_and_exit_nonzero(tiny_model: Path, photos: Path, tmp_path: Path) -> None:
    missing = invoke("query", "a dog", "--index", tmp_path / "nowhere")
    assert missing.exit_code == 1
    assert missing.stderr.strip().startswith("error: no index at") and "\n" not in missing.stderr.strip()

    bad_path = invoke("index", tmp_path / "no-such-folder", "--index", tmp_path / "i", "--model", tiny_model)
    assert bad_path.exit_code == 1 and "does not exist" in bad_path.stderr

    index = tmp_path / "index"
    assert invoke("index", photos, "--index", index, "--model", tiny_model, "-q").exit_code == 0
    for empty in ("", "   "):
        result = invoke("query", empty, "--index", index)
        assert result.exit_code == 1 and "query text is empty" in result.stderr
    bad_k = invoke("query", "dog", "--index", index, "-k", "0")
    assert bad_k.exit_code == 1 and "k must be between" in bad_k.stderr

    unknown = invoke("index", photos, "--index", tmp_path / "j", "--model", "no-such-model")
    assert unknown.exit_code == 1 and "unknown model" in unknown.stderr


def test_help_does_not_import_torch_or_transformers() -> None:
    code = (
        "import sys\n"
        "from llm2search.cli import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'faiss', 'llm2vec') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "COLUMNS": "120"})
    assert "index" in out.stdout and "query" in out.stdout
    assert "HEAVY []" in out.stdout


def test_make_tiny_model_command_output_is_loadable(tmp_path: Path, photos: Path) -> None:
    model_dir = tmp_path / "m"
    result = invoke("dev", "make-tiny-model", model_dir, "--seed", "3")
    assert result.exit_code == 0, result.output
    for f in ("llm2search_model.json", "vision/config.json", "vision/modeling_clip.py",
              "vision/model.safetensors", "text/tokenizer.json", "text/model.safetensors"):
        assert (model_dir / f).is_file(), f
    vision_config = json.loads((model_dir / "vision/config.json").read_text())
    assert vision_config["auto_map"]["AutoModel"] == "modeling_clip.LLM2CLIPModel"
    index = tmp_path / "index"
    assert invoke("index", photos, "--index", index, "--model", model_dir, "-q").exit_code == 0
    assert invoke("query", "a cat", "--index", index, "--json").exit_code == 0


def test_index_options_for_shards_and_commits(tiny_model: Path, photos: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    result = invoke("index", photos, "--index", index, "--model", tiny_model, "--json", "--workers", "0",
                    "--shard-size", "8", "--commit-seconds", "0", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    info = json.loads(invoke("info", "--index", index, "--json").stdout)
    assert info["count"] == 20 and info["shards"] >= 3 and info["index_type"] == "flat"
    retrain = invoke("index", photos, "--index", index, "--retrain", "--json")
    assert retrain.exit_code == 0 and json.loads(retrain.stdout)["embedded"] == 0
