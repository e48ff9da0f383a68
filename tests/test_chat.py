"""The shared pieces of calling an OpenAI-compatible endpoint: client, image data URLs, failure classes, backoff."""

import base64
import io
import time

import openai
import pytest
from PIL import Image

from step1x_edit.chat import backoff_delay, classify, data_url, image_part, make_client
from step1x_edit.testing.chat_server import ChatServer, Reply, completion, error_body


def failed_call(reply: Reply, timeout: float = 2.0) -> openai.APIError:
    with ChatServer(lambda request, call: reply) as server:
        client = make_client(server.url, "key", timeout)
        with pytest.raises(openai.APIError) as caught:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert len(server.requests) == 1  # the client itself never retries
    return caught.value


@pytest.mark.parametrize(
    "status, retryable, unrecoverable",
    [(429, True, False), (500, True, False), (503, True, False), (400, False, False), (422, False, False),
     (401, False, True), (403, False, True), (404, False, True)],
)
def test_http_failures_are_classified_with_the_servers_wait(status, retryable, unrecoverable):
    failure = classify(failed_call(Reply(status, error_body("no"), headers={"Retry-After": "7"})))
    assert (failure.status, failure.retryable, failure.unrecoverable, failure.retry_after) == (
        status, retryable, unrecoverable, 7.0
    )


def test_timeouts_and_refused_connections_are_retryable_and_an_http_date_is_no_wait():
    timeout = classify(failed_call(Reply(body={}, delay=1.0), timeout=0.2))
    assert (timeout.status, timeout.retryable, timeout.retry_after) == (None, True, 0.0)
    with pytest.raises(openai.APIConnectionError) as caught:
        make_client("http://127.0.0.1:9/v1", "key", 1.0).models.list()
    assert classify(caught.value).retryable
    dated = Reply(429, error_body("later"), headers={"Retry-After": "Wed, 21 Oct 2037 07:28:00 GMT"})
    assert classify(failed_call(dated)).retry_after == 0.0


def test_api_key_defaults_to_the_environment_then_empty(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    assert make_client("http://127.0.0.1:1/v1").api_key == "from-env"
    monkeypatch.delenv("OPENAI_API_KEY")
    client = make_client("http://127.0.0.1:1/v1", timeout=3.0)
    assert (client.api_key, client.max_retries, client.timeout) == ("EMPTY", 0, 3.0)


def test_images_become_png_or_jpeg_data_urls():
    image = Image.new("RGBA", (8, 4), (200, 10, 10, 128))
    png = data_url(image)
    assert png.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(png.split(",", 1)[1]))).getpixel((0, 0)) == (200, 10, 10, 128)
    jpeg = image_part(image, "jpeg")["image_url"]["url"]
    assert jpeg.startswith("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(jpeg.split(",", 1)[1]))).mode == "RGB"
    with pytest.raises(ValueError, match="PNG"):
        data_url(image, "WEBP")


def test_backoff_doubles_is_capped_and_honours_a_longer_server_wait():
    assert [backoff_delay(n, 1.0, 5.0) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff_delay(0, 1.0, 30.0, retry_after=3.0) == 3.0
    assert backoff_delay(0, 1.0, 2.0, retry_after=3.0) == 2.0
    assert all(2.0 <= backoff_delay(1, 2.0, 60.0, jitter=True) <= 4.0 for _ in range(50))


def test_a_reply_body_is_bounded_in_time_and_an_error_body_in_size():
    start = time.monotonic()
    trickled = failed_call(Reply(body=completion("ok" * 1000), trickle=0.01), timeout=1.0)  # 20 s to read whole
    assert time.monotonic() - start < 5
    assert isinstance(trickled, openai.APIConnectionError) and classify(trickled).retryable
    endless = failed_call(Reply(500, raw=b"x" * 5_000_000))
    assert isinstance(endless, openai.APIConnectionError) and classify(endless).retryable
    short = failed_call(Reply(400, error_body("the model 'm' does not exist")))
    assert isinstance(short, openai.BadRequestError) and "does not exist" in str(short)
