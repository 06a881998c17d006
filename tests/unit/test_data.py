"""The data layer: corpus, tokenizer, page store integrity and deterministic page assignment."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from protocol.cli import data_app
from protocol.corpus import default_corpus_texts, read_user_texts
from protocol.hparams import DataParams
from protocol.pages import (
    MANIFEST_NAME,
    PageStore,
    PageStoreError,
    assigned_pages,
    build_page_store,
    control_pages,
    default_store,
    heldout_count,
    random_eval_pages,
    training_count,
    window_secret,
)
from protocol.tokenizer import (
    DEFAULT_TOKENIZER_PATH,
    EOS,
    load_tokenizer,
    tokenizer_hash,
    train_tokenizer,
)

ENGLISH = "The quick brown fox jumps over the lazy dog. Zebras don't use e-mail, naïvely!\nNew line."
SECRET = bytes(range(32))


def _docs(n: int = 60) -> list[str]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda"]
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(40 + i % 13)) for i in range(n)]


@pytest.fixture(scope="module")
def small_tok():
    return train_tokenizer(_docs(), vocab_size=300)


@pytest.fixture
def store_dir(tmp_path: Path, small_tok) -> Path:
    out = tmp_path / "store"
    build_page_store(_docs(), small_tok, out, seq_len=16, page_seqs=2, shard_pages=8)
    return out


# --------------------------------------------------------------------------- corpus and tokenizer


def test_default_corpus_is_kjv_by_chapter() -> None:
    docs = list(default_corpus_texts())
    assert len(docs) == 1189  # chapters of the KJV
    assert docs[0].startswith("Genesis 1\nIn the beginning God created")
    assert docs[-1].startswith("Revelation 22\n")
    assert not any(":" in line.split(" ", 1)[0] for d in docs[:50] for line in d.splitlines()[1:])


def test_read_user_texts(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first document\nstill first")
    (tmp_path / "b.jsonl").write_text('{"text": "second"}\n\n{"text": "third"}\n')
    assert list(read_user_texts([tmp_path / "a.txt", tmp_path / "b.jsonl"])) == [
        "first document\nstill first",
        "second",
        "third",
    ]
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*'text'"):
        list(read_user_texts([tmp_path / "bad.jsonl"]))
    (tmp_path / "x.csv").write_text("x")
    with pytest.raises(ValueError, match="unsupported"):
        list(read_user_texts([tmp_path / "x.csv"]))
    with pytest.raises(FileNotFoundError):
        list(read_user_texts([tmp_path / "missing.txt"]))


def test_shipped_tokenizer_round_trips_english() -> None:
    assert DEFAULT_TOKENIZER_PATH.stat().st_size < 1_000_000
    tok = load_tokenizer()
    assert tok.get_vocab_size() == 4096
    assert tok.token_to_id(EOS) == 0
    ids = tok.encode(ENGLISH).ids
    assert tok.decode(ids) == ENGLISH
    assert len(ids) < len(ENGLISH.encode()) / 2  # it actually compresses English
    assert tokenizer_hash(load_tokenizer(DEFAULT_TOKENIZER_PATH)) == tokenizer_hash(tok)


def test_trained_tokenizer_round_trips_and_is_deterministic(small_tok) -> None:
    assert small_tok.get_vocab_size() <= 300
    text = "gamma delta, unseen words: ünïcode ✓"
    assert small_tok.decode(small_tok.encode(text).ids) == text  # byte-level: nothing is unknown
    assert tokenizer_hash(train_tokenizer(_docs(), vocab_size=300)) == tokenizer_hash(small_tok)


# --------------------------------------------------------------------------- page store


def test_build_open_and_page_shapes(store_dir: Path, small_tok) -> None:
    store = PageStore.open(store_dir)
    m = store.manifest
    assert m.dtype == "uint16" and m.seq_len == 16 and m.page_seqs == 2
    assert len(m.shards) > 1 and m.num_pages == sum(s.tokens for s in m.shards) // 32
    assert store.page(0).shape == (2, 16) and store.page(0).dtype == torch.long
    assert store.pages([3, 1, 4]).shape == (6, 16)
    assert torch.equal(store.pages([3, 1])[:2], store.page(3))
    assert store.pages([]).shape == (0, 16)
    # Pages are the EOS-joined token stream, in order, across shard boundaries.
    stream = torch.cat([store.page(i).reshape(-1) for i in range(store.num_pages)]).tolist()
    expected: list[int] = []
    for doc in _docs():
        expected += [*small_tok.encode(doc).ids, 0]
    assert stream == expected[: len(stream)]
    assert store.tokenizer().to_str() == small_tok.to_str()
    for bad in (-1, store.num_pages):
        with pytest.raises(IndexError):
            store.page(bad)


def test_heldout_pages(store_dir: Path) -> None:
    store = PageStore.open(store_dir)
    n = store.num_pages
    assert store.heldout_ids() == list(range(n - heldout_count(n), n))
    assert 1 <= len(store.heldout_ids()) <= max(1, round(0.06 * n))
    assert heldout_count(1000) == 50 and training_count(1000) == 950 and heldout_count(1) == 0


def test_tampered_shard_is_detected(store_dir: Path) -> None:
    shard = store_dir / "shard-00001.bin"
    data = bytearray(shard.read_bytes())
    data[5] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(PageStoreError, match=r"shard-00001.bin is corrupt or was modified: sha256"):
        PageStore.open(store_dir)
    PageStore.open(store_dir, verify=False)  # sizes still match: only the hash check catches it


def test_missing_truncated_or_bad_manifest_is_detected(store_dir: Path) -> None:
    (store_dir / "shard-00000.bin").write_bytes((store_dir / "shard-00000.bin").read_bytes()[:-2])
    with pytest.raises(PageStoreError, match="bytes, manifest says"):
        PageStore.open(store_dir, verify=False)
    (store_dir / "shard-00000.bin").unlink()
    with pytest.raises(PageStoreError, match="shard missing"):
        PageStore.open(store_dir)
    manifest = json.loads((store_dir / MANIFEST_NAME).read_text())
    manifest["num_pages"] += 1
    (store_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(PageStoreError):
        PageStore.open(store_dir)
    (store_dir / MANIFEST_NAME).unlink()
    with pytest.raises(PageStoreError, match=r"manifest\.json is missing"):
        PageStore.open(store_dir)


def test_build_refuses_existing_and_concurrent_builds_agree(tmp_path: Path, small_tok) -> None:
    out = tmp_path / "s"
    results: list[object] = []

    def build() -> None:
        try:
            results.append(build_page_store(_docs(), small_tok, out, seq_len=16, page_seqs=2))
        except FileExistsError as exc:
            results.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert any(not isinstance(r, FileExistsError) for r in results)
    assert PageStore.open(out).num_pages > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    with pytest.raises(FileExistsError):
        build_page_store(_docs(), small_tok, out, seq_len=16, page_seqs=2)
    with pytest.raises(ValueError, match="corpus too small"):
        build_page_store(["tiny"], small_tok, tmp_path / "t", seq_len=16, page_seqs=2)


def test_default_store_builds_once_then_reuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = DataParams(seq_len=64, page_seqs=4)
    store = default_store(tmp_path, data)
    assert "building the default page store" in capsys.readouterr().err
    assert store.page(0).shape == (4, 64)
    assert store.manifest.num_tokens > 900_000 and store.manifest.source == "kjv"
    text = store.tokenizer().decode(store.page(0)[0].tolist())
    assert text.startswith("Genesis 1\nIn the beginning God created")
    again = default_store(tmp_path, data)
    assert "building" not in capsys.readouterr().err
    assert again.root == store.root and again.manifest.digest == store.manifest.digest
    assert f"s64-p4-t{tokenizer_hash(load_tokenizer())[:16]}" in store.root.name


# --------------------------------------------------------------------------- assignment


def test_assigned_pages_are_deterministic_distinct_and_in_training_range() -> None:
    n = 1011
    pages = assigned_pages(7, "5HotkeyA", "gauntlet-v1", n, 16)
    assert pages == assigned_pages(7, "5HotkeyA", "gauntlet-v1", n, 16)
    assert len(set(pages)) == 16 and all(0 <= p < training_count(n) for p in pages)
    assert pages != assigned_pages(7, "5HotkeyB", "gauntlet-v1", n, 16)
    assert pages != assigned_pages(8, "5HotkeyA", "gauntlet-v1", n, 16)
    assert pages != assigned_pages(7, "5HotkeyA", "other-seed", n, 16)
    # A shorter draw is a prefix of a longer one: counts can change without reshuffling.
    assert assigned_pages(7, "5HotkeyA", "gauntlet-v1", n, 4) == pages[:4]
    # Pinned values: a change means miners and validators of different versions disagree.
    assert assigned_pages(0, "5Pinned", "gauntlet-v1", 1000, 4) == [678, 378, 466, 557]


def test_assigned_pages_never_return_heldout_and_reject_overdraw() -> None:
    n = 40
    everything = assigned_pages(3, "hk", "s", n, training_count(n))
    assert sorted(everything) == list(range(training_count(n)))
    with pytest.raises(ValueError, match="cannot sample"):
        assigned_pages(3, "hk", "s", n, training_count(n) + 1)
    with pytest.raises(ValueError):
        assigned_pages(-1, "hk", "s", n, 1)


def test_assignment_covers_pages_roughly_uniformly() -> None:
    n, train = 105, training_count(105)  # 99 training pages, 6 held out
    counts = [0] * n
    for i in range(500):
        for p in assigned_pages(1, f"hotkey-{i}", "s", n, 4):
            counts[p] += 1
    assert sum(counts[train:]) == 0
    assert min(counts[:train]) >= 5 and max(counts[:train]) <= 40  # mean ~20


def test_random_eval_pages_depend_on_secret_and_respect_exclusion() -> None:
    n = 1011
    pages = random_eval_pages(5, SECRET, n, 8)
    assert pages == random_eval_pages(5, SECRET, n, 8)
    assert len(set(pages)) == 8 and all(0 <= p < training_count(n) for p in pages)
    assert pages != random_eval_pages(5, bytes(32), n, 8)
    assert pages != random_eval_pages(6, SECRET, n, 8)
    excluded = random_eval_pages(5, SECRET, n, 8, exclude=pages[:2])
    assert not set(excluded) & set(pages[:2])
    assert excluded[:6] == pages[2:]  # skipping keeps the shared order: "loss before" is reusable
    assert random_eval_pages(0, SECRET, 1000, 4) == [615, 101, 468, 520]  # pinned across versions
    with pytest.raises(ValueError, match="at least 16 bytes"):
        random_eval_pages(5, b"short", n, 8)
    with pytest.raises(ValueError, match="cannot sample"):
        random_eval_pages(5, SECRET, 12, 11, exclude=[0, 1])


def test_control_pages_are_public_given_the_beacon_and_skip_assigned_pages() -> None:
    n, beacon = 1011, bytes(range(32))
    pages = control_pages(5, beacon, n, 4)
    assert pages == control_pages(5, beacon, n, 4)  # every validator draws the same ones
    assert pages != control_pages(5, bytes(32), n, 4) and pages != control_pages(6, beacon, n, 4)
    assert pages != random_eval_pages(5, beacon, n, 4)  # another domain than a validator's secret draw
    assert not set(control_pages(5, beacon, n, 4, exclude=pages[:2])) & set(pages[:2])
    assert all(0 <= p < training_count(n) for p in pages)
    assert control_pages(0, beacon, 1000, 4) == [176, 764, 614, 913]  # pinned across versions
    with pytest.raises(ValueError, match="at least 16 bytes"):
        control_pages(5, b"short", n, 4)


def test_window_secret_is_per_window_and_one_way() -> None:
    master = b"m" * 32
    assert window_secret(master, 3) == window_secret(master, 3)
    assert window_secret(master, 3) != window_secret(master, 4)
    assert master not in window_secret(master, 3)
    assert len(window_secret(master, 3)) == 32


# --------------------------------------------------------------------------- CLI


def test_cli_build_and_info_for_user_texts(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in _docs()))
    out = tmp_path / "store"
    runner = CliRunner()
    args = ["build", "--out", str(out), "--text", str(corpus), "--seq-len", "16", "--page-seqs", "2"]
    result = runner.invoke(data_app, [*args, "--vocab-size", "300"])
    assert result.exit_code == 0, result.output
    assert (out / "tokenizer.json").is_file()
    info = runner.invoke(data_app, ["info", str(out)])
    assert info.exit_code == 0 and "held out" in info.output and "verified" in info.output
    assert runner.invoke(data_app, ["info", str(tmp_path)]).exit_code == 1
