"""Property-based checks of the HTTP API: whatever a client puts in the numeric form fields, the answer is an
edit or a JSON error that names the field, never a server error."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_clients import local_client

from step1x_edit.serve.http import create_app
from step1x_edit.serve.service import EditService

INSTRUCTION = "Make the red circle green."
FIELDS = ["num_inference_steps", "guidance_scale", "size_level", "strength", "seed"]

numbers_as_text = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e308", "1e400", "-0", "0x10", "", " ", "1_000",
                     "true", "null", "4.5", "１２", "\u0000", "9" * 400]),
    st.text(max_size=20),
)


@pytest.fixture(scope="module")
def client(demo_pipeline):
    return local_client(create_app(EditService(demo_pipeline, name="demo")))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=numbers_as_text)
def test_any_value_in_a_numeric_field_gets_an_edit_or_a_json_error_naming_it(client, example, field, value):
    response = client.post("/v1/edit", data={"instruction": INSTRUCTION, field: value},
                           files={"image": ("a.png", example.read_bytes(), "image/png")})
    assert response.status_code in (200, 400, 422), (field, value, response.status_code, response.text)
    if response.status_code != 200:
        error = response.json()["error"]
        assert field in error["message"] and "\n" not in error["message"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(instruction=st.text(max_size=200))
def test_any_instruction_gets_an_edit_or_a_json_error(client, example, instruction):
    response = client.post("/v1/edit", data={"instruction": instruction},
                           files={"image": ("a.png", example.read_bytes(), "image/png")})
    assert response.status_code in (200, 400, 422), (instruction, response.text)
