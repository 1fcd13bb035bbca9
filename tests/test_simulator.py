"""The vendor simulator, spoken to over real HTTP on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
from http import HTTPStatus

import pytest
import requests

from pool.simulator import Reply

AUTH_HEADERS = {
    "openai": lambda secret: {"Authorization": f"Bearer {secret}"},
    "anthropic": lambda secret: {"x-api-key": secret},
    "azure": lambda secret: {"api-key": secret},
    "gemini": lambda secret: {"x-goog-api-key": secret},
}


def get(simulator, protocol: str, secret: str, timeout: float = 5):
    return requests.get(
        simulator.url("v1/models"),
        headers=AUTH_HEADERS[protocol](secret),
        params={"api-version": "2024-10-21"} if protocol == "azure" else None,
        timeout=timeout,
    )


@pytest.mark.parametrize("protocol", list(AUTH_HEADERS))
def test_protocol_read_from_auth_header(simulator, protocol):
    get(simulator, protocol, "sk-sim-ok-s1")

    assert simulator.requests[-1].protocol == protocol
    assert simulator.requests[-1].secret == "sk-sim-ok-s1"


def test_gemini_key_query_parameter_accepted(simulator):
    requests.get(
        simulator.url("v1beta/models"), params={"key": "AIza-sim-ok-s2"}, timeout=5
    )

    assert simulator.requests[-1].protocol == "gemini"


@pytest.mark.parametrize(
    ("protocol", "shape"),
    [
        ("openai", "data"),
        ("anthropic", "data"),
        ("azure", "data"),
        ("gemini", "models"),
    ],
)
def test_model_list_in_protocol_shape(simulator, protocol, shape):
    response = get(simulator, protocol, "sk-sim-ok-s3")

    assert response.status_code == 200
    assert shape in response.json()


def test_anthropic_message_shape(simulator):
    response = requests.post(
        simulator.url("v1/messages"),
        headers={"x-api-key": "sk-sim-ok-s4"},
        json={},
        timeout=5,
    )

    assert response.json()["type"] == "message"


def test_quota_runs_out_after_n_calls(simulator):
    statuses = [
        get(simulator, "openai", "sk-sim-quota2-s5").status_code for _ in range(3)
    ]

    assert statuses == [200, 200, 429]
    assert simulator.count("sk-sim-quota2-s5") == 3


@pytest.mark.parametrize(
    ("protocol", "status"),
    [("openai", 401), ("anthropic", 401), ("azure", 401), ("gemini", 400)],
)
def test_invalid_key_status(simulator, protocol, status):
    assert get(simulator, protocol, "sk-sim-invalid-s6").status_code == status


def test_rate_limited_sends_hint(simulator):
    response = get(simulator, "openai", "sk-sim-rate12-s7")

    assert response.status_code == 429
    assert response.headers["retry-after"] == "12"
    assert "try again in 12s" in response.json()["error"]["message"]


def test_gemini_rate_limit_has_retry_info(simulator):
    details = get(simulator, "gemini", "sk-sim-rate7-s8").json()["error"]["details"]

    assert {
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": "7s",
    } in details


def test_error_status_from_secret(simulator):
    assert get(simulator, "anthropic", "sk-sim-error529-s9").status_code == 529


def test_html_error_page(simulator):
    response = get(simulator, "openai", "sk-sim-html-s10")

    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>" in response.text


def test_slow_key_times_out(simulator):
    with pytest.raises(requests.Timeout):
        get(simulator, "openai", "sk-sim-slow400-s11", timeout=0.05)


def test_azure_without_api_version_not_found(simulator):
    response = requests.get(
        simulator.url("openai/models"), headers={"api-key": "sk-sim-ok-s12"}, timeout=5
    )

    assert response.status_code == 404


def test_missing_secret_rejected(simulator):
    assert requests.get(simulator.url("v1/models"), timeout=5).status_code == 401


def test_scripted_replies_come_first_in_order(simulator):
    simulator.script(
        "sk-sim-ok-s13",
        Reply(418, {"error": "teapot"}, {"x-extra": "1"}),
        Reply(503, "plain text"),
    )

    first = get(simulator, "openai", "sk-sim-ok-s13")
    second = get(simulator, "openai", "sk-sim-ok-s13")
    third = get(simulator, "openai", "sk-sim-ok-s13")

    assert (first.status_code, first.json(), first.headers["x-extra"]) == (
        418,
        {"error": "teapot"},
        "1",
    )
    assert (second.status_code, second.text) == (503, "plain text")
    assert third.status_code == 200


def test_control_endpoint_scripts_replies(simulator):
    script = {"secret": "sk-sim-ok-s14", "replies": [{"status": 402, "body": {"e": 1}}]}

    queued = requests.post(simulator.url("_sim/script"), json=script, timeout=5)
    response = get(simulator, "openai", "sk-sim-ok-s14")

    assert queued.json() == {"queued": 1}
    assert response.status_code == 402


def test_control_endpoint_invalid_script_rejected(simulator):
    response = requests.post(
        simulator.url("_sim/script"), json={"replies": []}, timeout=5
    )

    assert response.status_code == 400
    assert "secret" in response.json()["error"]


def test_control_endpoint_reset_clears_counts(simulator):
    get(simulator, "openai", "sk-sim-ok-s15")

    requests.post(simulator.url("_sim/reset"), timeout=5)

    assert simulator.count("sk-sim-ok-s15") == 0


def test_empty_body_reply(simulator):
    simulator.script("sk-sim-ok-s16", Reply(429))

    response = get(simulator, "openai", "sk-sim-ok-s16")

    assert response.status_code == 429
    assert response.content == b""


def test_connection_kept_alive(simulator):
    connection = http.client.HTTPConnection("127.0.0.1", simulator.port, timeout=5)
    headers = {"Authorization": "Bearer sk-sim-ok-s17"}
    try:
        connection.request("GET", "/v1/models", headers=headers)
        first = connection.getresponse()
        first_body = json.loads(first.read())
        socket_after_first = connection.sock
        connection.request("GET", "/v1/models", headers=headers)
        second = connection.getresponse()
        second.read()
        socket_after_second = connection.sock
    finally:
        connection.close()

    assert first.version == 11
    assert first_body["object"] == "list"
    assert socket_after_first is not None
    assert socket_after_second is socket_after_first
    assert second.status == 200
    assert simulator.count("sk-sim-ok-s17") == 2


def post_script(simulator, script) -> requests.Response:
    return requests.post(simulator.url("_sim/script"), json=script, timeout=5)


@pytest.mark.parametrize(
    ("reply", "field"),
    [
        ({"status": "abc"}, "replies[0].status"),
        ({"status": 99999}, "replies[0].status"),
        ({"status": 99}, "replies[0].status"),
        ({"status": 600}, "replies[0].status"),
        ({"status": 200.5}, "replies[0].status"),
        ({"status": True}, "replies[0].status"),
        ({"status": None}, "replies[0].status"),
        ({"status": 429, "headers": ["x"]}, "replies[0].headers"),
        ({"status": 429, "headers": {"x-n": 5}}, "replies[0].headers"),
        ({"status": 429, "headers": {"bad name": "1"}}, "replies[0].headers"),
        ({"status": 429, "headers": {"x-a\n": "1"}}, "replies[0].headers"),
        ({"status": 429, "headers": {"x-a": "1\r\nx-b: 2"}}, "replies[0].headers"),
        ({"status": 429, "headers": {"x-a": "\u2603"}}, "replies[0].headers"),
        ({"status": 429, "headers": {"Content-Length": "9"}}, "replies[0].headers"),
        ({"status": 429, "delay": "slow"}, "replies[0].delay"),
        ({"status": 429, "delay": -1}, "replies[0].delay"),
    ],
)
def test_control_endpoint_invalid_reply_rejected(simulator, reply, field):
    secret = "sk-sim-ok-s18"
    script = {"secret": secret, "replies": [reply]}

    response = post_script(simulator, script)
    after = get(simulator, "openai", secret)

    assert response.status_code == 400
    assert field in response.json()["error"]
    assert after.status_code == 200


def test_control_endpoint_rejects_whole_script(simulator):
    secret = "sk-sim-ok-s19"
    script = {"secret": secret, "replies": [{"status": 402}, {"status": "abc"}]}

    response = post_script(simulator, script)
    after = get(simulator, "openai", secret)

    assert response.status_code == 400
    assert "replies[1].status" in response.json()["error"]
    assert after.status_code == 200


@pytest.mark.parametrize(
    ("script", "field"),
    [
        ([], '"secret" and "replies"'),
        ({"secret": "sk-sim-ok-s20", "replies": {"status": 200}}, "replies must"),
        ({"secret": "sk-sim-ok-s20", "replies": [5]}, "replies[0]"),
        ({"secret": 5, "replies": []}, "secret must"),
    ],
)
def test_control_endpoint_malformed_script_rejected(simulator, script, field):
    response = post_script(simulator, script)

    assert response.status_code == 400
    assert field in response.json()["error"]


def test_control_endpoint_body_not_json_rejected(simulator):
    response = requests.post(simulator.url("_sim/script"), data=b"{", timeout=5)

    assert response.status_code == 400
    assert "not JSON" in response.json()["error"]


def test_control_endpoint_accepts_valid_reply(simulator):
    script = {
        "secret": "sk-sim-ok-s21",
        "replies": [
            {
                "status": 429,
                "headers": {"retry-after": "7", "x-label": "caf\u00e9"},
                "body": "slow down",
            }
        ],
    }

    queued = post_script(simulator, script)
    response = get(simulator, "openai", "sk-sim-ok-s21")

    assert queued.status_code == 200
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.text == "slow down"


@pytest.mark.parametrize(
    ("reply", "field"),
    [
        (Reply("abc"), "status"),
        (Reply(99999), "status"),
        (Reply(429, headers={"x-n": 5}), "headers"),
        (Reply(429, body={"n": float("nan")}), "body"),
        (Reply(429, body={"n": object()}), "body"),
        (Reply(429, delay=float("inf")), "delay"),
    ],
)
def test_script_invalid_reply_raises(simulator, reply, field):
    with pytest.raises(ValueError, match=rf"replies\[1\]\.{field}"):
        simulator.script("sk-sim-ok-s22", Reply(402), reply)

    assert get(simulator, "openai", "sk-sim-ok-s22").status_code == 200


def test_script_accepts_http_status_enum(simulator):
    simulator.script("sk-sim-ok-s23", Reply(HTTPStatus.TOO_MANY_REQUESTS))

    assert get(simulator, "openai", "sk-sim-ok-s23").status_code == 429
