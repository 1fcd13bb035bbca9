"""Request building and response reading per vendor protocol.

``build_request`` puts the secret where the protocol expects it;
``classify_response`` turns a ``requests`` response into a ``Verdict``
(the rules themselves live in ``pool.classify``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import requests
from requests.structures import CaseInsensitiveDict

from pool.classify import Verdict, classify
from pool.models import Protocol

if TYPE_CHECKING:
    from pool.models import ApiKey

ANTHROPIC_VERSION = "2023-06-01"

# RFC 3986 scheme syntax. "gemini-pro:generateContent" matches it too, so a
# scheme makes a URL absolute only when "//" or "\\" follows it or it is one
# of KNOWN_SCHEMES.
URL_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
# Schemes that make a URL with or without slashes ("http:host", "mailto:x").
KNOWN_SCHEMES = frozenset(
    {
        "http",
        "https",
        "ws",
        "wss",
        "ftp",
        "ftps",
        "sftp",
        "file",
        "data",
        "blob",
        "javascript",
        "vbscript",
        "mailto",
        "tel",
        "sms",
        "urn",
        "ldap",
        "gopher",
    }
)
# WHATWG URL parsers strip C0 controls and spaces from the start of a URL.
C0_CONTROL_OR_SPACE = "".join(chr(code) for code in range(0x20)) + " "
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
# Browsers and some servers read a backslash as a slash, so "\\\\host" and
# "/\\host" name a host like "//host".
HOST_PREFIXES = ("//", "\\\\", "/\\", "\\/")
MAX_DECODE_ROUNDS = 5

# The cheapest call of each protocol that still proves the key works.
PROBE_PATHS = {
    Protocol.OPENAI: "models",
    Protocol.ANTHROPIC: "models",
    Protocol.AZURE: "models",
    Protocol.GEMINI: "models",
}


@dataclass(frozen=True)
class PreparedCall:
    """URL, headers and query parameters for one request with one key."""

    url: str
    headers: CaseInsensitiveDict
    params: dict[str, Any]


def join_url(base_url: str, path: str) -> str:
    """Append ``path`` to ``base_url`` with exactly one slash between them.

    Raises ``ValueError`` for an absolute or scheme-relative URL, a ``.`` or
    ``..`` segment (plain or percent-encoded) and a control character, so a
    secret is never sent to another host or outside the key's base path. A
    colon in a relative path, as in ``models/gemini-pro:generateContent``,
    is allowed.
    """
    # URL parsers drop leading spaces and C0 controls, so " http://x" is an
    # absolute URL to them, and the check must see it the same way.
    if is_absolute_url(path.lstrip(C0_CONTROL_OR_SPACE)):
        raise ValueError(
            f"path {path!r} is an absolute URL. Pass a path such as "
            "'chat/completions'; the host comes from the key or its vendor."
        )
    if CONTROL_CHARACTER.search(path):
        raise ValueError(
            f"path {path!r} contains a control character. Pass a path such as "
            "'chat/completions' without tabs, line breaks or NUL."
        )
    if has_dot_segment(path):
        raise ValueError(
            f"path {path!r} contains a '.' or '..' segment, which would leave "
            "the key's API URL. Pass a path below it, such as 'chat/completions'."
        )
    joined = f"{base_url.rstrip('/')}/{path.lstrip('/')}"
    if urlsplit(joined)[:2] != urlsplit(base_url)[:2]:
        raise ValueError(
            f"path {path!r} is an absolute URL because it changes the host of "
            "the key's API URL. Pass a path such as 'chat/completions'."
        )
    return joined


def is_absolute_url(path: str) -> bool:
    """Tell whether ``path`` names a host or a scheme of its own."""
    if path[:2] in HOST_PREFIXES:
        return True
    match = URL_SCHEME.match(path)
    if match is None:
        return False
    rest = path[match.end() :]
    return rest[:2] in HOST_PREFIXES or match[1].lower() in KNOWN_SCHEMES


def has_dot_segment(path: str) -> bool:
    """Tell whether a segment of the path part is ``.`` or ``..``, also
    when percent-encoded, once or more."""
    path_part = re.split(r"[?#]", path, maxsplit=1)[0]
    for segment in re.split(r"[/\\]", path_part):
        # Decode until stable, because a proxy or server may decode twice.
        for _ in range(MAX_DECODE_ROUNDS):
            decoded = unquote(segment)
            if decoded == segment:
                break
            segment = decoded
        if segment in (".", ".."):
            return True
    return False


def build_request(
    key: ApiKey,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
) -> PreparedCall:
    """Return the URL, headers and query parameters that send ``key``.

    Headers from ``key.config["headers"]`` are added to the caller's. The
    authentication header always comes from the key.
    """
    merged = CaseInsensitiveDict(headers or {})
    merged.update(config_headers(key))
    query = dict(params or {})
    protocol = key.vendor.protocol
    if protocol == Protocol.ANTHROPIC:
        merged["x-api-key"] = key.secret
        merged.setdefault("anthropic-version", ANTHROPIC_VERSION)
    elif protocol == Protocol.AZURE:
        merged["api-key"] = key.secret
        api_version = (key.config or {}).get("api_version")
        if api_version:
            query.setdefault("api-version", api_version)
    elif protocol == Protocol.GEMINI:
        merged["x-goog-api-key"] = key.secret
    else:
        merged["Authorization"] = f"Bearer {key.secret}"
        # OpenAI's organization and project, set in the pool page's dialogs.
        config = key.config or {}
        if config.get("organization"):
            merged.setdefault("OpenAI-Organization", config["organization"])
        if config.get("project"):
            merged.setdefault("OpenAI-Project", config["project"])
    return PreparedCall(join_url(key.effective_url, path), merged, query)


def config_headers(key: ApiKey) -> dict[str, str]:
    headers = (key.config or {}).get("headers") or {}
    if not isinstance(headers, dict):
        return {}
    return {str(name): str(value) for name, value in headers.items()}


def classify_response(response: requests.Response, *, now: datetime) -> Verdict:
    """Return the outcome of ``response``. The body of a successful response
    is not read, so a streamed success stays unread for the caller."""
    status_code = response.status_code
    if status_code < 400:
        return classify(status_code=status_code, headers={}, body=b"", now=now)
    headers = {name.lower(): value for name, value in response.headers.items()}
    return classify(
        status_code=status_code, headers=headers, body=response.content, now=now
    )
