"""Batched GPU JPEG decoding inside the indexing stream.

When the model runs on a GPU, decode workers only read, hash and parse the header of a JPEG the
GPU can decode (`gpu_preprocess.jpeg_header`) and pass its bytes on; here those are decoded
together on the GPU (nvJPEG via torchvision), resized and cropped with torch, and leave the
stream like any other decoded file. Every other file, and any JPEG the GPU rejects, takes the CPU
path (`preprocess.decode_image`), which also gives a bad file its error message. One 12 MP photo
takes a CPU core ~1/15 s to decode; a GPU batch decodes hundreds per second (measured by the GPU
check, not here).
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator

from ..models.cuda_builds import nvidia_present
from ..models.gpu_preprocess import Decoder, crops_from_jpegs, nvjpeg_decoder
from ..models.preprocess import ImageDecodeError, decode_image
from .decode import Decoded, DecodeOptions

log = logging.getLogger(__name__)
GPU_DECODE_BATCH = 64  # JPEGs per nvJPEG batch call


def gpu_possible(requested: str | None) -> bool:
    """Whether the requested device can be a GPU, decided without importing torch (a rerun that
    only re-hashes renamed files loads no model)."""
    return not (requested or "auto").startswith("cpu") and nvidia_present()


def decoder_for(device: str) -> Decoder | None:
    """The GPU JPEG decoder for the model's device: None on the CPU, or without torchvision."""
    if not device.startswith("cuda"):
        return None
    decoder = nvjpeg_decoder(device)
    if decoder is None:
        log.warning("warning: GPU JPEG decoding needs torchvision built for this torch "
                    "(pip install torchvision); decoding on the CPU")
    return decoder


def gpu_jpeg_stream(items: Iterable[Decoded], options: DecodeOptions, decode: Decoder,
                    batch: int = GPU_DECODE_BATCH) -> Iterator[Decoded]:
    """Items as they come, except undecoded JPEGs, which are held until `batch` of them are
    there (or the stream ends), decoded together, and then passed on."""
    held: list[Decoded] = []
    for item in items:
        if item.jpeg is None:
            yield item
            continue
        held.append(item)
        if len(held) >= batch:
            yield from _decode(held, options, decode)
            held = []
    if held:
        yield from _decode(held, options, decode)


def _decode(items: list[Decoded], options: DecodeOptions, decode: Decoder) -> Iterator[Decoded]:
    crops = crops_from_jpegs([i.jpeg for i in items], [i.header for i in items], options.preprocess, decode)
    for item, crop in zip(items, crops):
        data, item.jpeg, item.header = item.jpeg, None, None
        if crop is not None:
            item.pixels = crop.cpu().numpy()
            yield item
            continue
        try:
            item.pixels = decode_image(data, options.preprocess, options.max_pixels, options.draft).pixels
        except ImageDecodeError as e:
            item.error = str(e)
        yield item
