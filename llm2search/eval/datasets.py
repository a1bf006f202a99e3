"""Image-caption retrieval test sets: our folder format and the published layouts of
Flickr30K-CN, COCO-CN and Chinese-CLIP's preprocessed sets. docs/eval.md describes each layout.

Every loader returns the same thing: a gallery of images, a list of captions, and which images
each caption describes. Nothing here decodes an image or loads a model.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from ..errors import InputPathError

FOLDER_CAPTIONS = "captions.tsv"
FORMATS = ("auto", "folder", "flickr30k-cn", "coco-cn", "cn-clip")
_POS_SUFFIX = re.compile(r"^(.+):[A-Za-z]+$")  # BosonNLP tags in Flickr30K-CN: 男孩:n
_ASCII_WORD = re.compile(r"^[A-Za-z0-9]")


@dataclass(frozen=True)
class ImageRef:
    """Where one image's bytes are: a file, or one line of a base64 TSV (at a byte offset)."""

    id: str
    path: Path
    offset: int | None = None

    def read(self) -> bytes:
        if self.offset is None:
            return self.path.read_bytes()
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            return base64.b64decode(fh.readline().split(b"\t", 1)[1].strip())


@dataclass
class Dataset:
    name: str
    images: list[ImageRef]
    captions: list[str]
    relevant: list[tuple[int, ...]]  # relevant[c]: indices into `images` that caption c describes
    missing: int = 0  # images the annotations name but the disk lacks (they and their captions dropped)

    def summary(self) -> str:
        text = f"{self.name}: {len(self.images):,} images, {len(self.captions):,} captions"
        return text + (f" ({self.missing:,} annotated images not found, left out)" if self.missing else "")


