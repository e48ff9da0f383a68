"""The fake chat server used by tests: queued replies first, then the reply function; requests recorded."""

import httpx
import pytest

from step1x_edit.testing.chat_server import ChatServer, Reply, completion


def test_queued_replies_come_first_then_the_reply_function_per_route():
    replies = [Reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "2"}), Reply(raw=b"{oops")]
    with ChatServer(lambda request, call: (200, completion(f"call {call}")), replies, route=lambda r: r["n"]) as server:
        url = server.url + "/chat/completions"
        first = httpx.post(url, json={"n": 0})
        assert first.status_code == 429 and first.headers["retry-after"] == "2"
        assert httpx.post(url, json={"n": 0}).content == b"{oops"
        answers = [httpx.post(url, json={"n": n}).json()["choices"][0]["message"]["content"] for n in (0, 1)]
        assert answers == ["call 2", "call 0"]
        assert httpx.post(server.url + "/models", json={}).status_code == 404
        assert [request["n"] for request in server.requests] == [0, 0, 0, 1]


def test_without_a_reply_function_unscripted_requests_get_a_server_error():
    server = ChatServer(replies=[(200, completion("only one"))])
    url = server.url + "/chat/completions"
    assert httpx.post(url, json={}).json()["choices"][0]["message"]["content"] == "only one"
    assert httpx.post(url, json={}).status_code == 500
    server.close()
    server.close()
    with pytest.raises(httpx.ConnectError):
        httpx.post(url, json={}, timeout=1.0)
