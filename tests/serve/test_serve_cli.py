"""``step1x-edit serve``: builds the app for the chosen model and hands it to uvicorn; clear errors otherwise."""

import sys

import pytest
import uvicorn
from serve_clients import local_client

from step1x_edit.cli import main


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


def test_serve_mounts_the_web_ui_by_default(started):
    assert main(["serve", "--name", "mine", "--device", "cpu"]) == 0
    client = local_client(started["app"])
    assert client.get("/ui/").status_code == 200
    assert client.get("/health").json()["model"] == "mine"


def test_serve_without_the_serve_extra_says_how_to_install_it(started, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["serve"]) == 2
    assert "pip install 'step1x-edit[serve]'" in capsys.readouterr().err
    assert not started


@pytest.mark.parametrize(
    "flags", [["--max-pending", "0"], ["--max-size-level", "64"], ["--model", "/nonexistent/model"]]
)
def test_serve_refuses_bad_settings_before_listening(started, capsys, flags):
    assert main(["serve", "--no-ui", *flags]) == 2
    assert "error" in capsys.readouterr().err
    assert not started


def test_serve_takes_its_api_key_from_the_environment(started, monkeypatch, capsys):
    monkeypatch.setenv("STEP1X_EDIT_API_KEY", "from-env")
    assert main(["serve", "--no-ui", "--device", "cpu"]) == 0
    client = local_client(started["app"])
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer from-env"}).status_code == 200
    assert "no API key" not in capsys.readouterr().err
