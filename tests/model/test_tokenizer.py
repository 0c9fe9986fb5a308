from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

from llmserve.model.embedded import embedded_model_path
from llmserve.model.gguf_reader import _FastGGUFReader, _read_metadata
from llmserve.model.tokenizer import Tokenizer

TRICKY = [
    "12345 3.14159",
    "a 123 b 4567890",
    "  two  spaces",
    "\n\n\t",
    "tabs\t\tand\r\nCRLF\n",
    " leading and trailing   ",
    "héllo wörld",
    "naïve café — “quotes”",
    "🙂👍🏽",
    "🇫🇷 flags 👨‍👩‍👧",
    "中文字符",
    "日本語のテキスト、句読点。",
    "I'm sure you're right, we'll see",
    "def f(x):\n    return x**2  # square\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i] << 2; }",
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|endoftext|>x<|im_end|>",
    "\u200b zero width",
    "",
    " ",
]

HI = [{"role": "user", "content": "Hi"}]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
]


def gguf_metadata(path: Path) -> dict:
    return _read_metadata(_FastGGUFReader(path))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_gguf_fields(gguf_metadata(embedded_model_path()))


@pytest.fixture(scope="module")
def hf_tok():
    transformers = pytest.importorskip("transformers")
    path = embedded_model_path()
    return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


# --- the embedded SmolLM2 vocabulary ---------------------------------------------------------------------


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip(tok, text) -> None:
    assert tok.decode(tok.encode(text), skip_special_tokens=False) == text


@pytest.mark.parametrize("text", ["x\ud800y", "\udfff", "ok \U0001f642 then \udbff"])
def test_lone_surrogates_are_value_errors(tok, text) -> None:
    # tokenizers itself raises a TypeError about its argument's type, which a caller cannot act on.
    with pytest.raises(ValueError, match="lone UTF-16 surrogate"):
        tok.encode(text)


def test_special_tokens(tok) -> None:
    assert tok.encode("<|im_start|><|im_end|>") == [1, 2]
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2 and tok.eos_token_ids == (2,)
    assert tok.bos_token == "<|im_start|>" and tok.eos_token == "<|im_end|>"
    assert tok.vocab_size == 49152
    assert {0, 1, 2} <= set(tok.all_special_ids)
    ids = tok.encode("<|im_start|>assistant\nHello<|im_end|>")
    assert tok.decode(ids) == "assistant\nHello"
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>assistant\nHello<|im_end|>"


def test_digits_are_split(tok) -> None:
    ids = tok.encode("12345")
    assert len(ids) == 5 and tok.decode(ids) == "12345"


def test_no_automatic_bos_for_byte_level(tok) -> None:
    assert tok.encode("hi") == tok.encode("hi", add_special_tokens=False)


def test_chat_template(tok) -> None:
    text = tok.apply_chat_template(HI)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert not tok.apply_chat_template(HI, add_generation_prompt=False).endswith("assistant\n")


def test_missing_chat_template(tok) -> None:
    bare = Tokenizer(tok.backend, bos_token_id=1, eos_token_id=2)
    with pytest.raises(ValueError, match="no chat template"):
        bare.apply_chat_template(HI)


def test_template_helpers(tok) -> None:
    template = ("{{ bos_token }}{{ messages[0]['content'] | tojson }}{{ strftime_now('%Y')[:2] }}"
                "{% if messages | length > 1 %}{{ raise_exception('one message only') }}{% endif %}")
    custom = Tokenizer(tok.backend, bos_token_id=1, eos_token_id=2, chat_template=template)
    assert custom.apply_chat_template([{"role": "user", "content": "é<b>"}]) == '<|im_start|>"é<b>"20'
    with pytest.raises(Exception, match="one message only"):
        custom.apply_chat_template(CONVERSATION)


def test_generation_tag_renders_its_body(tok) -> None:
    template = "{% for m in messages %}{% generation %}[{{ m['content'] }}]{% endgeneration %}{% endfor %}"
    custom = Tokenizer(tok.backend, chat_template=template)
    assert custom.apply_chat_template(CONVERSATION[:2]) == "[Be brief.][What is 2+2?]"


