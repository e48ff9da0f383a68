"""The HTTP API on Ray Serve replicas answers as the single-process server does (one matrix of requests runs
against both), spreads edits over its replicas, batches requests that share a working size and refuses with 503
past its bound. The Ray half is in the optional group (``pytest -m ray``)."""

import base64
import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from serve_clients import local_client

from step1x_edit.cli import main
from step1x_edit.serve.http import create_app
from step1x_edit.serve.service import EditService, ServeLimits

INSTRUCTION = "Make the red circle green."
KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = {"max_upload_bytes": 100_000}

# (name, method, path, form fields, image bytes or None for the example, headers, status, what the answer holds)
MATRIX = [
    ("edit", "POST", "/v1/edit", {"instruction": INSTRUCTION, "seed": "7"}, None, AUTH, 200, "x-seed=7"),
    ("openai shape", "POST", "/v1/images/edits", {"prompt": INSTRUCTION, "n": "2", "seed": "5"}, None, AUTH, 200,
     "seeds=5,6"),
    ("health without a key", "GET", "/health", None, None, {}, 200, '"model":"demo"'),
    ("models", "GET", "/v1/models", None, None, AUTH, 200, '"id":"demo"'),
    ("empty instruction", "POST", "/v1/edit", {"instruction": "  "}, None, AUTH, 400, "instruction is empty"),
    ("steps out of range", "POST", "/v1/edit", {"instruction": INSTRUCTION, "num_inference_steps": "0"}, None, AUTH,
     400, "num_inference_steps must be an integer between 1 and 50"),
    ("steps not a number", "POST", "/v1/edit", {"instruction": INSTRUCTION, "num_inference_steps": "many"}, None,
     AUTH, 422, "num_inference_steps"),
    ("size over the limit", "POST", "/v1/edit", {"instruction": INSTRUCTION, "size_level": "100000"}, None, AUTH, 400,
     "size_level must be an integer between 16 and 96"),
    ("unknown output format", "POST", "/v1/edit", {"instruction": INSTRUCTION, "output_format": "gif"}, None, AUTH,
     400, "output_format"),
    ("not an image", "POST", "/v1/edit", {"instruction": INSTRUCTION}, b"hello, not a picture", AUTH, 400,
     "not an image"),
    ("url responses", "POST", "/v1/images/edits", {"prompt": INSTRUCTION, "response_format": "url"}, None, AUTH, 400,
     "b64_json"),
    ("too many images", "POST", "/v1/images/edits", {"prompt": INSTRUCTION, "n": "9"}, None, AUTH, 400,
     "n must be an integer between 1 and 4"),
    ("another model", "POST", "/v1/images/edits", {"prompt": INSTRUCTION, "model": "gpt-image-1"}, None, AUTH, 400,
     "serves 'demo'"),
    ("upload over the limit", "POST", "/v1/edit", {"instruction": INSTRUCTION}, b"\0" * 150_000, AUTH, 413,
     "request_too_large"),
    ("no key", "POST", "/v1/edit", {"instruction": INSTRUCTION}, None, {}, 401, "authentication_error"),
    ("wrong key", "GET", "/v1/models", None, None, {"Authorization": "Bearer guess"}, 401, "a valid API key"),
    ("another host name", "GET", "/health", None, None, {"host": "attacker.example"}, 403, "forbidden_host"),
    ("another site's page", "POST", "/v1/edit", {"instruction": INSTRUCTION}, None,
     {**AUTH, "origin": "https://attacker.example"}, 403, "forbidden_origin"),
]


def _send(client, example, method, path, fields, image, headers):
    if method == "GET":
        return client.get(path, headers=headers)
    data = example.read_bytes() if image is None else image
    return client.post(path, data=fields, files={"image": ("source.png", data, "image/png")}, headers=headers)


def _holds(response, expected: str) -> bool:
    if expected.startswith("x-seed="):
        size = Image.open(io.BytesIO(response.content)).size
        return response.headers["x-seed"] == expected[7:] and size == (256, 256)
    if expected.startswith("seeds="):
        data = response.json()["data"]
        pictures = [Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))) for item in data]
        return ",".join(str(item["seed"]) for item in data) == expected[6:] and all(p.size == (256, 256)
                                                                                     for p in pictures)
    return expected in response.text.replace(" ", "") or expected in response.text


