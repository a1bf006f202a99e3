"""One user-facing error hierarchy. The CLI prints any of these as a single line and exits 1."""

from __future__ import annotations


def reason(e: BaseException) -> str:
    """The first line of an exception's message (library errors often carry several)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Llm2SearchError(Exception):
    """Base class for errors meant for the user: the message says what went wrong and what to do."""


class IndexNotFoundError(Llm2SearchError):
    """No index at the given location."""


class IndexCorruptError(Llm2SearchError):
    """The manifest or a shard it names cannot be read."""


class ModelMismatchError(Llm2SearchError):
    """The model asked for is not the model the index was built with."""


class ModelLoadError(Llm2SearchError):
    """A model could not be found, trusted or loaded."""


class InvalidQueryError(Llm2SearchError):
    """The query text or search parameters are not usable."""


class InputPathError(Llm2SearchError):
    """A path given by the user does not exist or is not what was expected."""


class IndexLockedError(Llm2SearchError):
    """Another process is writing to the same index."""


class ItemNotFoundError(InvalidQueryError):
    """An item id that names no live item of the index."""


class IndexClosedError(Llm2SearchError):
    """A SearchIndex used after `close()`."""


class IndexWriteError(Llm2SearchError):
    """The index cannot be written (read-only, disk full, not a directory, ...)."""


class ShardCorruptError(IndexCorruptError):
    """A shard's files do not match the sizes or checksums its manifest records."""

    def __init__(self, message: str, shard: str):
        super().__init__(message)
        self.shard = shard
