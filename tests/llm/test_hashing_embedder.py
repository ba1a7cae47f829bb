"""The lexical embedder: deterministic unit vectors where shared words and word pieces mean
closeness (and nothing more: it is not semantic)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from cpa_scheduler.llm.hashing_embedder import DEFAULT_DIMENSION, HashingEmbedder


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_vectors_are_unit_length_of_the_dimension() -> None:
    embedder = HashingEmbedder()
    vector = embedder.vector("Download the March invoice")
    assert len(vector) == DEFAULT_DIMENSION
    assert math.isclose(math.fsum(x * x for x in vector), 1.0)
    assert len(HashingEmbedder(7).vector("x")) == 7


def test_the_same_text_gives_the_same_vector_in_another_process() -> None:
    # CRC-32, not Python's per-process salted hash(): stored vectors stay comparable.
    code = (
        "from cpa_scheduler.llm.hashing_embedder import HashingEmbedder;"
        "print(HashingEmbedder().vector('März-Rechnung herunterladen'))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert other.strip() == str(HashingEmbedder().vector("März-Rechnung herunterladen"))


def test_shared_words_and_word_pieces_are_closer_than_unrelated_text() -> None:
    embed = HashingEmbedder().vector
    request = embed("download the March invoice from the supplier portal")
    paraphrase = embed("get March invoices off the supplier's portal")
    unrelated = embed("restart the database replica")
    assert cosine(request, paraphrase) > 0.4
    assert cosine(request, paraphrase) > cosine(request, unrelated) + 0.3


def test_case_and_unicode_forms_do_not_matter() -> None:
    embed = HashingEmbedder().vector
    assert embed("INVOICE Straße") == embed("invoice strasse".replace("ss", "ß"))
    assert embed("ﬁle") == embed("file")  # NFKC folds the ligature


def test_a_text_without_words_is_the_zero_vector() -> None:
    assert HashingEmbedder(4).vector(" ... !? ") == [0.0] * 4
    assert HashingEmbedder(4).vector("") == [0.0] * 4


def test_a_dimension_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        HashingEmbedder(0)


def test_the_model_name_changes_with_the_dimension() -> None:
    assert HashingEmbedder(64).model != HashingEmbedder(128).model
