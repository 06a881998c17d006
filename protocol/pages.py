"""The page store and deterministic page assignment: which tokens a miner trains on, and which a
validator evaluates on.

Layout. Documents are tokenized, each followed by EOS, and concatenated into one token stream.
A *page* is ``page_seqs * seq_len`` contiguous tokens of that stream, viewed as ``page_seqs`` rows
of ``seq_len`` tokens; ``Model.loss`` shifts inside each row, so rows need no extra target token.
Pages are the unit of assignment. The stream is cut into raw little-endian ``.bin`` shards of
``shard_pages`` whole pages each (uint16 when the vocabulary fits, else uint32), memory-mapped
for reading; a partial page at the end is dropped. ``manifest.json`` records the tokenizer hash,
the geometry and each shard's size and sha256, so ``PageStore.open`` can prove the local files
are the agreed ones; ``Manifest.digest`` names a whole store in one hash.

Held-out pages. The last ~5% of pages (``heldout_count``) are never assigned to miners nor used
as random evaluation pages; they measure the global model on data no miner trained on.

Assignment. ``assigned_pages`` is a pure function of (public seed, window, hotkey), so any
validator recomputes exactly what a miner had to train on. It is keyed by hotkey, not uid,
because uids are recycled on deregistration. ``random_eval_pages`` and ``control_pages`` are keyed
by the window's beacon instead (a block hash nobody knows before the uploads are due,
``protocol.windows.beacon_block``), so miners cannot know in advance which pages they will be
scored on (and so cannot overfit them), while every validator scores on the same ones and anyone
can recompute the choice from the chain. All of them sample from numpy's
PCG64 *raw* stream (stable across numpy versions by policy) with our own rejection sampling and
Fisher-Yates, never ``Generator.choice``, whose algorithm numpy may change between releases.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from protocol.hparams import DataParams
from protocol.tokenizer import encode_documents, eos_id, load_tokenizer, save_tokenizer, tokenizer_hash

__all__ = [
    "Manifest",
    "PageStore",
    "PageStoreError",
    "ShardInfo",
    "assigned_pages",
    "build_page_store",
    "control_pages",
    "default_store",
    "default_store_key",
    "derive_seed",
    "heldout_count",
    "random_eval_pages",
    "training_count",
    "window_secret",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
HELDOUT_FRACTION = 0.05
DEFAULT_SHARD_PAGES = 1024
MIN_SECRET_BYTES = 16


class PageStoreError(ValueError):
    """A page store is missing, malformed, or does not match its manifest."""


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ShardInfo:
    file: str
    tokens: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    tokenizer_hash: str
    vocab_size: int
    eos_id: int
    dtype: str  # "uint16" or "uint32", little-endian on disk
    seq_len: int
    page_seqs: int
    shard_pages: int
    num_pages: int
    heldout_pages: int
    num_tokens: int  # tokens in the stream, including the dropped partial page
    shards: tuple[ShardInfo, ...]
    source: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def page_tokens(self) -> int:
        return self.seq_len * self.page_seqs

    @property
    def train_pages(self) -> int:
        return self.num_pages - self.heldout_pages

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @property
    def digest(self) -> str:
        """sha256 of the canonical manifest: one name for the exact token content of the store."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str, origin: str = "manifest") -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format_version") != FORMAT_VERSION:
                raise PageStoreError(
                    f"{origin}: format_version {data.get('format_version')!r}, this build reads {FORMAT_VERSION}"
                )
            data["shards"] = tuple(ShardInfo(**s) for s in data["shards"])
            manifest = cls(**data)
        except PageStoreError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise PageStoreError(f"{origin} is malformed: {exc}") from None
        _check_manifest(manifest, origin)
        return manifest


_INT_FIELDS = (
    "vocab_size",
    "eos_id",
    "seq_len",
    "page_seqs",
    "shard_pages",
    "num_pages",
    "heldout_pages",
    "num_tokens",
)


