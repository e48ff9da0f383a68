"""The server against hostile clients: file reads through the web UI, other sites' pages, unbounded uploads,
key guessing, and inputs that would take the machine. The web UI's file check is driven end to end through a
real server on loopback."""

import contextlib
import io
import os
import time
from pathlib import Path

import anyio
import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from serve_clients import LiveServer, local_client

from step1x_edit.serve import webui
from step1x_edit.serve.http import FailedAttempts, create_app
from step1x_edit.serve.service import EditService, ServeLimits

INSTRUCTION = "Make the red circle green."
SECRET = "step1x-secret-7f3a9c"
# The start of a multipart form whose image part then goes on and on.
ENDLESS_FORM_HEAD = (b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
                     b"Content-Type: image/png\r\n\r\n")


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    """A fresh Gradio upload folder for this module's servers."""
    folder = tmp_path_factory.mktemp("gradio-uploads")
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    yield folder
    if previous is None:
        del os.environ["GRADIO_TEMP_DIR"]
    else:
        os.environ["GRADIO_TEMP_DIR"] = previous


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("private") / "credentials.txt"
    path.write_text(f"API_KEY={SECRET}\n")
    return path


@pytest.fixture(scope="module")
def live_ui(demo_pipeline, uploads):
    """A real server on loopback with the web UI and the API key 's3cret'."""
    app = create_app(EditService(demo_pipeline), ui=True, api_key="s3cret")
    with LiveServer(app) as server:
        yield server


def _edit_payload(image) -> dict:
    return {"data": [image, INSTRUCTION, 1, 1.0, 96, 1.0, 0, True]}