def load_dataset(root: str | Path, fmt: str = "auto", images: str | Path | None = None,
                 split: str = "test", coco_captions: str = "human") -> Dataset:
    """Load a test set from `root`; `images` is where Flickr30K / COCO photos live when they are
    not inside `root`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputPathError(f"{root} is not a folder; give the folder of the evaluation set")
    if fmt == "auto":
        fmt = detect_format(root, split)
    image_dir = Path(images).expanduser() if images else None
    if fmt == "folder":
        return load_folder(root)
    if fmt == "flickr30k-cn":
        return load_flickr30k_cn(root, image_dir, split)
    if fmt == "coco-cn":
        return load_coco_cn(root, image_dir, split, coco_captions)
    if fmt == "cn-clip":
        return load_cn_clip(root, split)
    raise InputPathError(f"unknown dataset format {fmt!r}; use one of {', '.join(FORMATS)}")


def detect_format(root: Path, split: str = "test") -> str:
    if (root / FOLDER_CAPTIONS).is_file():
        return "folder"
    if (root / f"{split}_texts.jsonl").is_file() and (root / f"{split}_imgs.tsv").is_file():
        return "cn-clip"
    if _coco_annotation_dir(root) is not None:
        return "coco-cn"
    if _flickr_split_dir(root, split) is not None:
        return "flickr30k-cn"
    raise InputPathError(
        f"{root} is not an evaluation set this version reads: expected {FOLDER_CAPTIONS} (see "
        "docs/eval.md), a Flickr30K-CN or COCO-CN download, or Chinese-CLIP's "
        f"{split}_imgs.tsv + {split}_texts.jsonl"
    )


# -- our own format -----------------------------------------------------------------------
def load_folder(root: Path) -> Dataset:
    """`captions.tsv`: one `relative/path.jpg<TAB>caption` per line, any number per image."""
    index: dict[str, int] = {}
    images: list[ImageRef] = []
    captions: list[str] = []
    relevant: list[tuple[int, ...]] = []
    missing: set[str] = set()
    path = root / FOLDER_CAPTIONS
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        if "\t" not in line:
            raise InputPathError(f"{path}:{number}: expected `image path<TAB>caption`, got {line[:80]!r}")
        name, caption = (part.strip() for part in line.split("\t", 1))
        if not caption:
            continue
        if name not in index:
            file = root / name
            if not file.is_file():
                missing.add(name)
                continue
            index[name] = len(images)
            images.append(ImageRef(name, file))
        captions.append(caption)
        relevant.append((index[name],))
    return _checked(Dataset(root.name, images, captions, relevant, len(missing)), path)


# -- Flickr30K-CN (Lan, Li & Dong 2017; the flickr30k-cn download) ------------------------
def load_flickr30k_cn(root: Path, image_dir: Path | None, split: str = "test") -> Dataset:
    """`<split dir>/ImageSets/<name>.txt` lists image ids; `<split dir>/TextData/seg.<name>.caption.txt`
    holds `<id>#zhm#<n> 词:pos 词:pos ...`; the photos are Flickr30K's `<id>.jpg`."""
    split_dir = _flickr_split_dir(root, split)
    if split_dir is None:
        raise InputPathError(f"no Flickr30K-CN split folder under {root} (e.g. flickr30kzhmbosontest/)")
    name = split_dir.name
    caption_file = split_dir / "TextData" / f"seg.{name}.caption.txt"
    if not caption_file.is_file():
        found = sorted((split_dir / "TextData").glob("*caption*.txt"))
        if not found:
            raise InputPathError(f"{split_dir} has no TextData/seg.{name}.caption.txt")
        caption_file = found[0]
    ids_file = split_dir / "ImageSets" / f"{name}.txt"
    by_image: dict[str, list[str]] = {}
    for line in caption_file.read_text(encoding="utf-8").splitlines():
        head, _, text = line.strip().partition(" ")
        caption = join_tokens(text)
        if head and caption:
            by_image.setdefault(head.split("#", 1)[0], []).append(caption)
    order = ([s.strip() for s in ids_file.read_text().splitlines() if s.strip()]
             if ids_file.is_file() else list(by_image))
    folders = [d for d in (image_dir, root / "flickr30k-images", root.parent / "flickr30k-images",
                           root / "images", root) if d is not None]
    return _from_ids(f"Flickr30K-CN {name}", order, by_image,
                     lambda image_id: _first_file(folders, [f"{image_id}.jpg"]), caption_file)


def join_tokens(text: str) -> str:
    """Undo Flickr30K-CN's word segmentation: drop `:pos` tags and join Chinese words without
    spaces, keeping one space between two Latin words or numbers."""
    out = ""
    prev_ascii = False
    for token in text.split():
        m = _POS_SUFFIX.match(token)
        word = m.group(1) if m else token
        is_ascii = bool(_ASCII_WORD.match(word)) and word.isascii()
        out += (" " if out and prev_ascii and is_ascii else "") + word
        prev_ascii = is_ascii
    return out


def _flickr_split_dir(root: Path, split: str) -> Path | None:
    """The split's folder: `split` itself if it names one, else the human-translated test
    (`flickr30kzhmbosontest`), else any folder ending in `split`."""
    if (root / "TextData").is_dir():
        return root
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "TextData").is_dir())
    for pattern in (split, f"*zhm*{split}", f"*{split}"):
        for p in dirs:
            if fnmatch(p.name, pattern):
                return p
    return None


