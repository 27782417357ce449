from __future__ import annotations

import json

import pytest

from bottleneck_map.embedded_engine.model.loader import PRESETS_DIR
from bottleneck_map.embedded_engine.model.tokenizer import DEFAULT_CHAT_TEMPLATE, Tokenizer

TEXT = "Paged attention reads keys through block tables; naïve café — 東京 🚀\n    return x"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(PRESETS_DIR, eos_token_ids=(0, 2))


def test_shared_preset_tokenizer_is_a_small_real_bpe(tok):
    assert tok.vocab_size == 8192
    assert (PRESETS_DIR / "tokenizer.json").stat().st_size < 1_000_000
    ids = tok.encode("def __init__(self):\n    return None")
    assert len(ids) < 12  # merges learned from Python sources compress Python well
    assert tok.decode(ids) == "def __init__(self):\n    return None"


def test_round_trip_of_any_unicode(tok):
    assert tok.decode(tok.encode(TEXT)) == TEXT


def test_matches_transformers_fast_tokenizer(tok):
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(PRESETS_DIR / "tokenizer.json"))
    assert tok.encode(TEXT) == fast.encode(TEXT)


def test_incremental_detokenizer_streams_the_same_text(tok):
    detok = tok.detokenizer()
    deltas = [detok.push(i) for i in tok.encode(TEXT)]
    assert "".join(deltas) == detok.text == TEXT
    assert "\ufffd" not in "".join(deltas)  # split multi-byte characters are held back, never emitted broken


def test_detokenizer_skips_special_tokens(tok):
    detok = tok.detokenizer()
    ids = tok.encode("hi") + [2]
    assert "".join(detok.push(i) for i in ids) == "hi"


def test_chat_template_from_tokenizer_config(tok, tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = tok.apply_chat_template(messages)
    assert (
        rendered == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    (tmp_path / "tokenizer.json").write_text((PRESETS_DIR / "tokenizer.json").read_text())
    template = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "bos_token": "<s>"}))
    assert Tokenizer.from_dir(tmp_path).apply_chat_template(messages) == "<s>[system] Be brief.\n[user] Hi\n"


def test_default_template_without_tokenizer_config(tmp_path):
    (tmp_path / "tokenizer.json").write_text((PRESETS_DIR / "tokenizer.json").read_text())
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=False) == (
        "<|im_start|>user\nx<|im_end|>\n"
    )


def test_chat_template_environment_matches_transformers():
    """Loop controls, ``raise_exception`` and ``strftime_now`` are available, as in transformers."""
    tok = Tokenizer.from_dir(PRESETS_DIR)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}{% continue %}{% endif %}"
        "[{{ m['content'] | trim }}]{% endfor %}{{ strftime_now('%Y') | length }}"
    )
    assert tok.apply_chat_template([{"role": "user", "content": " a "}, {"role": "tool", "content": "b"}]) == "[a]4"
    tok.chat_template = "{{ raise_exception('no system role') }}"
    with pytest.raises(ValueError, match="no system role"):
        tok.apply_chat_template([])


def test_chat_template_of_a_transformers_saved_checkpoint(tmp_path):
    """transformers 5 writes the template to ``chat_template.jinja``, not to tokenizer_config.json."""
    transformers = pytest.importorskip("transformers")
    template = (
        "{{ bos_token }}{% for m in messages %}<<{{ m['role'] | upper }}>> {{ m['content'] }}{{ eos_token }}"
        "{% endfor %}{% if add_generation_prompt %}<<ASSISTANT>>{% endif %}"
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(PRESETS_DIR / "tokenizer.json"), eos_token="<|im_end|>", bos_token="<|endoftext|>"
    )
    fast.chat_template = template
    fast.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").is_file()
    assert "chat_template" not in json.loads((tmp_path / "tokenizer_config.json").read_text())
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    ours = Tokenizer.from_dir(tmp_path).apply_chat_template(messages)
    assert ours == fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.startswith("<|endoftext|><<SYSTEM>> Be brief.<|im_end|>") and "<|im_start|>" not in ours


def test_chat_template_jinja_wins_over_tokenizer_config(tmp_path):
    (tmp_path / "tokenizer.json").write_text((PRESETS_DIR / "tokenizer.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "config"}))
    (tmp_path / "chat_template.jinja").write_text("jinja {{ messages | length }}", encoding="utf-8")
    assert Tokenizer.from_dir(tmp_path).apply_chat_template([{"role": "user", "content": "x"}]) == "jinja 1"
