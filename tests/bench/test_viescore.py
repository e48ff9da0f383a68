"""Reading judge replies like the official parser, without ever guessing a score; prompts and image preparation."""

import pytest
from PIL import Image

from step1x_edit.bench.judges.base import UnusableReply
from step1x_edit.bench.viescore import (
    parse_scores,
    prepare_images,
    prompt_hashes,
    sample_scores,
    sc_prompt,
    source_column,
)
from step1x_edit.protocol import protocol_sha256, protocol_text


@pytest.mark.parametrize(
    ("reply", "scores"),
    [
        ('{\n"score" : [7, 9],\n"reasoning" : "The sky is now red."\n}', [7, 9]),
        ('Sure! ```json\n{"score": [3, 10], "reasoning": "ok"}\n``` hope this helps', [3, 10]),
        ('||V^=^V||\n{"score": [5, 6], "reasoning": "x"}\n||V^=^V||', [5, 6]),
        ("{score: [4, 8], reasoning: 'fine',}", [4, 8]),  # unquoted keys, single quotes, trailing comma
        ('{"score": 6, "reasoning": "scalar"}', [6]),
        ("[2, 9]", [2, 9]),
        (" 10 ", [10]),
        ('{"score": [7.0, 2.5]}', [7, 2.5]),
        ('{"score": [0, 10]}', [0, 10]),
    ],
)
def test_well_formed_and_repairable_replies_are_read(reply, scores):
    assert parse_scores(reply) == scores


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (None, "empty reply"),
        ("", "empty reply"),
        ("I'm sorry, but I can't help with evaluating these images.", "no score"),
        ('{"score": [7, oops', "no score"),
        ('{"reasoning": "no score key"}', 'no "score"'),
        ('{"score": [], "reasoning": "empty"}', "list of 1 to 2 scores"),
        ('{"score": [1, 2, 3]}', "list of 1 to 2 scores"),
        ('{"score": [11, 3], "reasoning": "out of range"}', r"score\[0\] must be a number from 0 to 10, got 11"),
        ('{"score": [-1, 3], "reasoning": "negative"}', r"score\[0\] .* got -1"),
        ('{"score": [7, 1e308]}', r"score\[1\] .* got 1e\+308"),
        ('{"score": [7, NaN]}', r"score\[1\] .* got nan"),
        ('{"score": [7, Infinity]}', r"score\[1\] .* got inf"),
        ('{"score": ["8", "7"], "reasoning": "strings"}', r"score\[0\] .* got '8'"),
        ('{"score": "7"}', r"score\[0\] .* got '7'"),
        ('{"score": [true, 5]}', r"score\[0\] .* got True"),
        ('{"score": [null, 5]}', r"score\[0\] .* got None"),
        ('{"score": [[7], 5]}', r"score\[0\] .* got \[7\]"),
        ('{"score": [' + "9" * 5000 + ", 5]}", "JSON cannot be read"),
        ("{" * 5000 + "}" * 5000, "JSON cannot be read"),
        ('{"score": [' + "7" * 400 + ", 5]}", r"score\[0\] .* got 7777.*\.\.\.$"),
        ("Score: 7 out of 10", "no score"),
        ("42", r"score\[0\] .* got 42"),
    ],
)
def test_unusable_replies_are_refused_with_a_reason_never_a_guess(reply, reason):
    with pytest.raises(UnusableReply, match=reason):
        parse_scores(reply)


def test_sample_scores_take_minimum_and_geometric_mean():
    assert sample_scores([9, 4], [1, 7]) == (4, 1, 2.0)


def test_prompts_are_the_hash_checked_protocol_texts():
    assert sc_prompt("把天空变成红色") == protocol_text("gedit_sc_prompt.txt").replace("<instruction>", "把天空变成红色")
    assert sc_prompt("x").endswith("Editing instruction: x\n")
    assert prompt_hashes() == {"sc": protocol_sha256("gedit_sc_prompt.txt"), "pq": protocol_sha256("gedit_pq_prompt.txt")}


def test_image_preparation_follows_both_official_scorers():
    source, raw, edited = Image.new("RGB", (416, 672)), Image.new("RGB", (1000, 1600)), Image.new("RGBA", (832, 1344))
    assert source_column("snapshot") == "input_image"
    snap_source, snap_edit = prepare_images(edited, source, "snapshot")
    assert snap_source.size == snap_edit.size == (416, 672) and snap_edit.mode == "RGB"
    assert source_column("upstream") == "input_image_raw"
    up_source, up_edit = prepare_images(edited, raw, "upstream")
    assert up_source.size == (404, 646)  # w = int(sqrt(512*512*r)), h = int(w / r), r = 1000/1600
    assert up_edit.size == (402, 649)
    with pytest.raises(ValueError, match="unknown image preparation"):
        prepare_images(edited, source, "bilinear")