# -- COCO-CN (Li et al. 2019; coco-cn-version1805v1.1) ------------------------------------
def load_coco_cn(root: Path, image_dir: Path | None, split: str = "test",
                 captions: str = "human") -> Dataset:
    """`coco-cn_<split>.txt` lists `COCO_val2014_000000xxxxxx` ids; captions are
    `imageid.human-written-caption.txt` (or `imageid.manually-translated-caption.txt`) lines of
    `<id>#<n><TAB>caption`; the photos are MS-COCO 2014's `<id>.jpg`."""
    ann = _coco_annotation_dir(root)
    if ann is None:
        raise InputPathError(f"no COCO-CN annotations (coco-cn_test.txt) under {root}")
    kinds = {"human": "imageid.human-written-caption.txt",
             "translated": "imageid.manually-translated-caption.txt"}
    if captions not in kinds:
        raise InputPathError(f"unknown COCO-CN caption set {captions!r}; use human or translated")
    caption_file = ann / kinds[captions]
    split_name = {"valid": "val"}.get(split, split)
    ids_file = ann / f"coco-cn_{split_name}.txt"
    for f in (caption_file, ids_file):
        if not f.is_file():
            raise InputPathError(f"COCO-CN file {f} is missing")
    by_image: dict[str, list[str]] = {}
    for line in caption_file.read_text(encoding="utf-8").splitlines():
        head, _, text = line.partition("\t")
        if head and text.strip():
            by_image.setdefault(head.rsplit("#", 1)[0].strip(), []).append(" ".join(text.split()))
    order = [s.strip() for s in ids_file.read_text().splitlines() if s.strip()]
    base = image_dir or root
    folders = [base, base.parent, root / "images", root.parent / "images"]

    def find(image_id: str) -> Path | None:
        part = "train2014" if "_train2014_" in image_id else "val2014"
        return _first_file(folders, [f"{part}/{image_id}.jpg", f"{image_id}.jpg"])

    return _from_ids(f"COCO-CN {split_name} ({captions} captions)", order, by_image, find, caption_file)


def _coco_annotation_dir(root: Path) -> Path | None:
    for d in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if (d / "coco-cn_test.txt").is_file():
            return d
    return None


# -- Chinese-CLIP's preprocessed sets (Flickr30k-CN, COCO-CN, MUGE, ...) --------------------
def load_cn_clip(root: Path, split: str = "test") -> Dataset:
    """`<split>_imgs.tsv`: `image_id<TAB>base64`; `<split>_texts.jsonl`:
    `{"text_id": .., "text": "..", "image_ids": [..]}` (a text may match several images)."""
    tsv = root / f"{split}_imgs.tsv"
    images: list[ImageRef] = []
    index: dict[str, int] = {}
    with open(tsv, "rb") as fh:
        offset = 0
        for line in fh:
            image_id = line.split(b"\t", 1)[0].decode().strip()
            if image_id:
                index[image_id] = len(images)
                images.append(ImageRef(image_id, tsv, offset))
            offset += len(line)
    captions: list[str] = []
    relevant: list[tuple[int, ...]] = []
    texts = root / f"{split}_texts.jsonl"
    for line in texts.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        targets = tuple(index[str(i)] for i in item.get("image_ids", []) if str(i) in index)
        if targets and str(item.get("text", "")).strip():
            captions.append(" ".join(str(item["text"]).split()))
            relevant.append(targets)
    return _checked(Dataset(f"{root.name} {split} (Chinese-CLIP layout)", images, captions, relevant), texts)


# -- shared -------------------------------------------------------------------------------
def _from_ids(name: str, order: list[str], by_image: dict[str, list[str]], find, source: Path) -> Dataset:
    images: list[ImageRef] = []
    captions: list[str] = []
    relevant: list[tuple[int, ...]] = []
    missing = 0
    for image_id in order:
        texts = by_image.get(image_id)
        if not texts:
            continue
        file = find(image_id)
        if file is None:
            missing += 1
            continue
        for text in texts:
            captions.append(text)
            relevant.append((len(images),))
        images.append(ImageRef(image_id, file))
    if not images and missing:
        raise InputPathError(
            f"none of the {missing:,} images named by {source} were found; pass the folder of "
            "the photos with --images"
        )
    return _checked(Dataset(name, images, captions, relevant, missing), source)


def _first_file(folders: list[Path], names: list[str]) -> Path | None:
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def _checked(ds: Dataset, source: Path) -> Dataset:
    if not ds.images or not ds.captions:
        raise InputPathError(f"{source} gave no usable image-caption pairs")
    return ds
