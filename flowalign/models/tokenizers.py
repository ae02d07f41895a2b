"""Tokenizers built offline from the BPE vocabulary that open-clip-torch ships.

The CLIP tokenizer is the real one (same vocabulary and merges as ``openai/clip-vit-large-patch14``);
the T5 tokenizer is a real sentencepiece-style Unigram tokenizer whose pieces are taken from that
vocabulary, so tiny T5/UMT5 text encoders can be tested without a download.
"""

from __future__ import annotations

import functools
import gzip
import math
from pathlib import Path

from transformers import CLIPTokenizer, T5Tokenizer

CLIP_VOCAB_SIZE = 49408


def _open_clip_bpe_path() -> Path:
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"open-clip-torch does not ship its BPE vocabulary at {path}")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-printable-character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The CLIP vocabulary (49408 entries) and BPE merges, rebuilt from open_clip's file."""
    with gzip.open(_open_clip_bpe_path(), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # the 48894 merges CLIP uses
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"rebuilt CLIP vocabulary has {len(tokens)} entries, expected {CLIP_VOCAB_SIZE}")
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """The real CLIP BPE tokenizer (vocab 49408; pad = eos = ``<|endoftext|>`` like SD3's)."""
    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m.split()) for m in merges], model_max_length=model_max_length)


def build_t5_tokenizer(vocab_size: int = 4000, model_max_length: int = 512) -> T5Tokenizer:
    """A Unigram (sentencepiece-style) T5 tokenizer over the most frequent CLIP words.

    Pieces are ``▁word`` for whole words and bare sub-words for the rest, scored by BPE rank, plus
    every printable ASCII character so any English prompt tokenizes without ``<unk>``.
    """
    if vocab_size < 200:
        raise ValueError(f"vocab_size must be >= 200 for a usable T5 tokenizer, got {vocab_size}")
    vocab, _ = clip_vocab_and_merges()
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    seen = {p for p, _ in pieces}
    for ch in (chr(c) for c in range(33, 127)):
        for piece in (ch, "▁" + ch):
            pieces.append((piece, -20.0))
            seen.add(piece)
    pieces.append(("▁", -15.0))
    seen.add("▁")
    for token, rank in vocab.items():
        if len(pieces) >= vocab_size:
            break
        if rank < 512 or token.startswith("<|"):
            continue  # byte symbols are covered by the ASCII pieces above
        piece = "▁" + token[: -len("</w>")] if token.endswith("</w>") else token
        if piece in seen or not piece.isprintable():
            continue
        seen.add(piece)
        pieces.append((piece, -math.log(rank)))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)
