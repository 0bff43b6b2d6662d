"""Semantic search in store/ with the real embedding model (all-MiniLM-L6-v2): it finds
documents by meaning, when query and document share no content words."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.mounting import Mount, eventually, mounted

pytestmark = [pytest.mark.mount, pytest.mark.model, pytest.mark.timeout(600)]

DOCS = {
    "travel/lodging.txt": "Comfortable rooms and beds for the night, a walk from the terminals.",
    "travel/flights.txt": "Departures to Boston leave every hour; boarding closes early.",
    "food/bakery.txt": "Our croissants are laminated with cold butter and baked at dawn.",
    "pets/dogs.txt": "Puppies need short walks, fresh water and plenty of sleep.",
    "money/taxes.txt": "File your return before April to avoid penalties and interest.",
}


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    with mounted(tmp_path_factory.mktemp("minilm"), "tiny-random", "--embedder", "minilm") as m:
        for path, text in DOCS.items():
            os.makedirs(m.p("store", os.path.dirname(path)), exist_ok=True)
            m.write(f"store/{path}", text + "\n")
        eventually(
            lambda: m.json("sys/store")["pending_index"] == 0,
            timeout=300,
            what="embedding the documents",
        )
        yield m


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("hotel near the airport", "1-lodging.txt"),
        ("pastry shop", "1-bakery.txt"),
        ("caring for a young animal", "1-dogs.txt"),
        ("deadline for the tax office", "1-taxes.txt"),
    ],
)
def test_search_finds_by_meaning(minilm: Mount, query: str, expected: str) -> None:
    ranked = sorted(n for n in os.listdir(minilm.p("store/.search", query)) if n[0] != ".")
    assert ranked[0] == expected
    summary = minilm.read("store/.search", query, ".summary")
    assert summary.splitlines()[1].startswith("1. ")


def test_search_narrowed_to_a_subtree(minilm: Mount) -> None:
    ranked = [
        n for n in os.listdir(minilm.p("store/travel/.search/somewhere to sleep")) if n[0] != "."
    ]
    assert sorted(ranked)[0] == "1-lodging.txt"
    assert all(n.split("-", 1)[1] in ("lodging.txt", "flights.txt") for n in ranked)
