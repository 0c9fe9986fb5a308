from __future__ import annotations

from collections.abc import Sequence

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llmserve.engine.detokenizer import IncrementalDetokenizer
from llmserve.sampling_params import SamplingParams

TEXT = "Héllo wörld 😀 日本語 café! The quick brown fox 🦊 says «bonjour» naïvely."


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    # Byte-level BPE trained on plain ASCII-ish text: emoji, CJK and accents
    # are never merged, so they split across several byte tokens.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        "The quick brown fox jumps over the lazy dog.",
        "Hello world, hello there!",
        "Streaming text one token at a time, says the fox.",
    ]
    tok.train_from_iterator(corpus * 3, trainer)
    return tok


def _stream(
    tok: Tokenizer, ids: Sequence[int], params: SamplingParams, prompt: str = "Say:", chunk: int = 1
) -> tuple[list[str], str | None, IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(tok, tok.encode(prompt).ids, params)
    deltas: list[str] = []
    stop = None
    for start in range(0, len(ids), chunk):
        stop = detok.update(ids[start : start + chunk])
        deltas.append(detok.get_next_output_text(finished=stop is not None))
        if stop is not None:
            break
    else:
        deltas.append(detok.get_next_output_text(finished=True))
    return deltas, stop, detok


def test_split_multibyte_characters(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(TEXT).ids
    assert any(tokenizer.decode([i]).endswith("\ufffd") for i in ids)  # the test is meaningful
    deltas, stop, detok = _stream(tokenizer, ids, SamplingParams())
    assert stop is None
    assert "".join(deltas) == tokenizer.decode(ids) == TEXT
    assert detok.output_text == TEXT
    assert not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize("chunk", [2, 3, 7])
def test_multi_token_updates(tokenizer: Tokenizer, chunk: int) -> None:
    ids = tokenizer.encode(TEXT).ids
    deltas, _, _ = _stream(tokenizer, ids, SamplingParams(), chunk=chunk)
    assert "".join(deltas) == TEXT
    assert not any("\ufffd" in d for d in deltas)


def test_streams_incrementally(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Hello world there").ids
    deltas, _, _ = _stream(tokenizer, ids, SamplingParams())
    assert sum(1 for d in deltas if d) >= 3  # not all buffered to the end
    assert "".join(deltas) == "Hello world there"


def test_special_tokens_skipped_or_kept(tokenizer: Tokenizer) -> None:
    eos = tokenizer.token_to_id("<eos>")
    ids = tokenizer.encode("Hello").ids + [eos] + tokenizer.encode(" world").ids
    skipped, _, _ = _stream(tokenizer, ids, SamplingParams())
    kept, _, _ = _stream(tokenizer, ids, SamplingParams(skip_special_tokens=False))
    assert "".join(skipped) == tokenizer.decode(ids) == "Hello world"
    assert "".join(kept) == tokenizer.decode(ids, skip_special_tokens=False)
    assert "<eos>" in "".join(kept)


def test_stop_string_across_tokens_is_never_emitted(tokenizer: Tokenizer) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    ids = tokenizer.encode(text).ids
    stop_str = "fox jumps"
    # The stop string really spans several tokens.
    assert not any(stop_str in tokenizer.decode([i]) for i in ids)
    deltas, stop, detok = _stream(tokenizer, ids, SamplingParams(stop=["zzz", stop_str]))
    assert stop == stop_str and detok.matched_stop == stop_str
    # Deltas are append-only, so this also shows no prefix of the stop
    # string leaked out before the match was known.
    assert "".join(deltas) == detok.output_text == "The quick brown "


def test_include_stop_str_in_output(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Hello world, hello there!").ids
    params = SamplingParams(stop="world", include_stop_str_in_output=True)
    deltas, stop, _ = _stream(tokenizer, ids, params)
    assert stop == "world"
    assert "".join(deltas) == "Hello world"


def test_stop_in_first_token(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Hello world").ids
    first = tokenizer.decode(ids[:1])
    deltas, stop, _ = _stream(tokenizer, ids, SamplingParams(stop=first))
    assert stop == first
    assert "".join(deltas) == ""


def test_earliest_stop_wins_and_nothing_after_stop(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Hello world, hello there!").ids
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams(stop=["there", ", h"]))
    assert detok.update(ids) == ", h"
    assert detok.get_next_output_text(finished=False) == "Hello world"
    # Tokens after the stop are ignored, and nothing more comes out.
    assert detok.update(tokenizer.encode(" more text").ids) is None
    assert detok.get_next_output_text(finished=True) == ""
    assert detok.output_text == "Hello world"


def test_hold_back_then_flush_when_finished(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Hello world").ids
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams(stop="xyz!"))
    detok.update(ids)
    held = detok.get_next_output_text(finished=False)
    assert held == "Hello world"[:-3]  # longest stop - 1 chars held back
    assert detok.get_next_output_text(finished=True) == "rld"
    assert detok.output_text == "Hello world"


def test_incomplete_character_flushed_at_finish(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok 😀").ids[:-1]  # cut the emoji's last byte
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams())
    detok.update(ids)
    assert "\ufffd" not in detok.get_next_output_text(finished=False)
    rest = detok.get_next_output_text(finished=True)
    assert detok.output_text == tokenizer.decode(ids)
    assert rest.endswith("\ufffd")


def test_window_stays_small(tokenizer: Tokenizer) -> None:
    longest = 0

    class Spy:
        def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
            nonlocal longest
            longest = max(longest, len(token_ids))
            return tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    ids = tokenizer.encode("Hello world. " * 200).ids
    detok = IncrementalDetokenizer(Spy(), tokenizer.encode("prompt " * 50).ids, SamplingParams())
    for i in ids:
        detok.update([i])
        detok.get_next_output_text(finished=False)
    detok.get_next_output_text(finished=True)
    assert detok.output_text == "Hello world. " * 200
    assert longest <= 8


def test_sentencepiece_style_spacing() -> None:
    # Metaspace decoding drops the leading space of the first token decoded,
    # so decoding tokens one by one would glue words together.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        ["Hello world, hello there!", "The quick brown fox"] * 3,
        trainers.BpeTrainer(vocab_size=200, show_progress=False),
    )
    ids = tok.encode("Hello world there").ids
    assert "".join(tok.decode([i]) for i in ids) != "Hello world there"
    assert "".join(_stream(tok, ids, SamplingParams(), prompt="")[0]) == "Hello world there"
    # After a prompt the output is the continuation of the prompt's text.
    prompt_ids = tok.encode("The fox").ids
    expected = tok.decode(prompt_ids + ids)[len(tok.decode(prompt_ids)) :]
    assert (
        "".join(_stream(tok, ids, SamplingParams(), prompt="The fox")[0]) == expected == " Hello world there"
    )
