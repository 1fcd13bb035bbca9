"""A vendor simulator: a real HTTP server on 127.0.0.1 that responds in
the OpenAI, Anthropic, Azure and Gemini shapes, for tests, the demo and
benchmarks.

The protocol is read from the header that carries the secret
(``Authorization: Bearer``, ``x-api-key``, ``api-key``, ``x-goog-api-key``).
The behaviour is encoded in the fake secret as ``sim-<behaviour>``:

===============  =========================================================
``sim-ok``       always succeeds (also any secret without ``sim-``)
``sim-quotaN``   succeeds N times, then returns the quota error
``sim-invalid``  rejects the key
``sim-rateN``    rate limited, with a retry hint of N seconds (default 30)
``sim-errorN``   returns status N (default 500) with a server error body
``sim-slowN``    succeeds after N milliseconds (default 200)
``sim-html``     returns 502 with an HTML error page
===============  =========================================================

For example ``sk-sim-quota3-demo`` succeeds three times. Tests can also
queue arbitrary replies for a secret, either through ``script()`` or by
POSTing ``{"secret": ..., "replies": [{"status": ..., "headers": {...},
"body": ...}]}`` to ``/_sim/script``; queued replies are used first, in
order. A reply with a status outside 100..599, headers that are not
strings or a body that is not JSON is rejected: ``script()`` raises
``ValueError`` and the endpoint responds 400, and neither queues any reply
of that script. ``POST /_sim/reset`` clears the queues and call counts.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger(__name__)

BEHAVIOUR = re.compile(r"sim-([a-z]+)(\d*)")
# RFC 9110 token characters.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Headers that describe the transfer, which the simulator writes itself.
SIMULATOR_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
# Long enough for any timeout test, short enough that a typo cannot hang a
# handler thread for hours.
MAX_DELAY = 600
CONTROL_PREFIX = "/_sim/"
RECENT_REQUESTS = 1000
PER_DAY_QUOTA = "GenerateRequestsPerDayPerProjectPerModel"
PER_MINUTE_QUOTA = "GenerateRequestsPerMinutePerProjectPerModel"


@dataclass(frozen=True)
class Reply:
    """One scripted response. ``body`` is a JSON value, a string sent as is,
    or None for an empty body."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class SeenRequest:
    """A request as the simulator received it, for tests to inspect."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    protocol: str
    secret: str


class VendorSimulator(ThreadingHTTPServer):
    """The simulator server with its per-secret state."""

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), SimulatorHandler)
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.queues: dict[str, deque[Reply]] = {}
        self.requests: deque[SeenRequest] = deque(maxlen=RECENT_REQUESTS)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, prefix: str = "") -> str:
        """Return the base URL of the server, with an optional path prefix."""
        return f"http://127.0.0.1:{self.port}/{prefix.lstrip('/')}".rstrip("/")

    def start(self) -> VendorSimulator:
        """Serve in a background thread and return the server itself."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="vendor-simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join()

    def script(self, secret: str, *replies: Reply) -> None:
        """Queue replies for requests with ``secret``, used in order before
        the behaviour in the secret.

        Raises ``ValueError`` naming the first invalid reply, and then
        queues none of them.
        """
        if not isinstance(secret, str):
            raise ValueError(f"secret must be a string, not {type(secret).__name__}.")
        for index, reply in enumerate(replies):
            check_reply(reply, f"replies[{index}]")
        with self.lock:
            self.queues.setdefault(secret, deque()).extend(replies)

    def reset(self) -> None:
        """Forget queued replies, call counts and recorded requests."""
        with self.lock:
            self.calls.clear()
            self.queues.clear()
            self.requests.clear()

    def count(self, secret: str) -> int:
        """Return how many requests arrived with ``secret``."""
        with self.lock:
            return self.calls[secret]

    def next_reply(self, seen: SeenRequest) -> Reply:
        with self.lock:
            self.calls[seen.secret] += 1
            self.requests.append(seen)
            number = self.calls[seen.secret]
            queue = self.queues.get(seen.secret)
            if queue:
                return queue.popleft()
        return behaviour_reply(seen, number)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and closed the connection is expected in
        # tests of timeouts, so it is no error of the simulator.
        logger.debug("Simulator connection from %s ended early", client_address)


class SimulatorHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: VendorSimulator

    def setup(self) -> None:
        super().setup()
        # Without TCP_NODELAY a small response can wait about 40 ms for the
        # client's delayed ACK (Nagle's algorithm).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self.handle_any()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def handle_any(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if parts.path.startswith(CONTROL_PREFIX):
            self.handle_control(parts.path, body)
            return
        protocol, secret = read_credentials(self.headers, parts.query)
        seen = SeenRequest(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={name.lower(): value for name, value in self.headers.items()},
            protocol=protocol,
            secret=secret,
        )
        reply = self.server.next_reply(seen)
        if reply.delay:
            time.sleep(reply.delay)
        self.send(reply)

    def handle_control(self, path: str, body: bytes) -> None:
        if path == "/_sim/reset" and self.command == "POST":
            self.server.reset()
            self.send(Reply(200, {"reset": True}))
            return
        if path == "/_sim/script" and self.command == "POST":
            try:
                secret, replies = parse_script(body)
                self.server.script(secret, *replies)
            except ValueError as error:
                logger.warning("Simulator rejected a script: %s", error)
                self.send(Reply(400, {"error": f"Invalid script: {error}"}))
                return
            self.send(Reply(200, {"queued": len(replies)}))
            return
        self.send(Reply(404, {"error": f"No control endpoint {path}."}))

    def send(self, reply: Reply) -> None:
        if reply.body is None:
            payload = b""
        elif isinstance(reply.body, str):
            payload = reply.body.encode()
        else:
            payload = json.dumps(reply.body).encode()
        headers = {"Content-Type": content_type(reply.body)} | reply.headers
        headers["Content-Length"] = str(len(payload))
        lines = [f"HTTP/1.1 {reply.status} {status_phrase(reply.status)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # Status line, headers and body go out in one write, so no small
        # header segment waits for the client's ACK.
        self.wfile.write(head + payload)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("Simulator: " + format, *args)


def parse_script(body: bytes) -> tuple[str, list[Reply]]:
    """Read ``{"secret": ..., "replies": [...]}`` from a control request.

    Raises ``ValueError`` naming the missing or invalid field.
    """
    try:
        data = json.loads(body)
    except ValueError as error:
        raise ValueError(f"the body is not JSON ({error}).") from None
    if not isinstance(data, dict) or "secret" not in data or "replies" not in data:
        raise ValueError(
            'send a JSON object with "secret" and "replies", such as '
            '{"secret": "sk-sim-ok-1", "replies": [{"status": 429}]}.'
        )
    if not isinstance(data["replies"], list):
        raise ValueError("replies must be a list of objects.")
    replies = []
    for index, item in enumerate(data["replies"]):
        if not isinstance(item, dict) or "status" not in item:
            raise ValueError(f"replies[{index}] must be an object with a status.")
        replies.append(
            Reply(
                item["status"],
                item.get("body"),
                item.get("headers") or {},
                item.get("delay", 0.0),
            )
        )
    return data["secret"], replies


def check_reply(reply: Reply, name: str) -> None:
    """Raise ``ValueError`` unless the simulator can send ``reply`` as a
    well-formed HTTP response. ``name`` is the reply's place in the script,
    for the message."""
    status = reply.status
    is_integer = isinstance(status, int) and not isinstance(status, bool)
    if not is_integer or not 100 <= status <= 599:
        raise ValueError(
            f"{name}.status must be an integer from 100 to 599, not {status!r}."
        )
    if not isinstance(reply.headers, dict):
        raise ValueError(f"{name}.headers must be an object of strings.")
    for header, value in reply.headers.items():
        check_header(header, value, f"{name}.headers")
    if reply.body is not None and not isinstance(reply.body, str):
        try:
            json.dumps(reply.body, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{name}.body must be a string or a JSON value ({error})."
            ) from None
    delay = reply.delay
    if isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise ValueError(f"{name}.delay must be a number of seconds, not {delay!r}.")
    if not 0 <= delay <= MAX_DELAY:
        raise ValueError(
            f"{name}.delay must be from 0 to {MAX_DELAY} seconds, not {delay!r}."
        )


def check_header(header: Any, value: Any, name: str) -> None:
    if not isinstance(header, str) or not HEADER_NAME.fullmatch(header):
        raise ValueError(f"{name} has an invalid header name {header!r}.")
    if header.lower() in SIMULATOR_HEADERS:
        raise ValueError(
            f"{name} sets {header}, which the simulator writes itself. Leave it out."
        )
    if not isinstance(value, str):
        raise ValueError(f"{name}[{header!r}] must be a string, not {value!r}.")
    # The head goes out as Latin-1, and a line break would end the header.
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        latin_1 = False
    else:
        latin_1 = True
    if not latin_1 or HEADER_VALUE_FORBIDDEN.search(value):
        raise ValueError(
            f"{name}[{header!r}] must be Latin-1 text without control characters."
        )


def content_type(body: Any) -> str:
    if isinstance(body, str):
        return (
            "text/html; charset=utf-8"
            if body.lstrip().startswith("<")
            else "text/plain"
        )
    return "application/json"


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def read_credentials(headers: Any, query: str) -> tuple[str, str]:
    """Return the protocol and secret of a request, from the header that
    carries the secret."""
    authorization = headers.get("Authorization", "")
    if authorization.startswith("Bearer "):
        return "openai", authorization.removeprefix("Bearer ")
    if headers.get("x-api-key"):
        return "anthropic", headers["x-api-key"]
    if headers.get("api-key"):
        return "azure", headers["api-key"]
    if headers.get("x-goog-api-key"):
        return "gemini", headers["x-goog-api-key"]
    key = parse_qs(query).get("key")
    if key:
        return "gemini", key[0]
    return "openai", ""


# Behaviours ------------------------------------------------------------------


def behaviour_reply(seen: SeenRequest, number: int) -> Reply:
    """Return the reply that the behaviour in the secret gives to the
    ``number``-th request with that secret."""
    if not seen.secret:
        return invalid_reply(seen.protocol, "missing")
    if seen.protocol == "azure" and "api-version" not in seen.query:
        return Reply(404, {"error": {"code": "404", "message": "Resource not found"}})
    match = BEHAVIOUR.search(seen.secret)
    name, argument = (match[1], match[2]) if match else ("ok", "")
    count = int(argument) if argument else None
    if name == "quota" and number > (count or 0):
        return quota_reply(seen.protocol)
    if name == "invalid":
        return invalid_reply(seen.protocol, seen.secret)
    if name == "rate":
        return rate_reply(seen.protocol, count or 30)
    if name == "error":
        return error_reply(seen.protocol, count or 500)
    if name == "html":
        return Reply(502, HTML_ERROR_PAGE)
    reply = success_reply(seen)
    if name == "slow":
        return Reply(reply.status, reply.body, reply.headers, (count or 200) / 1000)
    return reply


def success_reply(seen: SeenRequest) -> Reply:
    if seen.method == "GET" and seen.path.rstrip("/").endswith("models"):
        return Reply(200, MODEL_LISTS[seen.protocol])
    if seen.protocol == "anthropic":
        return Reply(
            200,
            {
                "id": "msg_sim",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": "Hello from the simulator."}],
                "model": "claude-sim",
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 3, "output_tokens": 5},
            },
        )
    if seen.protocol == "gemini":
        return Reply(
            200,
            {
                "candidates": [
                    {
                        "content": {
                            "role": "model",
                            "parts": [{"text": "Hello from the simulator."}],
                        },
                        "finishReason": "STOP",
                    }
                ],
            },
        )
    return Reply(
        200,
        {
            "id": "chatcmpl-sim",
            "object": "chat.completion",
            "model": "sim-model",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {
                        "role": "assistant",
                        "content": "Hello from the simulator.",
                    },
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        },
    )