def test_folder_round_trip(tok, tmp_path) -> None:
    tok.backend.save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
              "chat_template": tok.chat_template}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    loaded = Tokenizer.from_folder(tmp_path)
    for text in TRICKY:
        assert loaded.encode(text) == tok.encode(text)
    assert loaded.bos_token_id == 1 and loaded.eos_token_ids == (2, 0)
    assert loaded.apply_chat_template(CONVERSATION) == tok.apply_chat_template(CONVERSATION)
    assert loaded.decode(tok.encode("<|im_end|>ok")) == "ok"


def test_save_then_from_folder(tok, tmp_path) -> None:
    tok.save(tmp_path)
    loaded = Tokenizer.from_folder(tmp_path)
    assert loaded.encode(TRICKY[0]) == tok.encode(TRICKY[0])
    assert (loaded.bos_token_id, loaded.eos_token_ids, loaded.chat_template) == (1, (2,), tok.chat_template)


def test_from_folder_add_bos_and_named_templates(tok, tmp_path) -> None:
    tok.backend.save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": "<|endoftext|>", "add_bos_token": True,
              "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = Tokenizer.from_folder(tmp_path)
    assert loaded.encode("hi") == [0, *tok.encode("hi")]
    assert loaded.encode("hi", add_special_tokens=False) == tok.encode("hi")
    assert loaded.apply_chat_template(HI) == "D"


def test_from_folder_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_folder(tmp_path)


# --- parity with transformers' GGUF tokenizer ----------------------------------------------------------


@pytest.mark.slow
def test_encode_decode_match_transformers(tok, hf_tok) -> None:
    for text in TRICKY:
        ids = tok.encode(text)
        assert ids == hf_tok.encode(text), text
        assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True), text
        assert tok.decode(ids, skip_special_tokens=False) == hf_tok.decode(ids), text


@pytest.mark.slow
@pytest.mark.parametrize("messages", [HI, CONVERSATION])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(tok, hf_tok, messages, add_generation_prompt) -> None:
    ours = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    theirs = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours == theirs


# --- SentencePiece-style ("llama") GGUF vocabularies ------------------------------------------------------

SP_PIECES = ["▁", "h", "e", "l", "o", "w", "r", "d", "a", "t", "▁h", "he", "ll", "lo", "▁he", "llo", "▁hel",
             "▁hello", "▁w", "or", "ld", "▁wor", "▁world", "▁a", "at", "▁t", "▁th", "the", "▁the", "er"]
SP_TEXTS = ["hello world", "the hello", " hello  world ", "héllo 🙂", "<|user|>hello</s>", "", "a\nb", "athe"]


def write_sentencepiece_gguf(path: Path) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *SP_PIECES, "<|user|>"]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(SP_PIECES))] + [0.0])
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(SP_PIECES) + [4])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template("{% for m in messages %}{{ bos_token }}{{ m['content'] }}{{ eos_token }}{% endfor %}")
    for key, value in {"block_count": 1, "context_length": 64, "embedding_length": 8,
                       "feed_forward_length": 16, "attention.head_count": 2}.items():
        writer.add_uint32(f"llama.{key}", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sp") / "sp.gguf"
    write_sentencepiece_gguf(path)
    return path


def test_sentencepiece_vocabulary(sp_path) -> None:
    sp = Tokenizer.from_gguf_fields(gguf_metadata(sp_path))
    ids = sp.encode("hello world")
    assert ids[0] == 1 and [sp.backend.id_to_token(i) for i in ids[1:]] == ["▁hello", "▁world"]
    assert sp.decode(ids) == "hello world"
    assert sp.decode(sp.encode("héllo 🙂")) == "héllo 🙂"  # byte fallback
    assert sp.encode("<|user|>", add_special_tokens=False) == [289]
    assert sp.apply_chat_template(HI) == "<s>Hi</s>"


@pytest.mark.slow
def test_sentencepiece_matches_transformers(sp_path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(sp_path.parent, gguf_file=sp_path.name)
    sp = Tokenizer.from_gguf_fields(gguf_metadata(sp_path))
    for text in SP_TEXTS:
        ids = sp.encode(text)
        assert ids == hf.encode(text), text
        assert sp.decode(ids) == hf.decode(ids, skip_special_tokens=True), text


def test_unsupported_tokenizer_model() -> None:
    with pytest.raises(ValueError, match="unsupported GGUF tokenizer model 't5'"):
        Tokenizer.from_gguf_fields({"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(ValueError, match="no tokenizer vocabulary"):
        Tokenizer.from_gguf_fields({"tokenizer.ggml.model": "gpt2"})
