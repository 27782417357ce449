"""Train the presets' shared byte-level BPE ``tokenizer.json`` on text every Python install has.

Corpus: the ``.py`` sources of this interpreter's standard library (code, docstrings and comments),
read in sorted path order up to ``--max-mb`` megabytes. Run from the repository root:

    python embedded_engine/model/presets/train_tokenizer.py --vocab-size 8192

and commit the resulting ``embedded_engine/model/presets/tokenizer.json`` (kept under 1 MB).
"""

from __future__ import annotations

import argparse
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
HERE = Path(__file__).resolve().parent


def corpus(max_bytes: int) -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts or "tests" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        total += len(text)
        yield text
        if total >= max_bytes:
            return


def train(vocab_size: int, max_bytes: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(max_bytes), trainer=trainer)
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--max-mb", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=HERE / "tokenizer.json")
    args = parser.parse_args()
    tok = train(args.vocab_size, int(args.max_mb * 1e6))
    tok.save(str(args.out))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, vocab {tok.get_vocab_size()})")


if __name__ == "__main__":
    main()
