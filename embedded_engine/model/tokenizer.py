"""Tokenizer: a ``tokenizers`` ``tokenizer.json`` plus the checkpoint's chat template
(``chat_template.jinja`` as transformers 5 saves it, else ``tokenizer_config.json``'s ``chat_template``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers.decoders import DecodeStream

# Used when the checkpoint has no chat template: ChatML, as Qwen2 and many others use.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class IncrementalDetokenizer:
    """Turns one sequence's generated token ids into text deltas as they arrive (for streaming).

    A delta is withheld while the tokens so far end inside a multi-byte character.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer.backend
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._parts: list[str] = []

    def push(self, token_id: int) -> str:
        """Feed one token; return the new text it completes ("" when none yet)."""
        delta = self._stream.step(self._tok, int(token_id)) or ""
        if delta:
            self._parts.append(delta)
        return delta

    @property
    def text(self) -> str:
        return "".join(self._parts)


class Tokenizer:
    def __init__(
        self,
        backend: HFTokenizer,
        eos_token_ids: Sequence[int] = (),
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.eos_token_ids = tuple(eos_token_ids)
        self.chat_template = chat_template or DEFAULT_CHAT_TEMPLATE
        self.special_tokens = dict(special_tokens or {})
        self._compiled = None
        self._max_token_chars: int | None = None

    @classmethod
    def from_dir(cls, path: Path, eos_token_ids: Sequence[int] = ()) -> Tokenizer:
        """Load ``tokenizer.json`` (required), ``tokenizer_config.json`` and ``chat_template.jinja``
        (optional) from ``path``; as in transformers, the ``.jinja`` file wins over the config's template."""
        backend = HFTokenizer.from_file(str(path / "tokenizer.json"))
        config_path = path / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        jinja_path = path / "chat_template.jinja"
        template = jinja_path.read_text(encoding="utf-8") if jinja_path.is_file() else config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        specials = {}
        for key, value in config.items():
            if key.endswith("_token") and isinstance(value, dict):  # older AddedToken form
                value = value.get("content")
            if key.endswith("_token") and isinstance(value, str):
                specials[key] = value
        return cls(backend, eos_token_ids, template, specials)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    @property
    def max_token_chars(self) -> int:
        """The longest vocabulary entry in characters: an upper bound on the text one token covers
        (byte-level and SentencePiece vocabularies spell each token out in full), so a text longer
        than ``n * max_token_chars`` cannot encode to ``n`` tokens or fewer."""
        if self._max_token_chars is None:
            vocab = self.backend.get_vocab(with_added_tokens=True)
            self._max_token_chars = max((len(t) for t in vocab), default=1)
        return self._max_token_chars

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, skip_special_tokens)

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """Render chat ``messages`` ({"role", "content"}) with the checkpoint's Jinja template."""
        if self._compiled is None or self._compiled[0] != self.chat_template:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            # The same environment transformers renders chat templates in.
            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
            )
            env.globals["raise_exception"] = _raise
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._compiled = (self.chat_template, env.from_string(self.chat_template))
        return self._compiled[1].render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **self.special_tokens
        )


def _raise(message: str) -> None:
    raise ValueError(message)