def _file(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def _nothing_cached_holds_the_secret(uploads: Path) -> bool:
    return all(SECRET not in path.read_bytes().decode("latin-1") for path in uploads.rglob("*") if path.is_file())


@contextlib.contextmanager
def _logged_in(server: LiveServer):
    """A client of ``server`` logged in to the web UI."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        login = client.post("/ui/login", data={"username": "anyone", "password": "s3cret"})
        assert login.status_code == 200, login.text
        yield client


@pytest.mark.parametrize("route", ["/ui/gradio_api/call/edit", "/ui/gradio_api/queue/join"])
@pytest.mark.parametrize("kind", ["absolute", "escaping the upload folder", "url", "plain string"])
def test_the_web_ui_never_copies_a_file_it_did_not_receive(live_ui, uploads, secret_file, route, kind):
    name = {"absolute": str(secret_file), "escaping the upload folder": f"{uploads}/../{secret_file.parent.name}/"
            f"{secret_file.name}", "url": f"file://{secret_file}", "plain string": str(secret_file)}[kind]
    image = name if kind == "plain string" else _file(name)
    with _logged_in(live_ui) as client:  # even a user with the key may not read the server's files
        payload = {**_edit_payload(image), "fn_index": 0, "session_hash": "attacker", "trigger_id": None}
        response = client.post(route, json=payload)
        if kind == "plain string":  # not a file to Gradio: it fails on its own, and copies nothing
            assert response.status_code in (200, 403, 422)
        else:
            assert response.status_code == 403, response.text
            assert response.json()["error"]["type"] == "forbidden_file"
        if response.status_code == 200 and route.endswith("call/edit"):
            result = client.get(f"{route}/{response.json()['event_id']}")
            assert SECRET not in result.text and str(uploads) not in result.text  # no server paths in errors
        assert client.get(f"/ui/gradio_api/file={secret_file}").status_code == 403
    assert _nothing_cached_holds_the_secret(uploads)


def test_the_web_ui_without_a_login_refuses_before_any_file_is_touched(live_ui, uploads, secret_file):
    response = httpx.post(f"{live_ui.url}/ui/gradio_api/call/edit", json=_edit_payload(_file(str(secret_file))))
    assert response.status_code in (401, 403)
    assert _nothing_cached_holds_the_secret(uploads)


def test_the_web_ui_still_edits_an_uploaded_image_end_to_end(live_ui, example):
    client = Client(f"{live_ui.url}/ui/", auth=("anyone", "s3cret"), verbose=False)
    edited, seed, details = client.predict(handle_file(str(example)), INSTRUCTION, 1, 1.0, 96, 1.0, 3, False,
                                           api_name="/edit")
    assert seed == 3 and "256×256" in details
    assert Image.open(edited).size == (256, 256)


def test_a_page_on_another_site_cannot_reach_a_loopback_server(live_ui):
    rebound = httpx.get(f"{live_ui.url}/health", headers={"host": "attacker.example"})
    assert rebound.status_code == 403 and rebound.json()["error"]["type"] == "forbidden_host"
    cross_site = httpx.post(f"{live_ui.url}/v1/edit", headers={"origin": "https://attacker.example",
                                                               "authorization": "Bearer s3cret"},
                            data={"instruction": INSTRUCTION})
    assert cross_site.status_code == 403 and cross_site.json()["error"]["type"] == "forbidden_origin"
    assert httpx.get(f"{live_ui.url}/health", headers={"origin": live_ui.url}).status_code == 200
    assert httpx.get(f"{live_ui.url}/health", headers={"host": "[::1]:80"}).status_code == 200


def test_a_chunked_upload_is_cut_off_at_the_limit_on_a_real_server(demo_pipeline, uploads):
    service = EditService(demo_pipeline, ServeLimits(max_upload_bytes=100_000))
    sent = 0

    def endless_body():
        nonlocal sent
        yield ENDLESS_FORM_HEAD
        chunk = b"\0" * 65536
        while sent < 200 * 1024 * 1024:
            sent += len(chunk)
            yield chunk

    with LiveServer(create_app(service)) as server:
        headers = {"content-type": "multipart/form-data; boundary=xyz"}
        try:
            response = httpx.post(f"{server.url}/v1/edit", content=endless_body(), headers=headers, timeout=30)
            assert response.status_code == 413 and response.json()["error"]["type"] == "request_too_large"
        except httpx.TransportError:
            pass  # the server answered 413 and closed the connection while the client was still sending
        assert sent < 64 * 1024 * 1024  # stopped long before the 200 MB the client wanted to send
        assert service.pending == 0
        assert httpx.get(f"{server.url}/health").status_code == 200


def _asgi_upload(app, body_chunks, receive_hook=None):
    """POST /v1/edit to ``app`` over ASGI with a chunked body; returns (status, chunks the app took)."""
    taken = 0
    sent = []

    async def receive():
        nonlocal taken
        if receive_hook is not None:
            await receive_hook()
        if taken < len(body_chunks):
            taken += 1
            return {"type": "http.request", "body": body_chunks[taken - 1], "more_body": taken < len(body_chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/edit", "raw_path": b"/v1/edit", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"localhost"), (b"content-type", b"multipart/form-data; boundary=xyz"),
                         (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1), "server": ("localhost", 80)}
    anyio.run(app, scope, receive, send)
    return sent[0]["status"], taken


def test_a_chunked_upload_is_read_no_further_than_the_limit(demo_pipeline):
    service = EditService(demo_pipeline, ServeLimits(max_upload_bytes=100_000))
    chunks = [ENDLESS_FORM_HEAD] + [b"\0" * 65536] * 1000  # 65 MB, no declared length
    status, taken = _asgi_upload(create_app(service), chunks)
    assert status == 413
    assert (taken - 1) * 65536 <= 100_000 + 1024 * 1024 + 65536  # the form head, then up to the limit
    assert service.pending == 0


def test_an_upload_in_progress_holds_a_place_in_the_queue(demo_pipeline, example):
    service = EditService(demo_pipeline, ServeLimits(max_pending=1))
    app = create_app(service)
    seen = {}

    async def while_uploading():
        if "pending" not in seen:
            seen["pending"] = service.pending
            other = await anyio.to_thread.run_sync(
                lambda: local_client(app).post("/v1/edit", data={"instruction": INSTRUCTION},
                                               files={"image": ("a.png", example.read_bytes(), "image/png")}))
            seen["other"] = other.status_code

    _asgi_upload(app, [b"--xyz\r\n"], receive_hook=while_uploading)
    assert seen == {"pending": 1, "other": 503}
    assert service.pending == 0


def test_guessing_the_api_key_is_locked_out_after_ten_tries(demo_pipeline):
    client = local_client(create_app(EditService(demo_pipeline), api_key="s3cret"))
    for _ in range(10):
        assert client.get("/v1/models", headers={"Authorization": "Bearer guess"}).status_code == 401
    locked = client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    assert locked.json()["error"]["type"] == "rate_limited"


def test_guessing_the_web_ui_password_is_locked_out_after_ten_tries(demo_pipeline):
    client = local_client(create_app(EditService(demo_pipeline), ui=True, api_key="s3cret"))
    for _ in range(10):
        assert client.post("/ui/login", data={"username": "a", "password": "guess"}).status_code >= 400
    locked = client.post("/ui/login", data={"username": "a", "password": "s3cret"})
    assert locked.status_code == 429


def test_failed_attempts_lock_out_only_the_guessing_address_and_expire(monkeypatch):
    attempts = FailedAttempts(limit=3, window=60.0, max_clients=2)
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    for _ in range(3):
        attempts.record("10.0.0.1")
    assert attempts.retry_after("10.0.0.1") == 61 and attempts.retry_after("10.0.0.2") is None
    now[0] += 61
    assert attempts.retry_after("10.0.0.1") is None
    for address in ("a", "b", "c"):
        attempts.record(address)
    assert len(attempts._failures) == 2  # the record of addresses stays bounded


def test_the_api_docs_follow_the_api_key(demo_pipeline):
    open_client = local_client(create_app(EditService(demo_pipeline)))
    assert open_client.get("/openapi.json").status_code == 200 and open_client.get("/docs").status_code == 200
    keyed = local_client(create_app(EditService(demo_pipeline), api_key="s3cret"))
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert keyed.get(path).status_code == 401
    assert keyed.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_two_image_parts_in_one_request_are_refused(demo_pipeline, example):
    client = local_client(create_app(EditService(demo_pipeline)))
    image = ("a.png", example.read_bytes(), "image/png")
    for route, field in (("/v1/edit", "instruction"), ("/v1/images/edits", "prompt")):
        response = client.post(route, data={field: INSTRUCTION}, files=[("image", image), ("image", image)])
        assert response.status_code == 400 and "2 image parts" in response.json()["error"]["message"]


def test_a_tiny_file_that_decodes_to_an_enormous_image_is_refused(demo_pipeline):
    buffer = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buffer, format="PNG")  # a few kB, 64 megapixels
    assert len(buffer.getvalue()) < 100_000
    response = local_client(create_app(EditService(demo_pipeline))).post(
        "/v1/edit", data={"instruction": INSTRUCTION}, files={"image": ("bomb.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 400 and "above the limit" in response.json()["error"]["message"]


def test_uploads_in_the_web_uis_cache_are_deleted_after_their_time(demo_pipeline, uploads, monkeypatch):
    monkeypatch.setattr(webui, "CACHE_SWEEP_SECONDS", 1)
    monkeypatch.setattr(webui, "CACHE_MAX_AGE_SECONDS", 1)
    with local_client(create_app(EditService(demo_pipeline), ui=True)) as client:  # runs the app's lifespan
        uploaded = client.post("/ui/gradio_api/upload", files={"files": ("a.png", b"an upload", "image/png")})
        path = Path(uploaded.json()[0])
        assert path.exists()
        deadline = time.monotonic() + 10
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not path.exists()


def test_web_ui_uploads_stop_when_its_cache_is_full(demo_pipeline, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    client = local_client(create_app(EditService(demo_pipeline, ServeLimits(max_ui_cache_bytes=50_000)), ui=True))
    filler = b"\0" * 30_000
    statuses = [client.post("/ui/gradio_api/upload", files={"files": (f"{index}.png", filler, "image/png")}).status_code
                for index in range(4)]
    used = sum(path.stat().st_size for path in tmp_path.rglob("*") if path.is_file())
    assert statuses[0] == 200 and statuses[-1] == 503 and used < 50_000 + 30_000
