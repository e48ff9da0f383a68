"""The v1.2 condition's pure pieces: quote and special-token splitting, and the vision tokens' latent-grid ids."""

import torch

from step1x_edit.models.mllm_v1p2 import split_quoted, vision_token_positions

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]


def test_quoted_characters_become_segments_only_past_the_prefix():
    text = 'ab "c" de "FG" h'
    segments, is_text = split_quoted(text, 7, [])
    assert segments == ['ab "c" de "', "F", "G", '" h'] and is_text == [False, True, True, False]


def test_curly_quotes_split_and_apostrophes_do_not():
    segments, is_text = split_quoted("x “AB” don't", 0, [])
    assert segments == ["x “", "A", "B", "” don't"] and is_text == [False, True, True, False]


def test_unclosed_quote_stays_plain_text():
    segments, is_text = split_quoted('say "hi there', 0, [])
    assert segments == ['say "hi there'] and is_text == [False]


def test_special_tokens_are_their_own_segments_and_a_leading_curly_quote_is_dropped():
    text = "<|im_start|>“OK” go<|im_end|>"
    segments, is_text = split_quoted(text, 0, SPECIALS)
    assert segments == ["<|im_start|>", "O", "K", "” go", "<|im_end|>"]
    assert is_text == [False, True, True, False, False]


def test_vision_tokens_land_on_the_packed_latent_grid():
    rows, cols, width, height = 13, 22, 112, 64  # a 364 x 616 px processor image of a 112 x 64 working image
    positions = vision_token_positions((rows, cols), (width, height))
    assert positions.shape == (rows * cols, 2)
    column = (28 * torch.arange(cols, dtype=torch.float64) + 13.5) * (width - 1) / (cols * 28 - 1) / 16 - 11 / 16
    row = (28 * torch.arange(rows, dtype=torch.float64) + 13.5) * (height - 1) / (rows * 28 - 1) / 16 - 11 / 16
    assert torch.allclose(positions[:cols, 1].double(), column, atol=1e-5)
    assert torch.allclose(positions[::cols, 0].double(), row, atol=1e-5)
