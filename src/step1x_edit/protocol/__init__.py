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
