"""Incremental text release: never a broken character, never a stop string, always a prefix."""

from __future__ import annotations

from kernel.llm.request import GenerationRequest, SamplingParams
from kernel.llm.sequence import Sequence

PIECES = {1: b"Hel", 2: b"lo", 3: b"\xe2\x98", 4: b"\x83", 5: b" EN", 6: b"D", 7: b"!", 8: b" E"}
EOS = frozenset({0})


class ByteTok:
    """Byte-level detokenizer like GPT-2's: a character may span tokens."""

    def decode(self, ids: list[int]) -> str:
        return b"".join(PIECES[i] for i in ids).decode("utf-8", errors="replace")


def seq(max_tokens: int = 50, stop: tuple[str, ...] = ()) -> Sequence:
    req = GenerationRequest(
        1,
        "a",
        ({"role": "user", "content": "x"},),
        SamplingParams(max_tokens=max_tokens, stop=stop),
    )
    return Sequence(req, [9, 9], max_tokens)


def feed(s: Sequence, tokens: list[int]) -> list[str]:
    return [s.append_token(t, EOS, ByteTok()) for t in tokens]


def test_multibyte_character_is_held_until_complete() -> None:
    s = seq()
    out = feed(s, [1, 2, 3, 4, 7, 0])
    assert out == ["Hel", "lo", "", "☃", "!", ""]
    assert s.finish_reason == "stop" and s.text == "Hello☃!"


def test_stop_string_is_cut_and_never_released() -> None:
    s = seq(stop=("END",))
    out = feed(s, [1, 5, 6, 7])
    assert "".join(out) == "Hel "
    assert s.finish_reason == "stop"
    assert all("E" not in piece for piece in out)


def test_held_tail_is_released_when_it_cannot_be_a_stop() -> None:
    s = seq(stop=("END",))
    out = feed(s, [1, 8, 7, 0])  # " E" could start "END" until "!" follows
    assert "".join(out) == "Hel E!"
    released = ""
    for piece in out:
        released += piece
        assert "Hel E!".startswith(released)


def test_length_limit_flushes_an_incomplete_character() -> None:
    s = seq(max_tokens=2)
    out = feed(s, [1, 3])
    assert s.finish_reason == "length"
    assert "".join(out) == "Hel\ufffd"  # the dangling byte is shown, not silently dropped
