"""The HTTP API: edits over /v1/edit and the OpenAI-shaped /v1/images/edits, and JSON errors for bad requests."""

import base64
import io
import threading

import anyio
import httpx
import numpy as np
import openai
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serve_clients import local_client

from step1x_edit.cli import main
from step1x_edit.serve.http import create_app
from step1x_edit.serve.service import EditService, ServeLimits

INSTRUCTION = "Make the red circle green."


def _client(pipeline, **limits) -> TestClient:
    return local_client(create_app(EditService(pipeline, ServeLimits(**limits), name="demo")))


def _post_edit(client, image: bytes, **fields):
    return client.post("/v1/edit", files={"image": ("source.png", image, "image/png")},
                       data={"instruction": INSTRUCTION, **fields})


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_edit_answers_the_edited_png_at_the_source_size_with_its_seed(demo_pipeline, example):
    client = _client(demo_pipeline)
    response = _post_edit(client, example.read_bytes(), seed="7")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "7"
    edited = _decoded(response.content)
    assert edited.shape == (256, 256, 3)
    assert not np.array_equal(edited, np.asarray(Image.open(example).convert("RGB")))
    assert _post_edit(client, example.read_bytes(), seed="7").content == response.content


def test_the_apis_edit_is_the_clis_edit_for_the_same_seed(demo_pipeline, example, tmp_path):
    response = _post_edit(_client(demo_pipeline), example.read_bytes(), seed="42")
    assert main(["edit", str(example), INSTRUCTION, "-o", str(tmp_path / "cli.png"), "--device", "cpu"]) == 0
    assert np.array_equal(_decoded(response.content), np.asarray(Image.open(tmp_path / "cli.png")))


@pytest.mark.parametrize(("output_format", "media_type", "pillow_format"),
                         [("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")])
def test_edit_answers_in_the_asked_format(demo_pipeline, example, output_format, media_type, pillow_format):
    response = _post_edit(_client(demo_pipeline), example.read_bytes(), output_format=output_format)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert Image.open(io.BytesIO(response.content)).format == pillow_format


def test_the_openai_client_edits_through_images_edits(demo_pipeline, example):
    client = openai.OpenAI(base_url="http://localhost/v1", api_key="unused", http_client=_client(demo_pipeline))
    with example.open("rb") as image:
        result = client.images.edit(image=image, prompt=INSTRUCTION, n=2, model="demo", extra_body={"seed": 5})
    assert [item.model_extra["seed"] for item in result.data] == [5, 6]
    pictures = [_decoded(base64.b64decode(item.b64_json)) for item in result.data]
    assert all(picture.shape == (256, 256, 3) for picture in pictures)
    single = _post_edit(_client(demo_pipeline), example.read_bytes(), seed="6")
    assert np.array_equal(pictures[1], _decoded(single.content))


@pytest.mark.parametrize(
    ("route", "fields", "files", "status", "message"),
    [
        ("/v1/edit", {"instruction": "  "}, None, 400, "instruction is empty"),
        ("/v1/edit", {"num_inference_steps": "0"}, None, 400, "num_inference_steps must be an integer between 1 and 50"),
        ("/v1/edit", {"num_inference_steps": "many"}, None, 422, "num_inference_steps"),
        ("/v1/edit", {"size_level": "100000"}, None, 400, "size_level must be an integer between 16 and 96"),
        ("/v1/edit", {"output_format": "gif"}, None, 400, "output_format"),
        ("/v1/edit", {}, {"image": ("notes.png", b"hello, not a picture", "image/png")}, 400, "not an image"),
        ("/v1/edit", {}, {"image": ("empty.png", b"", "image/png")}, 400, "empty"),
        ("/v1/images/edits", {"prompt": INSTRUCTION, "response_format": "url"}, None, 400, "b64_json"),
        ("/v1/images/edits", {"prompt": INSTRUCTION, "size": "512x512"}, None, 400, "size"),
        ("/v1/images/edits", {"prompt": INSTRUCTION, "n": "9"}, None, 400, "n must be an integer between 1 and 4"),
        ("/v1/images/edits", {"prompt": INSTRUCTION, "model": "gpt-image-1"}, None, 400, "serves 'demo'"),
        ("/v1/images/edits", {}, None, 400, "prompt"),
        ("/v1/edit", {"guidance_scale": "nan"}, None, 400, "guidance_scale must be a finite number"),
        ("/v1/edit", {"guidance_scale": "-inf"}, None, 400, "guidance_scale must be a finite number"),
        ("/v1/edit", {"seed": str(2**64)}, None, 400, "seed must be an integer between 0"),
        ("/v1/edit", {"instruction": "x" * 20_001}, None, 400, "20,001 characters"),
    ],
)
def test_bad_requests_get_a_json_error_naming_the_problem(demo_pipeline, example, route, fields, files, status,
                                                          message):
    data = fields if route == "/v1/images/edits" else {"instruction": INSTRUCTION, **fields}
    files = files or {"image": ("source.png", example.read_bytes(), "image/png")}
    response = _client(demo_pipeline).post(route, data=data, files=files)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]


