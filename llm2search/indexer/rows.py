"""The metadata row of a decoded file, as the shard stores it (store/shard.META_SCHEMA): one
definition for every indexer, on this host or on a cluster, so their shards agree."""

from __future__ import annotations

import time
from typing import Any

from ..store.pathnames import to_stored
from .decode import Decoded


def meta_row(item: Decoded) -> dict[str, Any]:
    entry = item.entry
    shown, raw = to_stored(entry.path)
    return {
        "path": shown, "path_bytes": raw, "size": entry.size, "mtime_ns": entry.mtime_ns,
        "content_hash": item.content_hash, "width": item.width, "height": item.height,
        "format": item.format, "exif_time": item.exif.time, "indexed_at": int(time.time()),
        "deleted": False, "camera_make": item.exif.camera_make, "camera_model": item.exif.camera_model,
        "lens": item.exif.lens, "gps_lat": item.exif.gps_lat, "gps_lon": item.exif.gps_lon,
        "gps_alt": item.exif.gps_alt,
    }
