"""`llm2search eval`: recall arithmetic, the published dataset layouts, and the command end to end."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from llm2search.cli import app
from llm2search.eval.datasets import join_tokens, load_dataset
from llm2search.eval.retrieval import EvalConfig, evaluate, recall_at
from tests.conftest import make_photos

runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()


def test_recall_counts_a_query_when_any_relevant_item_is_within_k() -> None:
    relevance = np.zeros((4, 6), dtype=bool)
    relevance[0, 2] = True  # found first
    relevance[1, [3, 5]] = True  # second relevant item found at rank 5
    relevance[2, 1] = True  # never found
    # query 3 has nothing relevant: left out
    top = np.array([[2, 0, 1, 3, 4, 5, -1, -1, -1, -1],
                    [0, 1, 2, 4, 5, 3, -1, -1, -1, -1],
                    [0, 2, 3, 4, 5, -1, -1, -1, -1, -1],
                    [0, 1, 2, 3, 4, 5, -1, -1, -1, -1]])
    assert recall_at(top, relevance) == {"R@1": 1 / 3, "R@5": 2 / 3, "R@10": 2 / 3}


def test_flickr30k_cn_tokens_are_joined_without_pos_tags() -> None:
    assert join_tokens("两:m 个:q 年轻:a 男子:n 在:p 踢:v 足球:n 。:wd") == "两个年轻男子在踢足球。"
    assert join_tokens("一个 穿 T:x 恤 的 男孩") == "一个穿T恤的男孩"
    assert join_tokens("NBA:x 2:m K:x 球员") == "NBA 2 K球员"


def _oracle(images: list[Path], tiny_model: Path):
    """A model that knows the answer: each image gets a fixed random direction, and the caption
    `img:<i>` gets image i's direction plus a little noise. Exact search must then be perfect."""
    from llm2search.models.preprocess import decode_image
    from llm2search.models.presets import resolve_model

    spec = resolve_model(str(tiny_model))
    rng = np.random.default_rng(0)
    dim = 32
    directions = rng.standard_normal((len(images), dim)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    by_pixels = {decode_image(p.read_bytes(), spec.preprocess).pixels.tobytes(): i for i, p in enumerate(images)}

    class Oracle:
        def __init__(self) -> None:
            self.spec = spec

        def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
            return directions[[by_pixels[p.tobytes()] for p in pixels]]

        def embed_texts(self, texts: list[str]) -> np.ndarray:
            v = directions[[int(t.split(":")[1]) for t in texts]] + 0.05 * rng.standard_normal((len(texts), dim))
            return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    return Oracle(), spec


def test_exact_is_perfect_for_an_oracle_and_the_index_close(tmp_path: Path, tiny_model: Path) -> None:
    images = make_photos(tmp_path / "set", 120, seed=3)
    lines = [f"{p.relative_to(tmp_path / 'set')}\timg:{i}" for i, p in enumerate(images) for _ in range(2)]
    (tmp_path / "set" / "captions.tsv").write_text("\n".join(lines), encoding="utf-8")
    ds = load_dataset(tmp_path / "set")
    assert len(ds.images) == 120 and len(ds.captions) == 240
    oracle, spec = _oracle(images, tiny_model)
    for index_type in ("ivfpq", "flat"):
        report = evaluate(ds, oracle, spec.identity(), "oracle", EvalConfig(index_type=index_type, progress=False))
        exact_t2i = report.recall["text→image"]["exact"]
        assert exact_t2i == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
        assert report.recall["image→text"]["exact"]["R@1"] == 1.0
        if index_type == "flat":
            assert set(report.index.values()) == {"Flat"}
            assert report.loss("text→image") == 0 and report.loss("image→text") == 0
        else:
            assert all(f.startswith("IVF") and "PQ" in f for f in report.index.values())
            assert report.recall["text→image"]["index"]["R@10"] >= 0.9


def test_published_layouts_load(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "src", 4, seed=1)
    # Flickr30K-CN: flickr30kzhmbosontest/{ImageSets,TextData} + flickr30k-images/<id>.jpg
    split = tmp_path / "flickr30k-cn" / "flickr30kzhmbosontest"
    (split / "ImageSets").mkdir(parents=True)
    (split / "TextData").mkdir()
    (split / "ImageSets" / "flickr30kzhmbosontest.txt").write_text("1001\n1002\n1003\n")
    (split / "TextData" / "seg.flickr30kzhmbosontest.caption.txt").write_text(
        "1001#zhm#0 一:m 只:q 狗:n\n1001#zhm#1 狗:n 在:p 跑:v\n1002#zhm#0 两:m 个:q 人:n\n1003#zhm#0 海:n\n",
        encoding="utf-8")
    flickr_images = tmp_path / "flickr30k-images"
    flickr_images.mkdir()
    for name, src in (("1001", photos[0]), ("1002", photos[1])):  # 1003 not downloaded
        (flickr_images / f"{name}.jpg").write_bytes(src.read_bytes())
    ds = load_dataset(tmp_path / "flickr30k-cn", images=flickr_images)
    assert [i.id for i in ds.images] == ["1001", "1002"] and ds.missing == 1
    assert ds.captions == ["一只狗", "狗在跑", "两个人"] and ds.relevant == [(0,), (0,), (1,)]

    # COCO-CN: coco-cn_test.txt + imageid.human-written-caption.txt; photos in val2014/
    coco = tmp_path / "coco-cn-version1805v1.1"
    coco.mkdir()
    ids = ["COCO_val2014_000000000042", "COCO_train2014_000000000007"]
    (coco / "coco-cn_test.txt").write_text("\n".join(ids) + "\n")
    (coco / "imageid.human-written-caption.txt").write_text(
        f"{ids[0]}#0\t一辆红色的公共汽车\n{ids[1]}#0\t桌子上的蛋糕\n{ids[1]}#1\t生日蛋糕\nCOCO_val2014_000000000099#0\t别的\n",
        encoding="utf-8")
    for part, name, src in (("val2014", ids[0], photos[2]), ("train2014", ids[1], photos[3])):
        (tmp_path / "coco" / part).mkdir(parents=True, exist_ok=True)
        (tmp_path / "coco" / part / f"{name}.jpg").write_bytes(src.read_bytes())
    ds = load_dataset(coco, images=tmp_path / "coco")
    assert len(ds.images) == 2 and ds.captions == ["一辆红色的公共汽车", "桌子上的蛋糕", "生日蛋糕"]
    assert ds.relevant == [(0,), (1,), (1,)]

    # Chinese-CLIP: test_imgs.tsv (id<TAB>base64) + test_texts.jsonl (a text may match several images)
    cn = tmp_path / "Flickr30k-CN"
    cn.mkdir()
    with open(cn / "test_imgs.tsv", "w") as fh:
        for i, p in enumerate(photos[:3]):
            fh.write(f"{100 + i}\t{base64.b64encode(p.read_bytes()).decode()}\n")
    (cn / "test_texts.jsonl").write_text("\n".join(json.dumps(t, ensure_ascii=False) for t in [
        {"text_id": 1, "text": "一只猫", "image_ids": [100]},
        {"text_id": 2, "text": "两只猫", "image_ids": [101, 102]},
    ]), encoding="utf-8")
    ds = load_dataset(cn)
    assert [i.id for i in ds.images] == ["100", "101", "102"] and ds.relevant == [(0,), (1, 2)]
    assert ds.images[2].read() == photos[2].read_bytes()


def test_eval_command_with_the_tiny_model(tmp_path: Path, tiny_model: Path) -> None:
    images = make_photos(tmp_path / "set", 70, seed=4)  # >= 64: enough to train IVF-PQ
    lines = ["# generated: an English and a Chinese caption per photo"]
    for i, p in enumerate(images):
        lines += [f"{p.relative_to(tmp_path / 'set')}\tphoto number {i}", f"{p.relative_to(tmp_path / 'set')}\t第{i}张照片"]
    (tmp_path / "set" / "captions.tsv").write_text("\n".join(lines), encoding="utf-8")
    result = runner.invoke(app, ["eval", str(tmp_path / "set"), "--model", str(tiny_model), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 70 and report["captions"] == 140
    assert report["index"]["text→image"].startswith("IVF") and report["index"]["image→text"].startswith("IVF")
    for direction in ("text→image", "image→text"):
        for how in ("exact", "index"):
            r = report["recall"][direction][how]
            assert 0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 1
    human = runner.invoke(app, ["eval", str(tmp_path / "set"), "--model", str(tiny_model), "-q",
                                "--index-type", "flat"])
    assert human.exit_code == 0, human.output
    assert "| text→image | exact |" in human.stdout and "quantisation loss" in human.stdout
    missing = runner.invoke(app, ["eval", str(tmp_path / "nowhere"), "--model", str(tiny_model)])
    assert missing.exit_code == 1 and "is not a folder" in missing.output