def test_a_mask_and_several_images_are_refused(demo_pipeline, example):
    client, image = _client(demo_pipeline), ("source.png", example.read_bytes(), "image/png")
    masked = client.post("/v1/images/edits", data={"prompt": INSTRUCTION}, files={"image": image, "mask": image})
    assert masked.status_code == 400 and "mask" in masked.json()["error"]["message"]
    several = client.post("/v1/images/edits", data={"prompt": INSTRUCTION},
                          files=[("image[]", image), ("image[]", image)])
    assert several.status_code == 400 and "one image" in several.json()["error"]["message"]


def test_uploads_over_the_limit_are_refused_with_413(demo_pipeline, example):
    client = _client(demo_pipeline, max_upload_bytes=10_000)
    response = _post_edit(client, example.read_bytes() + b"\0" * 20_000)
    assert response.status_code == 413
    assert "10,000 bytes" in response.json()["error"]["message"]
    assert response.json()["error"]["type"] == "request_too_large"
    huge = client.post("/v1/edit", content=b"x", headers={"content-length": str(10**9),
                                                           "content-type": "multipart/form-data; boundary=b"})
    assert huge.status_code == 413 and huge.json()["error"]["type"] == "request_too_large"


def test_a_full_queue_answers_503_with_retry_after(gated_pipeline, example):
    service = EditService(gated_pipeline, ServeLimits(max_pending=1))
    client = local_client(create_app(service))
    running = threading.Thread(target=service.edit, args=(example, INSTRUCTION))
    running.start()
    try:
        assert gated_pipeline.entered.wait(30)
        response = _post_edit(client, example.read_bytes())
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()
        assert response.json()["error"]["type"] == "server_busy"
        assert client.get("/health").json()["pending"] == 1
    finally:
        gated_pipeline.release.set()
        running.join(30)
    assert _post_edit(client, example.read_bytes()).status_code == 200


def test_health_and_models_describe_the_served_model(demo_pipeline):
    client = _client(demo_pipeline, max_steps=12)
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "demo" and health["pending"] == 0
    assert health["defaults"]["size_level"] == demo_pipeline.config.default_size_level
    assert health["limits"]["max_steps"] == 12
    assert [model["id"] for model in client.get("/v1/models").json()["data"]] == ["demo"]


class _FailingPipeline:
    """The demo pipeline whose edits raise ``error``."""

    def __init__(self, pipeline, error):
        self.pipeline, self.error = pipeline, error

    def __getattr__(self, name):
        return getattr(self.pipeline, name)

    def __call__(self, **kwargs):
        raise self.error


@pytest.mark.parametrize(
    ("error", "status", "kind", "message"),
    [(torch.cuda.OutOfMemoryError("CUDA out of memory"), 503, "out_of_memory", "smaller size_level"),
     (RuntimeError("a bug"), 500, "server_error", "RuntimeError")],
)
def test_a_failed_edit_answers_json_and_frees_its_place(demo_pipeline, example, error, status, kind, message):
    service = EditService(_FailingPipeline(demo_pipeline, error))
    response = local_client(create_app(service), raise_server_exceptions=False).post(
        "/v1/edit", data={"instruction": INSTRUCTION}, files={"image": ("a.png", example.read_bytes(), "image/png")})
    assert response.status_code == status
    assert response.json()["error"]["type"] == kind and message in response.json()["error"]["message"]
    assert service.pending == 0


def test_a_request_whose_client_has_gone_is_not_edited(gated_pipeline, example):
    """Speaks ASGI directly: the client sends its form, then disconnects while an earlier edit holds the queue."""
    service = EditService(gated_pipeline)
    app = create_app(service)
    form = httpx.Request("POST", "http://localhost/v1/edit", data={"instruction": INSTRUCTION},
                         files={"image": ("a.png", example.read_bytes(), "image/png")})
    body = form.read()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/edit", "raw_path": b"/v1/edit", "query_string": b"", "root_path": "",
             "headers": [(key.lower().encode(), value.encode()) for key, value in form.headers.items()],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent = []

    async def send(message):
        sent.append(message)

    earlier = threading.Thread(target=service.edit, args=(example, INSTRUCTION))
    earlier.start()
    assert gated_pipeline.entered.wait(30)
    threading.Timer(0.5, gated_pipeline.release.set).start()
    anyio.run(app, scope, receive, send)
    earlier.join(30)
    assert gated_pipeline.calls == 1  # the earlier edit only
    assert sent[0]["status"] == 499 and service.pending == 0


def test_with_an_api_key_the_api_needs_it_and_health_stays_open(demo_pipeline, example):
    app = create_app(EditService(demo_pipeline, name="demo"), api_key="s3cret")
    client = local_client(app)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        refused = client.post("/v1/edit", headers=headers, data={"instruction": INSTRUCTION},
                              files={"image": ("a.png", example.read_bytes(), "image/png")})
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"]["type"] == "authentication_error"
    assert client.get("/v1/models").status_code == 401
    assert client.get("/health").status_code == 200
    accepted = openai.OpenAI(base_url="http://localhost/v1", api_key="s3cret", http_client=client)
    with example.open("rb") as image:
        assert len(accepted.images.edit(image=image, prompt=INSTRUCTION).data) == 1
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url="http://localhost/v1", api_key="wrong", http_client=client).models.list()