@pytest.fixture(scope="module")
def ray_serve():
    """A local Ray with Serve listening on a free port; yields a function that deploys an app and returns a
    client for it."""
    ray = pytest.importorskip("ray")
    from ray import serve

    from step1x_edit.batch.editor import ModelSpec
    from step1x_edit.serve.ray_serve import ReplicaConfig, Scaling, deployment

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    def deploy(scaling: Scaling, **config) -> httpx.Client:
        limits = ServeLimits(**config.pop("limits", {}))
        app = deployment(ReplicaConfig(ModelSpec(device="cpu"), limits, name="demo", **config), scaling, ray)
        serve.run(app, name="step1x-edit", route_prefix="/")
        return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)

    yield deploy
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_api(ray_serve):
    from step1x_edit.serve.ray_serve import Scaling

    return ray_serve(Scaling(replicas=1, cpus=0.5), limits=LIMITS, api_key=KEY, batch_wait_s=0.3)


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def api(request, demo_pipeline):
    """The same API, from one process (the default engine) or from Ray Serve replicas."""
    if request.param == "local":
        return local_client(create_app(EditService(demo_pipeline, ServeLimits(**LIMITS), name="demo"), api_key=KEY))
    return request.getfixturevalue("ray_api")


@pytest.mark.parametrize(("name", "method", "path", "fields", "image", "headers", "status", "expected"), MATRIX,
                         ids=[case[0] for case in MATRIX])
def test_each_engine_answers_the_api_matrix_alike(api, example, name, method, path, fields, image, headers, status,
                                                  expected):
    response = _send(api, example, method, path, fields, image, headers)
    assert response.status_code == status, response.text
    assert _holds(response, expected), response.text[:300]


def _edits_at_once(client, example, count: int, stagger: float = 0.0, **fields) -> list[httpx.Response]:
    """``count`` edit requests sent at the same moment (or ``stagger`` seconds apart)."""
    start = threading.Barrier(count)

    def post(seed):
        start.wait()
        time.sleep(seed * stagger)
        return client.post("/v1/edit", files={"image": ("a.png", example.read_bytes(), "image/png")},
                           data={"instruction": INSTRUCTION, "seed": str(seed), **fields}, headers=AUTH)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(post, range(count)))


@pytest.mark.ray
def test_requests_that_share_a_working_size_are_edited_in_one_batch(ray_api, example):
    first, second = _edits_at_once(ray_api, example, 2)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-replica"] == second.headers["x-replica"]
    assert first.headers["x-edit-seconds"] == second.headers["x-edit-seconds"]  # one pipeline call
    assert first.content != second.content  # each from its own seed


@pytest.mark.ray
def test_two_replicas_edit_at_once_and_past_their_places_answer_503(ray_serve, example):
    from step1x_edit.serve.ray_serve import Scaling

    client = ray_serve(Scaling(replicas=2, cpus=0.5), limits={"max_pending": 1})
    slow = {"num_inference_steps": "40"}
    # A moment apart, so that Serve's router has counted the first edit when it places the second (requests that
    # arrive at the same instant may both go to the replica it saw idle).
    pair = _edits_at_once(client, example, 2, stagger=0.3, **slow)
    assert [response.status_code for response in pair] == [200, 200]
    assert pair[0].headers["x-replica"] != pair[1].headers["x-replica"]
    crowd = _edits_at_once(client, example, 5, **slow)
    refused = [response for response in crowd if response.status_code == 503]
    assert any(response.status_code == 200 for response in crowd) and refused
    assert all(response.json()["error"]["type"] == "server_busy" and response.headers["retry-after"].isdigit()
               for response in refused)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--replicas", "2"], "--replicas applies to --engine ray only"),
        (["--engine", "ray"], "--engine ray serves the HTTP API only; add --no-ui"),
        (["--engine", "ray", "--no-ui", "--parallel", "cfg"], "--parallel applies to step1x-edit edit under torchrun"),
    ],
)
def test_serve_refuses_the_other_engines_options(capsys, flags, message):
    assert main(["serve", *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.ray
def test_the_serve_config_file_builds_the_deployment_it_describes(monkeypatch):
    yaml = pytest.importorskip("yaml")
    from step1x_edit.errors import Step1XEditError
    from step1x_edit.serve.ray_serve import build_app

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "ray-serve.yaml").read_text())
    (application,) = config["applications"]
    assert application["import_path"] == "step1x_edit.serve.ray_serve:build_app"
    monkeypatch.setenv("STEP1X_EDIT_API_KEY", KEY)
    deployment = build_app(application["args"])._bound_deployment
    assert deployment.max_ongoing_requests > 8
    assert deployment.ray_actor_options["num_gpus"] == 1
    assert deployment._deployment_config.autoscaling_config.max_replicas == 8
    monkeypatch.delenv("STEP1X_EDIT_API_KEY")
    with pytest.raises(Step1XEditError, match="STEP1X_EDIT_API_KEY"):
        build_app(application["args"])
    with pytest.raises(Step1XEditError, match=r"unknown Ray Serve args \['replica'\]"):
        build_app({"replica": 2})
    with pytest.raises(Step1XEditError, match="max_pending has the wrong type"):
        build_app({"max_pending": "8"})
