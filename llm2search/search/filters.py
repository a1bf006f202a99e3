"""Search filters: which rows of a shard a query may return, computed from the shard's Parquet
metadata before the vector search, so a filter never loses results that a post-filter of the
top-k would have kept. Sorting and the score threshold apply to the matches afterwards."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from datetime import date, datetime, timezone
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidQueryError

SORTS = ("score", "date", "date_asc")
# File types by the decoder's format name; names and extensions people type map onto them.
# MPO is what many phone cameras write: a JPEG with extra frames.
TYPE_ALIASES = {
    "jpg": ("JPEG", "MPO"), "jpeg": ("JPEG", "MPO"), "jpe": ("JPEG", "MPO"), "jfif": ("JPEG", "MPO"),
    "mpo": ("MPO",), "png": ("PNG",), "webp": ("WEBP",), "gif": ("GIF",), "bmp": ("BMP",),
    "tif": ("TIFF",), "tiff": ("TIFF",), "heic": ("HEIF",), "heif": ("HEIF",),
    "avif": ("AVIF",), "jxl": ("JXL",), "dng": ("DNG",), "cr2": ("CR2",), "nef": ("NEF",), "arw": ("ARW",),
    "raw": ("DNG", "CR2", "NEF", "ARW", "RAW"),
}
# Columns a row filter reads; the searcher loads only these for filtering.
FILTER_COLUMNS = ["path", "mtime_ns", "exif_time", "format", "width", "height",
                  "camera_make", "camera_model", "lens", "gps_lat", "gps_lon"]
EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)
MAX_NAME_FILTER = 200  # characters of a camera or lens filter


@dataclass(frozen=True)
class SearchFilter:
    """What a search may return and how the matches are ordered. All fields are optional."""

    folder: str | None = None  # absolute folder: files in it or any folder below it
    path_prefix: str | None = None  # raw prefix of the absolute path, e.g. "/photos/2023-"
    after: int | None = None  # taken on or after (epoch seconds); taken = EXIF time, else mtime
    before: int | None = None  # taken strictly before (epoch seconds)
    types: tuple[str, ...] = ()  # file types, e.g. ("jpg", "png"); any of them matches
    min_width: int | None = None  # pixels, in display orientation
    min_height: int | None = None
    min_score: float | None = None  # drop matches whose cosine similarity is below this
    sort: str = "score"  # "score" (best first), "date" (newest first) or "date_asc"
    camera: str | None = None  # words found in EXIF "make model", any case: "canon r5", "iPhone"
    lens: str | None = None  # words found in the EXIF lens name, any case: "24-105"
    near: tuple[float, float, float] | None = None  # (lat, lon, km): GPS within km of the point
    bbox: tuple[float, float, float, float] | None = None  # (south, west, north, east) degrees;
    # west > east means the box crosses the 180th meridian

    def __post_init__(self) -> None:
        if self.sort not in SORTS:
            raise InvalidQueryError(f"sort must be one of {', '.join(SORTS)}, got {self.sort!r}")
        if isinstance(self.types, str):
            object.__setattr__(self, "types", (self.types,))
        formats = set()
        for t in self.types:
            key = str(t).lower().lstrip(".")
            if key not in TYPE_ALIASES and key.upper() not in _FORMATS:
                known = ", ".join(sorted(TYPE_ALIASES))
                raise InvalidQueryError(f"unknown file type {t!r}; use one of {known}")
            formats.update(TYPE_ALIASES.get(key, (key.upper(),)))
        object.__setattr__(self, "_formats", tuple(sorted(formats)))
        for name in ("min_width", "min_height"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 0):
                raise InvalidQueryError(f"{name} must be a whole number of pixels >= 0, got {v!r}")
        if self.after is not None and self.before is not None and self.after >= self.before:
            raise InvalidQueryError("the date range is empty: 'after' must be earlier than 'before'")
        if self.folder is not None and not self.folder:
            raise InvalidQueryError("folder is empty; give an absolute folder such as /photos/2023")
        for name in ("camera", "lens"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v.split() or len(v) > MAX_NAME_FILTER):
                raise InvalidQueryError(f"{name} must be 1 to {MAX_NAME_FILTER} characters of text, got {v!r}")
        if self.near is not None:
            object.__setattr__(self, "near", _near(self.near))
        if self.bbox is not None:
            object.__setattr__(self, "bbox", _bbox(self.bbox))

    @property
    def restricts_rows(self) -> bool:
        """True when some rows are excluded before the vector search."""
        return self.row_key() != SearchFilter().row_key()

    def row_key(self) -> tuple[Any, ...]:
        """The part of the filter that decides rows: equal keys select the same rows."""
        return (self.folder, self.path_prefix, self.after, self.before, self._formats,  # type: ignore[attr-defined]
                self.min_width, self.min_height, self.camera, self.lens, self.near, self.bbox)

    def row_mask(self, meta: pa.Table) -> np.ndarray:
        """Boolean array, one per row of `meta` (FILTER_COLUMNS at least): rows that pass."""
        n = meta.num_rows
        conditions = []
        if self.folder is not None:
            folder = self.folder.rstrip("/") or "/"
            under = folder if folder == "/" else folder + "/"
            path = meta.column("path")
            conditions.append(pc.or_(pc.equal(path, folder), pc.starts_with(path, under)))
        if self.path_prefix:
            conditions.append(pc.starts_with(meta.column("path"), self.path_prefix))
        if self.after is not None or self.before is not None:
            taken = taken_times(meta)
            if self.after is not None:
                conditions.append(pc.greater_equal(taken, self.after))
            if self.before is not None:
                conditions.append(pc.less(taken, self.before))
        if self._formats:  # type: ignore[attr-defined]
            fmt = pc.utf8_upper(meta.column("format"))
            conditions.append(pc.is_in(fmt, value_set=pa.array(self._formats)))  # type: ignore[attr-defined]
        if self.min_width is not None:
            conditions.append(pc.greater_equal(meta.column("width"), self.min_width))
        if self.min_height is not None:
            conditions.append(pc.greater_equal(meta.column("height"), self.min_height))
        if self.camera is not None:
            make = pc.fill_null(meta.column("camera_make"), "")
            model = pc.fill_null(meta.column("camera_model"), "")
            conditions.append(_all_words(pc.binary_join_element_wise(make, model, " "), self.camera))
        if self.lens is not None:
            conditions.append(_all_words(meta.column("lens"), self.lens))
        mask = np.ones(n, dtype=bool)
        if self.near is not None or self.bbox is not None:
            lat = _floats(meta.column("gps_lat"))
            lon = _floats(meta.column("gps_lon"))
            if self.near is not None:
                mask &= distance_km(lat, lon, self.near[0], self.near[1]) <= self.near[2]
            if self.bbox is not None:
                south, west, north, east = self.bbox
                in_lon = (lon >= west) & (lon <= east) if west <= east else (lon >= west) | (lon <= east)
                mask &= (lat >= south) & (lat <= north) & in_lon
        for c in conditions:
            mask &= np.asarray(pc.fill_null(c, False).to_numpy(zero_copy_only=False), dtype=bool)
        return mask

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "SearchFilter":
        """Build from a JSON object; dates may be epoch seconds or ISO 8601 text."""
        if not d:
            return cls()
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidQueryError(f"unknown filter field(s): {', '.join(sorted(unknown))}")
        values = dict(d)
        for key in ("after", "before"):
            if values.get(key) is not None:
                values[key] = parse_time(values[key])
        if values.get("types") is not None:
            values["types"] = tuple(values["types"])
        for key, names in (("near", ("lat", "lon", "km")), ("bbox", ("south", "west", "north", "east"))):
            v = values.get(key)
            if isinstance(v, dict):
                values[key] = tuple(v.get(name) for name in names)
            elif isinstance(v, list):
                values[key] = tuple(v)
        return cls(**{k: v for k, v in values.items() if v is not None})

    def with_folder_resolved(self) -> "SearchFilter":
        """The CLI's view: a relative folder is relative to the working directory."""
        if self.folder is None:
            return self
        return replace(self, folder=os.path.abspath(os.path.expanduser(self.folder)))


