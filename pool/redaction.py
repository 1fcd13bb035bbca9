"""Masking and redaction of secrets for display and logs."""

from __future__ import annotations

import re
from collections.abc import Iterable

ELLIPSIS = "…"
REDACTED = "[redacted]"

# Credential shapes that vendors echo back in error messages: OpenAI and
# compatible ``sk-`` keys (also half-masked ones such as ``sk-ab***cd``),
# Anthropic ``sk-ant-``, Google ``AIza`` keys, xAI ``xai-``, Groq ``gsk_``
# and Bearer tokens.
SECRET_PATTERNS = [
    re.compile(r"\b(?:sk|gsk|xai|ak)[-_][A-Za-z0-9_\-*.]{4,}"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{8,}"),
    re.compile(r"(?i)\bBearer\s+[A-Za-z0-9_\-.=~+/*]{8,}"),
]


def mask(secret: str) -> str:
    """Return the display form of a secret: a short prefix, an ellipsis and
    at most the last four characters, never more than half of the secret."""
    if not secret:
        return ""
    visible = min(4, len(secret) // 4)
    if visible == 0:
        return ELLIPSIS
    return f"{secret[:visible]}{ELLIPSIS}{secret[-visible:]}"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace each given secret, and anything shaped like a credential,
    with ``[redacted]``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text
