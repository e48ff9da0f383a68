"""``step1x-edit serve``: builds the app for the chosen model and hands it to uvicorn; clear errors otherwise."""

import math
import os
import socket
import stat
import sys

import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_clients import local_client

from step1x_edit.cli import main


def _exit_code(argv: list[str]) -> int:
    """``main(argv)``'s exit status, whether it returns it or argparse exits."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


@pytest.fixture
def started(monkeypatch) -> dict:
    """What ``serve`` passed to ``uvicorn.run`` (which is not run)."""
    calls = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.update(app=app, **options))
    return calls


def test_serve_starts_uvicorn_with_the_api_of_the_demo_model(started, capsys):
    assert main(["serve", "--no-ui", "--port", "8123", "--max-steps", "9", "--device", "cpu"]) == 0
    assert (started["host"], started["port"]) == ("127.0.0.1", 8123)
    client = local_client(started["app"])
    health = client.get("/health").json()
    assert health["model"] == "step1x-edit-demo" and health["limits"]["max_steps"] == 9
    assert client.get("/ui/").status_code == 404
    err = capsys.readouterr().err
    assert "http://127.0.0.1:8123" in err and "no API key" in err


def test_serve_mounts_the_web_ui_by_default_with_uploads_in_a_private_folder(started, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", "")  # restored after the test, whatever serve sets
    monkeypatch.delenv("GRADIO_TEMP_DIR")
    assert main(["serve", "--name", "mine", "--device", "cpu"]) == 0
    client = local_client(started["app"])
    assert client.get("/ui/").status_code == 200
    assert client.get("/health").json()["model"] == "mine"
    uploads = os.environ["GRADIO_TEMP_DIR"]
    assert stat.S_IMODE(os.stat(uploads).st_mode) == 0o700  # other users of the machine cannot read uploads
    uploaded = client.post("/ui/gradio_api/upload", files={"files": ("a.png", b"not checked here", "image/png")})
    assert uploaded.status_code == 200 and uploaded.json()[0].startswith(uploads)


def test_serve_without_the_serve_extra_says_how_to_install_it(started, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["serve"]) == 2
    assert "pip install 'step1x-edit[serve]'" in capsys.readouterr().err
    assert not started


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--max-pending", "0"], "--max-pending: must be an integer between 1 and 10000, got 0"),
     (["--max-size-level", "64"], "default size_level (96) is above the serving limit (64)"),
     (["--model", "/nonexistent/model"], "not found"),
     (["--port", "70000"], "--port: must be an integer between 0 and 65535"),
     (["--port", "-1"], "--port: must be an integer between 0 and 65535"),
     (["--max-upload-mb", "nan"], "--max-upload-mb: must be a finite number"),
     (["--max-upload-mb", "0"], "--max-upload-mb: must be a finite number in (0, 1024]"),
     (["--max-steps", str(2**64)], "--max-steps: must be an integer between 1 and 1000"),
     (["--max-edit-seconds", "inf"], "--max-edit-seconds: must be a finite number"),
     (["--allowed-hosts", " , "], "--allowed-hosts: give host names"),
     (["--api-key", "   "], "--api-key is empty")],
)
def test_serve_refuses_bad_settings_before_listening_in_one_line(started, capsys, flags, message):
    assert _exit_code(["serve", "--no-ui", "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not started


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(["--port", "--max-steps", "--max-size-level", "--max-images", "--max-pending",
                             "--max-upload-mb", "--max-edit-seconds"]),
       value=st.one_of(st.integers(max_value=0), st.integers(min_value=10**6), st.floats(allow_nan=True),
                       st.sampled_from(["nan", "inf", "-inf", "1e400", "", "ten", "0x10", str(2**64)])))
def test_serve_number_flags_out_of_range_never_start_and_never_print_a_traceback(started, capsys, flag, value):
    text = value if isinstance(value, str) else repr(value)
    if flag in ("--max-upload-mb", "--max-edit-seconds") and isinstance(value, float) and math.isfinite(value) \
            and 0 < value <= 1024:
        return  # a valid setting
    if flag == "--port" and text in ("0", "0.0"):
        return  # port 0: any free port
    code = _exit_code(["serve", "--no-ui", "--device", "cpu", flag, text])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and "Traceback" not in err
    assert not started


def test_serve_answers_only_to_loopback_names_when_bound_to_loopback_and_to_the_given_names(started):
    assert main(["serve", "--no-ui", "--device", "cpu"]) == 0
    app = started["app"]
    assert local_client(app).get("/health").status_code == 200
    rebound = local_client(app).get("/health", headers={"host": "attacker.example:7860"})
    assert rebound.status_code == 403 and rebound.json()["error"]["type"] == "forbidden_host"
    assert main(["serve", "--no-ui", "--device", "cpu", "--allowed-hosts", "edit.example.com,*.lab.example"]) == 0
    app = started["app"]
    assert local_client(app).get("/health", headers={"host": "edit.example.com"}).status_code == 200
    assert local_client(app).get("/health", headers={"host": "gpu1.lab.example"}).status_code == 200
    assert local_client(app).get("/health").status_code == 403
    assert main(["serve", "--no-ui", "--device", "cpu", "--host", "0.0.0.0"]) == 0
    assert local_client(started["app"]).get("/health", headers={"host": "10.1.2.3"}).status_code == 200


def test_serve_on_a_port_in_use_says_so_in_one_line(monkeypatch, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--no-ui", "--device", "cpu", "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and "address already in use" in err.lower() and "Traceback" not in err
    assert "Loading" not in err  # refused before the model loads


def test_serve_takes_its_api_key_from_the_environment(started, monkeypatch, capsys):
    monkeypatch.setenv("STEP1X_EDIT_API_KEY", "from-env")
    assert main(["serve", "--no-ui", "--device", "cpu"]) == 0
    client = local_client(started["app"])
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer from-env"}).status_code == 200
    assert "no API key" not in capsys.readouterr().err
