"""A small HTTP client for `--server` (stdlib only: the CLI must not need the server extra)."""

from __future__ import annotations

import json
import mimetypes
import urllib.parse
import uuid
from typing import Any, Optional

from ..errors import Llm2SearchError


def post_json(server: str, path: str, body: dict, token: Optional[str]) -> Any:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    return send(server, path, data, "application/json", token)


def post_multipart(server: str, path: str, fields: list[tuple[str, str]],
                    files: list[tuple[str, str, bytes]], token: Optional[str]) -> Any:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value.encode("utf-8") + b"\r\n")
    for name, filename, content in files:
        media = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        safe = filename.encode("ascii", "replace").decode().replace('"', "_")
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{safe}"\r\n'
                     f"Content-Type: {media}\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return send(server, path, b"".join(parts), f"multipart/form-data; boundary={boundary}", token)


def check_server_url(server: str) -> str:
    """The base URL, or one clear error naming what is wrong with it."""
    bad = Llm2SearchError(f"--server must be a URL such as http://127.0.0.1:8000, got {server!r}")
    try:
        parts = urllib.parse.urlsplit(server.strip())
        port = parts.port  # ValueError for a port that is not a number in 0-65535
    except ValueError:
        raise bad from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise bad
    if port == 0 or any(c.isspace() or ord(c) < 32 for c in server.strip()):
        raise bad
    return server.strip().rstrip("/")


def send(server: str, path: str, data: bytes, content_type: str, token: Optional[str]) -> Any:
    # Imported here: urllib.request (http.client, ssl, email) is a third of the CLI's start-up
    # imports, and every command but `query --server` and `match --server` goes without it.
    import http.client
    import urllib.error
    import urllib.request

    url = check_server_url(server) + path
    try:
        request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
    except ValueError as e:
        raise Llm2SearchError(f"--server {server!r} is not a usable URL: {e}") from e
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error") or e.reason
        except (ValueError, AttributeError):
            message = e.reason
        hint = " (pass --token or set LLM2SEARCH_TOKEN)" if e.code == 401 else ""
        raise Llm2SearchError(f"the server answered {e.code}: {message}{hint}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise Llm2SearchError(f"cannot reach {server}: {reason}; start one with `llm2search serve`") from e
