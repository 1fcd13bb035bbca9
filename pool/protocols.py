"""Request building and response reading per vendor protocol.

``build_request`` puts the secret where the protocol expects it;
``classify_response`` turns a ``requests`` response into a ``Verdict``
(the rules themselves live in ``pool.classify``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from requests.structures import CaseInsensitiveDict

from pool.classify import Verdict, classify
from pool.models import Protocol

if TYPE_CHECKING:
    from pool.models import ApiKey

ANTHROPIC_VERSION = "2023-06-01"

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

    Raises ``ValueError`` for an absolute or scheme-relative URL, so a
    secret is never sent to a host other than the key's own.
    """
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or path.startswith(("//", "\\\\")):
        raise ValueError(
            f"path {path!r} is an absolute URL. Pass a path such as "
            "'chat/completions'; the host comes from the key or its vendor."
        )
    return f"{base_url.rstrip('/')}/{path.lstrip('/')}"


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