def _check_manifest(m: Manifest, origin: str) -> None:
    wrong = [f for f in _INT_FIELDS if type(getattr(m, f)) is not int]
    wrong += [
        f"shards[{i}]" for i, s in enumerate(m.shards) if type(s.tokens) is not int or type(s.file) is not str
    ]
    if wrong:
        raise PageStoreError(f"{origin}: fields of the wrong type: {', '.join(wrong)}")
    if m.dtype not in ("uint16", "uint32"):
        raise PageStoreError(f"{origin}: unsupported dtype {m.dtype!r}")
    if min(m.seq_len, m.page_seqs, m.shard_pages, m.num_pages) < 1:
        raise PageStoreError(f"{origin}: seq_len, page_seqs, shard_pages and num_pages must be positive")
    if m.heldout_pages != heldout_count(m.num_pages):
        raise PageStoreError(f"{origin}: heldout_pages {m.heldout_pages} != {heldout_count(m.num_pages)}")
    if sum(s.tokens for s in m.shards) != m.num_pages * m.page_tokens:
        raise PageStoreError(f"{origin}: shard token counts do not add up to num_pages * page tokens")
    for i, s in enumerate(m.shards):
        last = i == len(m.shards) - 1
        expected = m.shard_pages * m.page_tokens
        if (s.tokens != expected and not last) or s.tokens > expected or s.tokens % m.page_tokens:
            raise PageStoreError(
                f"{origin}: shard {s.file} has {s.tokens} tokens, not whole pages of the layout"
            )
        if Path(s.file).name != s.file or s.file.startswith("."):
            raise PageStoreError(f"{origin}: shard file name {s.file!r} is not a plain file name")


def heldout_count(num_pages: int) -> int:
    """Pages at the end of the store held out from training and random evaluation (~5%)."""
    if num_pages < 2:
        return 0
    return max(1, math.ceil(num_pages * HELDOUT_FRACTION))


def training_count(num_pages: int) -> int:
    """Pages [0, training_count) are the ones miners are assigned and validators sample from."""
    return num_pages - heldout_count(num_pages)


def _np_dtype(name: str) -> np.dtype:
    return np.dtype("<u2" if name == "uint16" else "<u4")


# --------------------------------------------------------------------------- building


def build_page_store(
    texts: Iterable[str],
    tokenizer: Tokenizer,
    out_dir: str | Path,
    *,
    seq_len: int,
    page_seqs: int,
    shard_pages: int = DEFAULT_SHARD_PAGES,
    source: str = "",
) -> Manifest:
    """Tokenize ``texts`` (one document each, EOS-separated) into a new store at ``out_dir``.

    The store is written to a temporary sibling directory and renamed into place, so readers
    never see a half-written store. Raises ``FileExistsError`` if ``out_dir`` already exists and
    is not empty (for instance because a concurrent builder finished first).
    """
    if min(seq_len, page_seqs, shard_pages) < 1:
        raise ValueError("seq_len, page_seqs and shard_pages must be positive")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"page store directory already exists and is not empty: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest = _write_store(texts, tokenizer, tmp, seq_len, page_seqs, shard_pages, source)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _publish(tmp: Path, out: Path) -> None:
    """Atomically move the finished store into place; losing a race is a FileExistsError."""
    try:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # an empty placeholder (e.g. made by the caller) is fine to replace
        os.rename(tmp, out)
    except OSError as exc:
        if out.exists():
            raise FileExistsError(f"page store directory already exists: {out}") from exc
        raise


class _ShardWriter:
    """Accumulates the token stream and writes full shards as they fill up."""

    def __init__(self, root: Path, dtype: np.dtype, shard_tokens: int) -> None:
        self.root, self.dtype, self.shard_tokens = root, dtype, shard_tokens
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.total_tokens = 0
        self.shards: list[ShardInfo] = []

    def add(self, ids: np.ndarray) -> None:
        self.pending.append(ids)
        self.pending_tokens += ids.size
        self.total_tokens += ids.size
        while self.pending_tokens >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def finish(self, page_tokens: int) -> None:
        """Write the last, partial shard (whole pages only; the partial page is dropped)."""
        whole = self.pending_tokens - self.pending_tokens % page_tokens
        if whole:
            self._flush(whole)

    def _flush(self, n: int) -> None:
        stream = np.concatenate(self.pending)
        chunk, rest = stream[:n], stream[n:]
        self.pending, self.pending_tokens = [rest], rest.size
        data = chunk.astype(self.dtype).tobytes()
        name = f"shard-{len(self.shards):05d}.bin"
        (self.root / name).write_bytes(data)
        self.shards.append(ShardInfo(file=name, tokens=n, sha256=hashlib.sha256(data).hexdigest()))


