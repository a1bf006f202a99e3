"""Request and response schemas of the HTTP API; the OpenAPI spec is built from these."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator

from ..search.filters import MAX_NAME_FILTER, SearchFilter
from .config import Limits

# A date: YYYY-MM-DD or an ISO date-time (checked again by the filter parser).
DateText = Annotated[str, Field(min_length=4, max_length=40, pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9:.]+(Z|[+-][0-9:]+)?)?$")]

INT32_MAX = 2**31 - 1
EPOCH_LIMIT = 253_402_300_799  # 9999-12-31T23:59:59Z: dates beyond are refused, not overflowed
ITEM_ID = r"^[0-9]{6,}-[0-9a-f]{8}:[0-9]{1,12}$"  # ASCII digits only (Unicode digits are not ids)
# Texts the model reads: no control characters but tab and newlines (lone surrogates, which
# JSON can carry, are refused by _not_blank).
TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$"
PATH_TEXT = r"^[^\x00]*$"


class NearIn(BaseModel):
    """Photos whose EXIF GPS position lies within `km` of (lat, lon)."""

    model_config = ConfigDict(extra="forbid")
    lat: StrictFloat = Field(..., ge=-90, le=90, allow_inf_nan=False)
    lon: StrictFloat = Field(..., ge=-180, le=180, allow_inf_nan=False)
    km: StrictFloat = Field(..., gt=0, le=20_040, allow_inf_nan=False)


class BoxIn(BaseModel):
    """Photos whose EXIF GPS position lies in a box; west > east crosses the 180th meridian."""

    model_config = ConfigDict(extra="forbid")
    south: StrictFloat = Field(..., ge=-90, le=90, allow_inf_nan=False)
    west: StrictFloat = Field(..., ge=-180, le=180, allow_inf_nan=False)
    north: StrictFloat = Field(..., ge=-90, le=90, allow_inf_nan=False)
    east: StrictFloat = Field(..., ge=-180, le=180, allow_inf_nan=False)


class FilterIn(BaseModel):
    """Restricts and orders results. Dates: 'YYYY-MM-DD', ISO date-time (UTC if no zone) or epoch seconds."""

    model_config = ConfigDict(extra="forbid")
    folder: Optional[str] = Field(None, min_length=1, max_length=4096, pattern=PATH_TEXT,
                                  description="absolute folder: it and everything below")
    path_prefix: Optional[str] = Field(None, max_length=4096, pattern=PATH_TEXT,
                                       description="raw prefix of the absolute path")
    after: Optional[Annotated[int, Field(strict=True, ge=-EPOCH_LIMIT, le=EPOCH_LIMIT)] | DateText] = Field(
        None, description="taken on or after (EXIF time, else mtime)")
    before: Optional[Annotated[int, Field(strict=True, ge=-EPOCH_LIMIT, le=EPOCH_LIMIT)] | DateText] = Field(
        None, description="taken before")
    types: Optional[list[Annotated[str, Field(max_length=8, pattern=r"^\.?[A-Za-z0-9]{1,6}$")]]] = Field(
        None, max_length=16, description="file types, e.g. ['jpg', 'png', 'heic']")
    min_width: Optional[StrictInt] = Field(None, ge=0, le=INT32_MAX)
    min_height: Optional[StrictInt] = Field(None, ge=0, le=INT32_MAX)
    min_score: Optional[StrictFloat | StrictInt] = Field(None, ge=-1, le=1)
    sort: Literal["score", "date", "date_asc"] = "score"
    camera: Optional[str] = Field(None, min_length=1, max_length=MAX_NAME_FILTER, pattern=TEXT,
                                  description="words of the EXIF camera make and model, any case, e.g. 'canon r5'")
    lens: Optional[str] = Field(None, min_length=1, max_length=MAX_NAME_FILTER, pattern=TEXT,
                                description="words of the EXIF lens name, any case, e.g. '24-105'")
    near: Optional[NearIn] = Field(None, description="GPS position within a radius of a point")
    bbox: Optional[BoxIn] = Field(None, description="GPS position inside a box")

    @field_validator("camera", "lens")
    @classmethod
    def _unicode(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else _valid_unicode(v)

    def to_filter(self) -> SearchFilter:
        return SearchFilter.from_json(self.model_dump(exclude_none=True))


def _check_texts(texts: list[str], what: str) -> list[str]:
    for t in texts:
        _not_blank(t)
        if len(t) > Limits.max_text:
            raise ValueError(f"{what} is longer than {Limits.max_text} characters")
    return texts


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("text is empty")
    return _valid_unicode(v)


def _valid_unicode(v: str) -> str:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text holds a lone surrogate (\\ud800-\\udfff): not valid Unicode") from None
    return v


class TextSearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., min_length=1, max_length=Limits.max_text, pattern=TEXT, examples=["一群人在徒步"])
    k: StrictInt = Field(20, ge=1, le=Limits.max_k)
    filter: Optional[FilterIn] = None

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return _not_blank(v)


class SimilarIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(..., max_length=40, pattern=ITEM_ID, description="an item id from a hit")
    k: StrictInt = Field(20, ge=1, le=Limits.max_k)
    filter: Optional[FilterIn] = None
    exclude_self: bool = True


class QueryIn(BaseModel):
    """A combined query: weighted sum of the parts' unit vectors minus the negative texts."""

    model_config = ConfigDict(extra="forbid")
    text: Optional[str] = Field(None, min_length=1, max_length=Limits.max_text, pattern=TEXT)
    text_weight: StrictFloat | StrictInt = Field(1.0, ge=-10, le=10)
    image: Optional[str] = Field(None, max_length=(Limits.max_body * 4) // 3 + 4, pattern=r"^[A-Za-z0-9+/]*={0,2}$",
                                 description="base64 of an image file (JPEG, PNG, WebP, HEIC, ...)")
    image_weight: StrictFloat | StrictInt = Field(1.0, ge=-10, le=10)
    item_id: Optional[str] = Field(None, max_length=40, pattern=ITEM_ID, description="an indexed item as a further image")
    item_weight: StrictFloat | StrictInt = Field(1.0, ge=-10, le=10)
    negative: list[Annotated[str, Field(min_length=1, max_length=Limits.max_text, pattern=TEXT)]] = Field(
        default_factory=list, max_length=Limits.max_negatives)
    negative_weight: StrictFloat | StrictInt = Field(0.5, ge=0, le=10)
    k: StrictInt = Field(20, ge=1, le=Limits.max_k)
    filter: Optional[FilterIn] = None

    @field_validator("text")
    @classmethod
    def _text(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else _not_blank(v)

    @field_validator("negative")
    @classmethod
    def _negative(cls, v: list[str]) -> list[str]:
        return _check_texts(v, "a negative text")


class VectorSearchIn(BaseModel):
    """Nearest items to each of your own unit vectors of the index's model (from /api/embed/*
    or the same model elsewhere), searched as one batch."""

    model_config = ConfigDict(extra="forbid")
    vectors: list[Annotated[list[Annotated[float, Field(strict=True, ge=-1e6, le=1e6)]],
                            Field(min_length=1, max_length=8192)]] = Field(
        ..., min_length=1, max_length=Limits.max_vectors)
    k: StrictInt = Field(20, ge=1, le=Limits.max_k)
    filter: Optional[FilterIn] = None


class EmbedTextIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[Annotated[str, Field(min_length=1, max_length=Limits.max_text, pattern=TEXT)]] = Field(
        ..., min_length=1, max_length=Limits.max_texts)

    @field_validator("texts")
    @classmethod
    def _texts(cls, v: list[str]) -> list[str]:
        return _check_texts(v, "a text")


class HitOut(BaseModel):
    id: str
    rank: int
    score: float
    path: str
    size: int
    mtime_ns: int
    width: int
    height: int
    format: str
    exif_time: Optional[int]
    taken: int
    content_hash: str
    shard: str
    row: int
    camera_make: Optional[str] = None
    camera_model: Optional[str] = None
    lens: Optional[str] = None
    gps_lat: Optional[float] = None
    gps_lon: Optional[float] = None
    gps_alt: Optional[float] = None
    thumbnail: str
    image: str


class SearchOut(BaseModel):
    hits: list[HitOut]
    count: int
    k: int
    took_ms: float
    truncated: bool = Field(False, description="a query text was longer than the text model's token "
                                               "limit and was searched cut to it")
    truncated_texts: int = Field(0, description="how many query texts were cut")
    token_limit: Optional[int] = Field(None, description="query tokens the text model reads (text searches)")


class VectorSearchOut(BaseModel):
    results: list[SearchOut]
    k: int
    took_ms: float


class EmbedOut(BaseModel):
    model: str
    dim: int
    vectors: list[list[float]]


class MatchOut(BaseModel):
    matches: list[dict[str, Any]] = Field(..., examples=[[{"caption": "a dog", "probability": 0.97, "cosine": 0.31}]])


class ErrorOut(BaseModel):
    error: str
    status: int


ERRORS = {code: {"model": ErrorOut} for code in (401, 404, 413, 415, 422)}


def to_filter(f: Optional[FilterIn]) -> SearchFilter:
    return f.to_filter() if f is not None else SearchFilter()
