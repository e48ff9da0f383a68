"""The protocol strings ship with the package and are hash-checked."""

import pytest

from step1x_edit.protocol import protocol_text


def test_prefix_matches_published_length_and_ends_with_user_prompt():
    prefix = protocol_text("step1x_v1_prefix.txt")
    assert len(prefix) == 1058
    assert prefix.endswith("User Prompt:")


def test_unknown_protocol_file_is_refused():
    with pytest.raises(KeyError):
        protocol_text("nope.txt")