def _write_store(
    texts: Iterable[str],
    tok: Tokenizer,
    root: Path,
    seq_len: int,
    page_seqs: int,
    shard_pages: int,
    source: str,
) -> Manifest:
    vocab = tok.get_vocab_size()
    dtype_name = "uint16" if vocab <= 2**16 else "uint32"
    page_tokens = seq_len * page_seqs
    writer = _ShardWriter(root, _np_dtype(dtype_name), shard_pages * page_tokens)
    for ids in encode_documents(tok, texts):
        writer.add(ids)
    writer.finish(page_tokens)
    num_pages = sum(s.tokens for s in writer.shards) // page_tokens
    if num_pages == 0:
        raise ValueError(f"corpus too small: {writer.total_tokens} tokens, a page needs {page_tokens}")
    save_tokenizer(tok, root / TOKENIZER_NAME)
    manifest = Manifest(
        tokenizer_hash=tokenizer_hash(tok),
        vocab_size=vocab,
        eos_id=eos_id(tok),
        dtype=dtype_name,
        seq_len=seq_len,
        page_seqs=page_seqs,
        shard_pages=shard_pages,
        num_pages=num_pages,
        heldout_pages=heldout_count(num_pages),
        num_tokens=writer.total_tokens,
        shards=tuple(writer.shards),
        source=source,
    )
    (root / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


# --------------------------------------------------------------------------- reading


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class PageStore:
    """Read-only access to a built store: pages as LongTensors [page_seqs, seq_len]."""

    def __init__(self, root: Path, manifest: Manifest, shards: list[np.ndarray]) -> None:
        self.root, self.manifest, self._shards = root, manifest, shards

    @classmethod
    def open(cls, root: str | Path, verify: bool = True) -> PageStore:
        """Open a store; with ``verify`` every shard's sha256 (and the tokenizer's hash) is checked.

        File sizes are always checked. Any mismatch raises ``PageStoreError`` naming the file.
        """
        root = Path(root)
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.is_file():
            raise PageStoreError(f"no page store at {root}: {MANIFEST_NAME} is missing")
        manifest = Manifest.from_json(manifest_path.read_text(), origin=str(manifest_path))
        dtype = _np_dtype(manifest.dtype)
        shards = []
        for s in manifest.shards:
            path = root / s.file
            _check_shard_file(path, s, dtype, verify)
            shards.append(np.memmap(path, dtype=dtype, mode="r"))
        if verify:
            _check_tokenizer_file(root / TOKENIZER_NAME, manifest)
        return cls(root, manifest, shards)

    @property
    def num_pages(self) -> int:
        return self.manifest.num_pages

    @property
    def seq_len(self) -> int:
        return self.manifest.seq_len

    @property
    def page_seqs(self) -> int:
        return self.manifest.page_seqs

    def heldout_ids(self) -> list[int]:
        """The held-out page ids (the last ~5%), never assigned and never randomly evaluated."""
        return list(range(self.manifest.train_pages, self.num_pages))

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the store was built with (saved beside the shards)."""
        return load_tokenizer(self.root / TOKENIZER_NAME)

    def page(self, i: int) -> torch.Tensor:
        """Page ``i`` as an int64 tensor [page_seqs, seq_len]."""
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"page id must be an int, got {type(i).__name__}")
        if not 0 <= i < self.num_pages:
            raise IndexError(f"page {i} out of range [0, {self.num_pages})")
        m = self.manifest
        shard, offset = divmod(int(i), m.shard_pages)
        start = offset * m.page_tokens
        tokens = self._shards[shard][start : start + m.page_tokens].astype(np.int64)
        return torch.from_numpy(tokens).view(m.page_seqs, m.seq_len)

    def pages(self, ids: Iterable[int]) -> torch.Tensor:
        """Several pages stacked in the given order: [len(ids) * page_seqs, seq_len]."""
        parts = [self.page(i) for i in ids]
        if not parts:
            return torch.empty(0, self.seq_len, dtype=torch.long)
        return torch.cat(parts)


def _check_shard_file(path: Path, shard: ShardInfo, dtype: np.dtype, verify: bool) -> None:
    if not path.is_file():
        raise PageStoreError(f"page store shard missing: {path}")
    expected = shard.tokens * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise PageStoreError(f"page store shard {path} has {size} bytes, manifest says {expected}")
    if verify and (actual := _file_sha256(path)) != shard.sha256:
        raise PageStoreError(
            f"page store shard {path} is corrupt or was modified: sha256 {actual} != manifest {shard.sha256}"
        )


def _check_tokenizer_file(path: Path, manifest: Manifest) -> None:
    if not path.is_file():
        raise PageStoreError(f"page store tokenizer missing: {path}")
    actual = tokenizer_hash(load_tokenizer(path))
    if actual != manifest.tokenizer_hash:
        raise PageStoreError(f"tokenizer {path} hash {actual} != manifest {manifest.tokenizer_hash}")


# --------------------------------------------------------------------------- the default store


def default_store_key(data: DataParams, tok_hash: str) -> str:
    """Cache directory name: changes whenever the tokens of the default store would change."""
    return f"kjv-v{FORMAT_VERSION}-s{data.seq_len}-p{data.page_seqs}-t{tok_hash[:16]}"


def default_store(home: str | Path, data: DataParams) -> PageStore:
    """The KJV store for ``data``'s geometry under ``home/data``, built on first use.

    Concurrent callers are safe: each builds in its own temporary directory and the first
    rename wins; the others open the winner's store. A cached store that fails verification is
    moved aside and rebuilt (its content is derivable, so nothing is lost).
    """
    from protocol.corpus import default_corpus_texts  # the KJV package is only needed to build

    tok = load_tokenizer()
    root = Path(home) / "data" / default_store_key(data, tokenizer_hash(tok))
    if (root / MANIFEST_NAME).is_file():
        try:
            return PageStore.open(root)
        except PageStoreError as exc:
            print(f"gauntlet: default page store unusable ({exc}); rebuilding", file=sys.stderr)
            _move_aside(root)
    print(f"gauntlet: building the default page store (KJV) in {root} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        m = build_page_store(
            default_corpus_texts(), tok, root, seq_len=data.seq_len, page_seqs=data.page_seqs, source="kjv"
        )
        print(
            f"gauntlet: built {m.num_pages} pages ({m.num_tokens} tokens) in {time.monotonic() - started:.1f}s",
            file=sys.stderr,
        )
    except FileExistsError:
        pass  # another process finished first; use its store
    return PageStore.open(root)


def _move_aside(root: Path) -> None:
    # Failure means another process moved or replaced it already.
    with contextlib.suppress(OSError):
        os.rename(root, root.with_name(f".{root.name}.broken-{os.getpid()}-{time.time_ns()}"))


# --------------------------------------------------------------------------- assignment


def _field(value: str | bytes | int) -> bytes:
    """Length-prefixed encoding: distinct field tuples never produce the same byte string."""
    raw = value if isinstance(value, bytes) else str(value).encode()
    return struct.pack("<Q", len(raw)) + raw


def derive_seed(tag: str, *fields: str | bytes | int) -> int:
    """64-bit seed: blake2b over a domain tag and the fields (domain separation per use)."""
    h = hashlib.blake2b(digest_size=8, person=b"gauntlet-seed")
    h.update(_field(tag))
    for f in fields:
        h.update(_field(f))
    return int.from_bytes(h.digest(), "little")


def _uniform_below(words: Iterator[int], bound: int) -> int:
    """Unbiased integer in [0, bound) from 64-bit words (rejection of the incomplete top range)."""
    limit = (1 << 64) - (1 << 64) % bound
    while True:
        w = next(words)
        if w < limit:
            return w % bound


def _words(seed: int) -> Iterator[int]:
    bits = np.random.PCG64(seed)
    while True:
        yield from (int(w) for w in bits.random_raw(64))


def _permutation_prefix(seed: int, n: int) -> Iterator[int]:
    """Lazily the elements of a seeded uniform permutation of range(n) (sparse Fisher-Yates)."""
    words = _words(seed)
    swapped: dict[int, int] = {}
    for i in range(n):
        j = i + _uniform_below(words, n - i)
        yield swapped.get(j, j)
        swapped[j] = swapped.get(i, i)


def _sample(seed: int, n: int, count: int, exclude: Iterable[int] = ()) -> list[int]:
    """The first ``count`` ids of the seeded permutation of range(n) that are not excluded."""
    skip = {int(p) for p in exclude}
    available = n - sum(1 for p in skip if 0 <= p < n)
    if count < 0 or count > available:
        raise ValueError(f"cannot sample {count} distinct pages from {available} available")
    out: list[int] = []
    for page in _permutation_prefix(seed, n):
        if len(out) == count:
            break
        if page not in skip:
            out.append(page)
    return out


def assigned_pages(window: int, hotkey: str, public_seed: str, num_pages: int, count: int) -> list[int]:
    """The ``count`` distinct training pages the miner ``hotkey`` must train on in ``window``.

    Pure function of public values, so validators recompute it exactly. Keyed by hotkey (uids
    are recycled when a miner deregisters) and by window (a new draw every window). Only the
    training range is drawn from, never held-out pages. ``num_pages`` is the store's total.
    """
    if window < 0 or not hotkey:
        raise ValueError("window must be >= 0 and hotkey non-empty")
    seed = derive_seed("gauntlet/assigned-pages/v1", public_seed, window, hotkey)
    return _sample(seed, training_count(num_pages), count)


def window_secret(master_secret: bytes, window: int) -> bytes:
    """A validator's per-window secret; publish this (never the master) in the window's receipt.

    Derived one-way, so revealing the secret of a finished window reveals nothing about later
    windows. A validator may also commit to ``sha256(window_secret(...))`` ahead of time.
    """
    if len(master_secret) < MIN_SECRET_BYTES:
        raise ValueError(f"master secret must be at least {MIN_SECRET_BYTES} bytes")
    return hashlib.blake2b(
        _field(window), key=master_secret[:64], digest_size=32, person=b"gauntlet-wsec"
    ).digest()


def control_pages(window: int, beacon: bytes, num_pages: int, count: int, exclude: Iterable[int] = ()) -> list[int]:
    """``count`` distinct training pages every validator of ``window`` measures the proof of work against.

    Seeded by the window's beacon (``protocol.windows.beacon_block``: a block hash nobody knows
    before the uploads are due), so no miner can train on them, yet every validator draws the same
    ones and the per-page test (``scoring.loss.work_indicator``) gives all of them the same verdict.
    ``exclude`` takes the window's assigned pages: a control page is one nobody trained on by duty.
    """
    if window < 0:
        raise ValueError("window must be >= 0")
    if len(beacon) < MIN_SECRET_BYTES:
        raise ValueError(f"beacon must be at least {MIN_SECRET_BYTES} bytes (a block hash)")
    return _sample(derive_seed("gauntlet/control-pages/v1", beacon, window), training_count(num_pages), count, exclude)


def random_eval_pages(
    window: int, secret_seed: bytes, num_pages: int, count: int, exclude: Iterable[int] = ()
) -> list[int]:
    """``count`` distinct training pages for "random data" evaluation (the contribution) in ``window``.

    ``secret_seed`` must be unknown to miners until their uploads are due: the validator passes the
    window's beacon (``validator.stage2.plan_stage2``), so no miner can train on these pages and
    every validator measures every contribution on the same data. With a seed of its own, each
    validator broke honest near-ties its own way and three validators shared as little as 66% of
    their weight under the scale-invariant rule (benchmarks/RESULTS.md, "Validators"). The draw is
    the prefix of one permutation of the training range with ``exclude`` (the window's assigned and
    control pages) skipped.
    """
    if window < 0:
        raise ValueError("window must be >= 0")
    if len(secret_seed) < MIN_SECRET_BYTES:
        raise ValueError(f"secret_seed must be at least {MIN_SECRET_BYTES} bytes (it must be unguessable)")
    seed = derive_seed("gauntlet/random-eval-pages/v1", secret_seed, window)
    return _sample(seed, training_count(num_pages), count, exclude)
