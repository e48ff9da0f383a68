"""Exact protocol strings that must match the official Step1X-Edit and GEdit-Bench code byte for byte.

The text files beside this module are verified against their SHA-256 digests every time they are read,
so a corrupted or edited copy fails loudly instead of silently changing embeddings or judge scores.
"""

import hashlib
from functools import cache
from importlib import resources

# SHA-256 of the UTF-8 bytes of each file, as published with the protocol.
SHA256 = {
    "step1x_v1_prefix.txt": "40882ddca94ca6971c8d5713d42464afa31dad09236dfacafe3ee26b4b44aa82",
    "step1x_v1p2_prefix.txt": "2d7e7837b2aacef89f7ebf5d3241e0ca3e16a130e9f59805f3a6ede207822a72",
    # The v1.2 reasoning loop's messages (step1x_edit.reasoning): one system and one user text per stage.
    "step1x_v1p2_rewrite_system.txt": "bc13eaa419b56ca07027f22d924295f9241136990955b1b92b166ba1ce4b5273",
    "step1x_v1p2_rewrite_user.txt": "586f3067879b32b8f414de79f440c310b8b968771c24754eec284b83231b8add",
    "step1x_v1p2_describe_system.txt": "0a4c51bfc8b577a7e8f1fbc1398c1757ee2ee3e5ff2627239fd1c5b8dd1faae7",
    "step1x_v1p2_describe_user.txt": "fda5e505510c42bb0764f7a62ce929aa8dad2ef00364e8acb45c090b0fc06bd4",
    "step1x_v1p2_consistency_system.txt": "045139c40340846277bc597000e7acfd3df39d1a3ad04b1e5e8055d5654e59be",
    "step1x_v1p2_consistency_user.txt": "1485577084f8ee40ecda7194d4d2080ffb06502b3696b09bfacea392c544b0ff",
    "step1x_v1p2_reflect_system.txt": "98a650d2966a0b4365ddee7edd551c0b3f66d03839acb6e2c71e4d4f433f8334",
    "step1x_v1p2_reflect_user.txt": "a03c09d03bd372ec3d4f3b8ee5c5656c4f8e67d99e8ac464d7053a45e8d01d63",
    "step1x_v1p2_score_edit_system.txt": "823a7992906b603fa5ea23a8e5a2e4a8e075c5c1fa4dcc68e68000265b2abac3",
    "step1x_v1p2_score_edit_user.txt": "ead66084989cb3697bb4abf6717397201e8caffb3cdf961bb76a4a2403d4b749",
    "step1x_v1p2_score_quality_system.txt": "fdef398702c195d957872ded5cf4abc8e936def4e00f17f470279c1789054e2d",
    "step1x_v1p2_score_quality_user.txt": "896e7320ff3b429ddb838d2330c00304f838d361c11fddce9dbef1b75edd6661",
    "gedit_sc_prompt.txt": "8f529562c2f89f8db51a3f7cc4d487686f676909c21010b67b0e65ec78150de5",
    "gedit_pq_prompt.txt": "2473ff2c7406e06545c5c039ceb039ff2604ebacf150868a48f0bf07c9e733b0",
}


@cache
def protocol_text(name: str) -> str:
    """Return the protocol string stored in ``name`` after checking its SHA-256 digest."""
    if name not in SHA256:
        raise KeyError(f"unknown protocol file {name!r}; known: {sorted(SHA256)}")
    data = resources.files(__package__).joinpath(name).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256[name]:
        raise RuntimeError(
            f"protocol file {name} has SHA-256 {digest}, expected {SHA256[name]}; the installed copy is corrupted"
        )
    return data.decode("utf-8")


def protocol_sha256(name: str) -> str:
    """The expected SHA-256 digest of a protocol file (recorded with judgements and embeddings)."""
    return SHA256[name]
