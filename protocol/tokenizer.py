"""Byte-level BPE tokenizer: training, loading, hashing and batch encoding.

Every node must turn the same text into the same token ids, so the tokenizer trained on the
default corpus is shipped as a JSON asset instead of being retrained per node (training is
deterministic for a given library version, but a shipped file removes the question). Its
``tokenizer_hash`` is recorded in every page-store manifest and in the store's cache key, so
pages tokenized with a different tokenizer are never mixed up with the expected ones.

Byte-level means any UTF-8 input is representable (no unknown token); ``EOS`` is the only
special token and separates documents in the page store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = [
    "encode_documents",
    "eos_id",
    "load_tokenizer",
    "save_tokenizer",
    "tokenizer_hash",
    "train_tokenizer",
]

EOS = "<|endoftext|>"
ASSETS = Path(__file__).with_name("assets")
DEFAULT_VOCAB_SIZE = 4096
DEFAULT_TOKENIZER_PATH = ASSETS / f"tokenizer-kjv-{DEFAULT_VOCAB_SIZE}.json"


def _empty_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE with ``vocab_size`` entries (the 256 byte symbols and EOS included)."""
    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size must exceed the 256 byte symbols plus EOS, got {vocab_size}")
    tok = _empty_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],  # id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """Load a tokenizer JSON; the shipped default-corpus tokenizer when ``path`` is None."""
    path = Path(path) if path is not None else DEFAULT_TOKENIZER_PATH
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    tok = Tokenizer.from_file(str(path))
    eos_id(tok)  # fail early on a tokenizer without the document separator
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    Path(path).write_text(tok.to_str(), encoding="utf-8")


def tokenizer_hash(tok: Tokenizer) -> str:
    """sha256 (hex) of the tokenizer's canonical JSON serialisation."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()


def eos_id(tok: Tokenizer) -> int:
    token_id = tok.token_to_id(EOS)
    if token_id is None:
        raise ValueError(f"tokenizer has no {EOS!r} token")
    return token_id


def encode_documents(tok: Tokenizer, texts: Iterable[str], batch_docs: int = 256) -> Iterator[np.ndarray]:
    """Token ids of each document followed by EOS, as int64 arrays, in input order.

    Documents are encoded in batches with the Rust ``encode_batch`` (parallel across cores);
    output order is that of the input regardless of scheduling.
    """
    eos = eos_id(tok)
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) >= batch_docs:
            yield from _encode_batch(tok, batch, eos)
            batch = []
    if batch:
        yield from _encode_batch(tok, batch, eos)


def _encode_batch(tok: Tokenizer, batch: list[str], eos: int) -> Iterator[np.ndarray]:
    for enc in tok.encode_batch(batch, add_special_tokens=False):
        ids = np.empty(len(enc.ids) + 1, dtype=np.int64)
        ids[:-1] = enc.ids
        ids[-1] = eos
        yield ids