def quota_reply(protocol: str) -> Reply:
    if protocol == "anthropic":
        return Reply(
            400,
            anthropic_error(
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. Please go "
                "to Plans & Billing to upgrade or purchase credits.",
            ),
        )
    if protocol == "gemini":
        return Reply(
            429,
            {
                "error": {
                    "code": 429,
                    "status": "RESOURCE_EXHAUSTED",
                    "message": "You exceeded your current quota.",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                            "violations": [{"quotaId": PER_DAY_QUOTA}],
                        }
                    ],
                }
            },
        )
    return Reply(
        429,
        {
            "error": {
                "message": "You exceeded your current quota, please check your "
                "plan and billing details.",
                "type": "insufficient_quota",
                "param": None,
                "code": "insufficient_quota",
            }
        },
    )


def invalid_reply(protocol: str, secret: str) -> Reply:
    if protocol == "anthropic":
        return Reply(401, anthropic_error("authentication_error", "invalid x-api-key"))
    if protocol == "azure":
        return Reply(
            401,
            {
                "error": {
                    "code": "401",
                    "message": "Access denied due to invalid subscription key or "
                    "wrong API endpoint.",
                }
            },
        )
    if protocol == "gemini":
        return Reply(
            400,
            {
                "error": {
                    "code": 400,
                    "status": "INVALID_ARGUMENT",
                    "message": "API key not valid. Please pass a valid API key.",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "API_KEY_INVALID",
                        }
                    ],
                }
            },
        )
    # Like OpenAI, echo part of the key, so callers must redact it.
    return Reply(
        401,
        {
            "error": {
                "message": f"Incorrect API key provided: {secret[:8]}***{secret[-4:]}.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
    )


def rate_reply(protocol: str, seconds: int) -> Reply:
    headers = {"retry-after": str(seconds)}
    if protocol == "anthropic":
        return Reply(
            429,
            anthropic_error(
                "rate_limit_error", "Number of requests has exceeded your rate limit."
            ),
            headers,
        )
    if protocol == "gemini":
        return Reply(
            429,
            {
                "error": {
                    "code": 429,
                    "status": "RESOURCE_EXHAUSTED",
                    "message": "Resource has been exhausted (e.g. check quota).",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                            "violations": [{"quotaId": PER_MINUTE_QUOTA}],
                        },
                        {
                            "@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": f"{seconds}s",
                        },
                    ],
                }
            },
        )
    return Reply(
        429,
        {
            "error": {
                "message": "Rate limit reached for requests. "
                f"Please try again in {seconds}s.",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        },
        headers,
    )


def error_reply(protocol: str, status: int) -> Reply:
    if protocol == "anthropic":
        return Reply(status, anthropic_error("overloaded_error", "Overloaded"))
    if protocol == "gemini":
        return Reply(
            status,
            {
                "error": {
                    "code": status,
                    "status": "UNAVAILABLE",
                    "message": "The model is overloaded. Please try again later.",
                }
            },
        )
    return Reply(
        status,
        {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        },
    )


def anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


MODEL_LISTS: dict[str, Any] = {
    "openai": {"object": "list", "data": [{"id": "sim-model", "object": "model"}]},
    "azure": {"object": "list", "data": [{"id": "sim-model", "object": "model"}]},
    "anthropic": {
        "data": [{"id": "claude-sim", "type": "model"}],
        "has_more": False,
    },
    "gemini": {"models": [{"name": "models/gemini-sim"}]},
}

HTML_ERROR_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>simulator | 502: Bad gateway</title></head>"
    "<body><h1>Bad gateway</h1><p>Error code 502</p></body></html>"
)
