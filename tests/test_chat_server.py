"""The fake chat server used by tests: queued replies first, then the reply function; requests recorded."""

import http.client
import json
import time
import urllib.error
import urllib.request

import pytest

from step1x_edit.testing.chat_server import ChatServer, Reply, completion


def post(url: str, payload: dict) -> tuple[int, dict, bytes]:
    """POST JSON with the standard library; returns (status, lower-cased headers, body) for any status."""
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def content(body: bytes) -> str:
    return json.loads(body)["choices"][0]["message"]["content"]


def test_queued_replies_come_first_then_the_reply_function_per_route():
    replies = [Reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "2"}), Reply(raw=b"{oops")]
    with ChatServer(lambda request, call: (200, completion(f"call {call}")), replies, route=lambda r: r["n"]) as server:
        url = server.url + "/chat/completions"
        status, headers, _ = post(url, {"n": 0})
        assert status == 429 and headers["retry-after"] == "2"
        assert post(url, {"n": 0})[2] == b"{oops"
        assert [content(post(url, {"n": n})[2]) for n in (0, 1)] == ["call 2", "call 0"]
        assert post(server.url + "/models", {})[0] == 404
        assert [request["n"] for request in server.requests] == [0, 0, 0, 1]


def test_without_a_reply_function_unscripted_requests_get_a_server_error():
    server = ChatServer(replies=[(200, completion("only one"))])
    url = server.url + "/chat/completions"
    assert content(post(url, {})[2]) == "only one"
    assert post(url, {})[0] == 500
    server.close()
    server.close()
    with pytest.raises(urllib.error.URLError):
        post(url, {})


def test_a_reply_cut_short_announces_its_full_length_then_closes():
    reply = Reply(body=completion("a complete answer"), cut_after=10)
    with ChatServer(lambda request, call: reply) as server:
        request = urllib.request.Request(server.url + "/chat/completions", b"{}", {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert int(response.headers["Content-Length"]) == len(reply.payload())
            with pytest.raises(http.client.IncompleteRead) as error:
                response.read()
    assert error.value.partial == reply.payload()[:10]


def test_a_trickled_reply_arrives_byte_by_byte():
    reply = Reply(raw=b'{"ok": 1}', trickle=0.02)
    with ChatServer(lambda request, call: reply) as server:
        started = time.monotonic()
        status, _, body = post(server.url + "/chat/completions", {})
    assert (status, body) == (200, b'{"ok": 1}')
    assert time.monotonic() - started >= 9 * 0.02