_FORMATS = {f for aliases in TYPE_ALIASES.values() for f in aliases}


def _all_words(column: Any, text: str) -> Any:
    """Rows whose text holds every word of `text`, ignoring case (null text: no match)."""
    out = None
    for word in text.split():
        hit = pc.match_substring(column, word, ignore_case=True)
        out = hit if out is None else pc.and_(out, hit)
    return out


def _floats(column: Any) -> np.ndarray:
    """A float64 column as numpy with NaN for nulls (NaN fails every comparison)."""
    return np.asarray(pc.fill_null(pc.cast(column, pa.float64()), float("nan")).to_numpy(zero_copy_only=False),
                      dtype=np.float64)


def distance_km(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> np.ndarray:
    """Great-circle distance (haversine) from (lat0, lon0) to each point, in km; NaN stays NaN."""
    p1, p2 = np.radians(lat), np.radians(lat0)
    dlat, dlon = p1 - p2, np.radians(lon - lon0)
    a = np.sin(dlat / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise InvalidQueryError(f"{what} must be a number, got {v!r}")
    return float(v)


def _near(v: Any) -> tuple[float, float, float]:
    if not isinstance(v, (tuple, list)) or len(v) != 3:
        raise InvalidQueryError(f"near must be LAT,LON,KM (e.g. 48.86,2.35,10), got {v!r}")
    lat, lon, km = (_number(x, name) for x, name in zip(v, ("latitude", "longitude", "radius")))
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise InvalidQueryError(f"near: latitude must be in [-90, 90] and longitude in [-180, 180], got {lat}, {lon}")
    if not 0 < km <= 20_040:
        raise InvalidQueryError(f"near: the radius must be between 0 and 20040 km, got {km}")
    return lat, lon, km


def _bbox(v: Any) -> tuple[float, float, float, float]:
    if not isinstance(v, (tuple, list)) or len(v) != 4:
        raise InvalidQueryError(f"bbox must be SOUTH,WEST,NORTH,EAST in degrees, got {v!r}")
    south, west, north, east = (_number(x, name) for x, name in zip(v, ("south", "west", "north", "east")))
    if not (-90 <= south <= north <= 90):
        raise InvalidQueryError(f"bbox: need -90 <= south <= north <= 90, got south {south}, north {north}")
    if not (-180 <= west <= 180 and -180 <= east <= 180):
        raise InvalidQueryError(f"bbox: west and east must be in [-180, 180], got {west}, {east}")
    return south, west, north, east


def parse_numbers(text: str | None, count: int, what: str) -> tuple[float, ...] | None:
    """`--near 48.86,2.35,10` → (48.86, 2.35, 10.0); None stays None."""
    if text is None:
        return None
    try:
        values = tuple(float(x) for x in text.replace(" ", "").split(","))
    except ValueError as e:
        raise InvalidQueryError(f"{what} takes {count} numbers separated by commas, got {text!r}") from e
    if len(values) != count:
        raise InvalidQueryError(f"{what} takes {count} numbers separated by commas, got {text!r}")
    return values


def taken_times(meta: pa.Table) -> pa.Array:
    """When each photo was taken, epoch seconds: EXIF capture time, else the file's mtime."""
    mtime_s = pc.divide(meta.column("mtime_ns"), 1_000_000_000)
    return pc.coalesce(meta.column("exif_time"), mtime_s)


def parse_time(value: Any) -> int:
    """Epoch seconds from an int, or from ISO text ('2023-05-01' or '2023-05-01T12:30:00').
    Times without a zone are read as UTC, the same convention as the stored EXIF times."""
    if isinstance(value, bool):
        raise InvalidQueryError(f"not a date: {value!r}")
    if isinstance(value, (int, float)):
        return int(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidQueryError(f"not a date: {value!r}; use YYYY-MM-DD or epoch seconds")
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), datetime.min.time())
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise InvalidQueryError(f"not a date: {value!r}; use YYYY-MM-DD, YYYY-MM-DDTHH:MM:SS or epoch seconds") from e
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def order_hits(scores: np.ndarray, taken: np.ndarray, sort: str) -> np.ndarray:
    """Positions of matches in output order. Date sorts break ties by score."""
    if sort == "score":
        return np.argsort(-scores, kind="stable")
    sign = -1 if sort == "date" else 1
    return np.lexsort((-scores, sign * taken))


def parse_types(values: Iterable[str] | None) -> tuple[str, ...]:
    """`--type jpg,png --type heic` → ('jpg', 'png', 'heic')."""
    out: list[str] = []
    for v in values or ():
        out.extend(t.strip() for t in v.split(",") if t.strip())
    return tuple(out)
