"""Storage: key layout and validation, the shared backend contract, LocalStorage, open_storage.

``StorageContract`` is the behaviour every backend must show; it is run here against
``LocalStorage`` and in ``tests/integration/test_storage_s3.py`` against ``S3Storage`` on a
real S3-protocol server. Its name does not start with "Test", so it is only collected
through those subclasses.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol.storage as storage_mod
from protocol.storage import (
    CHUNK_BYTES,
    LocalStorage,
    ObjectInfo,
    ObjectNotFound,
    ObjectTooLarge,
    Storage,
    StorageError,
    StorageUnavailable,
    aggregate_key,
    checkpoint_key,
    delta_key,
    delta_prefix,
    parse_delta_key,
    validate_hotkey,
    validate_key,
    validate_prefix,
    window_of_delta_key,
)
from protocol.storage_open import open_storage
from protocol.storage_s3 import S3Storage

HOTKEY = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
OTHER_HOTKEY = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

UNSAFE_KEYS = [
    "",
    "/etc/passwd",
    "../outside",
    "a/../../outside",
    "a/..",
    "..",
    "a..b",
    "a\\b",
    "C:\\windows",
    "a//b",
    "a/",
    "./a",
    "a/./b",
    "a b",
    "a\nb",
    "a\x00b",
    "ключ",
    "a?b",
    "~/x",
    "x" * 513,
]


# --------------------------------------------------------------------------- keys


def test_delta_key_layout() -> None:
    assert delta_key(7, HOTKEY) == f"deltas/0000000007/{HOTKEY}.gdlt"
    assert delta_prefix(7) == "deltas/0000000007/"
    assert delta_key(7, HOTKEY).startswith(delta_prefix(7))
    assert aggregate_key(12) == "aggregates/0000000012.gagg"
    assert checkpoint_key(12) == "checkpoints/0000000012.safetensors"
    for key in (delta_key(0, HOTKEY), aggregate_key(9_999_999_999), checkpoint_key(3)):
        assert validate_key(key) == key


def test_parse_delta_key_round_trip() -> None:
    key = delta_key(123, OTHER_HOTKEY)
    assert parse_delta_key(key) == (123, OTHER_HOTKEY)
    assert window_of_delta_key(key) == 123


@pytest.mark.parametrize(
    "key",
    [
        aggregate_key(1),
        f"deltas/7/{HOTKEY}.gdlt",
        f"deltas/00000000007/{HOTKEY}.gdlt",
        f"deltas/0000000007/{HOTKEY}.bin",
        f"deltas/0000000007/{HOTKEY}.gdlt/x",
        f"x/deltas/0000000007/{HOTKEY}.gdlt",
        "deltas/000000000٣/" + HOTKEY + ".gdlt",  # a non-ASCII digit
        "deltas/0000000007/short.gdlt",
    ],
)
def test_window_of_delta_key_rejects_other_keys(key: str) -> None:
    with pytest.raises(ValueError, match="not a delta key"):
        window_of_delta_key(key)


@pytest.mark.parametrize(
    "hotkey",
    [
        "",
        "5" * 39,
        "5" * 61,
        HOTKEY[:-1] + "0",
        HOTKEY[:-1] + "O",
        HOTKEY[:-1] + "I",
        HOTKEY[:-1] + "l",
        HOTKEY + "\n",
        "../" + HOTKEY,
        HOTKEY[:20] + "/" + HOTKEY[21:],
        HOTKEY[:-1] + "é",
    ],
)
def test_bad_hotkeys_are_rejected(hotkey: str) -> None:
    with pytest.raises(ValueError, match="invalid hotkey"):
        validate_hotkey(hotkey)
    with pytest.raises(ValueError, match="invalid hotkey"):
        delta_key(1, hotkey)


def test_good_hotkeys_are_accepted() -> None:
    assert validate_hotkey(HOTKEY) == HOTKEY
    assert validate_hotkey("1" * 40) == "1" * 40


@pytest.mark.parametrize("window", [-1, 10**10, True, 1.0, "1", None])
def test_bad_windows_are_rejected(window: Any) -> None:
    for build in (lambda w: delta_key(w, HOTKEY), aggregate_key, checkpoint_key, delta_prefix):
        with pytest.raises(ValueError, match="invalid window"):
            build(window)


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_unsafe_keys_are_rejected(key: str) -> None:
    with pytest.raises(ValueError, match="unsafe storage key"):
        validate_key(key)


@pytest.mark.parametrize("prefix", ["", "deltas", "deltas/", "deltas/00000", "a.b/c-d_e/"])
def test_prefixes(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/", "//", "/deltas", "deltas//", "../", "a/../", "a\\"])
def test_unsafe_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(ValueError, match="unsafe storage prefix"):
        validate_prefix(prefix)


@settings(derandomize=True, max_examples=150, deadline=None)
@given(window=st.integers(0, 10**10 - 1), hotkey=st.text(BASE58, min_size=40, max_size=60))
def test_delta_keys_round_trip(window: int, hotkey: str) -> None:
    key = delta_key(window, hotkey)
    assert validate_key(key) == key
    assert parse_delta_key(key) == (window, hotkey)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(key=st.text(alphabet="ab./\\-_~ \x00", max_size=12))
def test_accepted_keys_stay_under_the_root(key: str) -> None:
    root = Path("/store/root")
    try:
        validate_key(key)
    except ValueError:
        return
    resolved = Path(os.path.normpath(root / key))
    assert resolved.is_relative_to(root) and resolved != root
    assert ".." not in key and "\\" not in key and not key.startswith("/")


# --------------------------------------------------------------------------- errors


def test_errors_name_backend_and_key_and_pickle() -> None:
    errors: list[StorageError] = [
        ObjectNotFound("file:///s", "k"),
        ObjectTooLarge("file:///s", "k", 10),
        StorageUnavailable("s3://b/", "k", "connection refused"),
        StorageError("s3://b/", None, "boom"),
    ]
    for error in errors:
        text = str(error)
        assert error.backend in text
        assert error.key is None or repr(error.key) in text
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == text
    assert "10-byte limit" in str(errors[1]) and errors[1].limit == 10
    assert all(isinstance(e, StorageError) for e in errors)


# --------------------------------------------------------------------------- the shared contract


class StorageContract:
    """Behaviour every backend shows; subclasses provide the ``store`` fixture."""

    # The S3 backend reports whole seconds, so timestamps may trail the wall clock by up to 1 s.
    CLOCK_SLACK_S = 1.0

    def test_is_a_storage(self, store: Storage) -> None:
        assert isinstance(store, Storage)

    def test_put_get_stat(self, store: Storage) -> None:
        before = time.time()
        info = store.put("a/b.bin", b"hello")
        after = time.time()
        assert (info.key, info.size) == ("a/b.bin", 5)
        assert before - self.CLOCK_SLACK_S <= info.uploaded_at <= after + self.CLOCK_SLACK_S
        assert store.get("a/b.bin", max_bytes=5) == b"hello"
        assert store.stat("a/b.bin") == info

    def test_empty_object(self, store: Storage) -> None:
        assert store.put("empty", b"").size == 0
        assert store.get("empty", max_bytes=0) == b""

    def test_overwrite_replaces(self, store: Storage) -> None:
        store.put("k", b"old contents")
        info = store.put("k", b"new")
        assert store.get("k", max_bytes=100) == b"new"
        assert store.stat("k") == info and info.size == 3

    def test_missing_object(self, store: Storage) -> None:
        with pytest.raises(ObjectNotFound, match="'nope/x'"):
            store.get("nope/x", max_bytes=10)
        with pytest.raises(ObjectNotFound, match="'nope/x'"):
            store.stat("nope/x")

    def test_cap_is_enforced(self, store: Storage) -> None:
        data = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 3)  # spans several read chunks
        store.put("big", data)
        assert store.get("big", max_bytes=len(data)) == data
        for cap in (len(data) - 1, CHUNK_BYTES, 0):
            with pytest.raises(ObjectTooLarge, match=f"{cap}-byte limit") as raised:
                store.get("big", max_bytes=cap)
            assert raised.value.key == "big"

    @pytest.mark.parametrize("cap", [-1, 1.5, True, None])
    def test_bad_cap_is_rejected(self, store: Storage, cap: Any) -> None:
        store.put("k", b"x")
        with pytest.raises(ValueError, match="max_bytes"):
            store.get("k", max_bytes=cap)

    def test_list_is_a_sorted_string_prefix_match(self, store: Storage) -> None:
        for key in (
            delta_key(2, OTHER_HOTKEY),
            delta_key(2, HOTKEY),
            delta_key(21, HOTKEY),
            aggregate_key(2),
        ):
            store.put(key, b"x" * 3)
        window_2 = store.list(delta_prefix(2))
        assert [i.key for i in window_2] == sorted([delta_key(2, HOTKEY), delta_key(2, OTHER_HOTKEY)])
        assert all(isinstance(i, ObjectInfo) and i.size == 3 for i in window_2)
        assert [window_of_delta_key(i.key) for i in window_2] == [2, 2]
        assert len(store.list("deltas/000000000")) == 2  # a prefix may end inside a segment
        assert len(store.list("deltas/00000000")) == 3
        assert [i.key for i in store.list("")] == sorted(
            [delta_key(2, OTHER_HOTKEY), delta_key(2, HOTKEY), delta_key(21, HOTKEY), aggregate_key(2)]
        )
        assert store.list("nothing/here/") == []

    def test_list_agrees_with_stat(self, store: Storage) -> None:
        info = store.put("x/y", b"123")
        assert store.list("x/") == [info] == [store.stat("x/y")]

    def test_delete(self, store: Storage) -> None:
        store.put("d/1", b"1")
        store.put("d/2", b"2")
        store.delete("d/1")
        with pytest.raises(ObjectNotFound):
            store.stat("d/1")
        assert [i.key for i in store.list("d/")] == ["d/2"]
        store.delete("d/1")  # deleting a missing key is not an error
        store.delete("never/existed")

    @pytest.mark.parametrize("key", UNSAFE_KEYS)
    def test_unsafe_keys_rejected_by_every_verb(self, store: Storage, key: str) -> None:
        calls: list[Callable[[], object]] = [
            lambda: store.put(key, b"x"),
            lambda: store.get(key, max_bytes=10),
            lambda: store.stat(key),
            lambda: store.delete(key),
        ]
        for call in calls:
            with pytest.raises(ValueError, match="unsafe storage key"):
                call()
        assert store.list("") == []

    def test_unsafe_prefix_rejected(self, store: Storage) -> None:
        with pytest.raises(ValueError, match="unsafe storage prefix"):
            store.list("../")


# --------------------------------------------------------------------------- LocalStorage


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


class TestLocalStorageContract(StorageContract):
    @pytest.fixture
    def store(self, local: LocalStorage) -> Storage:
        return local


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_local_layout_and_permissions(local: LocalStorage) -> None:
    key = delta_key(3, HOTKEY)
    local.put(key, b"abc")
    path = local.root / key
    assert path.read_bytes() == b"abc"
    assert _files(local.root) == [key]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_local_uploaded_at_is_the_files_mtime(local: LocalStorage) -> None:
    info = local.put("k", b"abc")
    assert info.uploaded_at == (local.root / "k").stat().st_mtime
    os.utime(local.root / "k", (1_000_000.0, 1_000_000.0))  # the store's stamp, whatever the writer's clock
    assert local.stat("k").uploaded_at == 1_000_000.0
    assert local.list("")[0].uploaded_at == 1_000_000.0


def test_local_write_is_invisible_until_complete(
    local: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    local.put("k", b"old")
    seen: list[object] = []
    real_fsync = os.fsync

    def observing_fsync(fd: int) -> None:
        if not seen:  # the data fsync, before the rename
            seen.append(local.get("k", max_bytes=100))
            seen.append([i.key for i in local.list("")])
        real_fsync(fd)

    monkeypatch.setattr(storage_mod.os, "fsync", observing_fsync)
    local.put("k", b"new contents")
    assert seen == [b"old", ["k"]]  # mid-write: old object, temp file not listed
    assert local.get("k", max_bytes=100) == b"new contents"
    assert _files(local.root) == ["k"]


def test_local_failed_write_leaves_nothing(local: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    local.put("k", b"old")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage_mod.os, "replace", failing_replace)
    with pytest.raises(StorageUnavailable, match="No space left"):
        local.put("k", b"new")
    with pytest.raises(StorageUnavailable):
        local.put("fresh/key", b"new")
    monkeypatch.undo()
    assert local.get("k", max_bytes=10) == b"old"
    assert [i.key for i in local.list("")] == ["k"]
    assert _files(local.root) == ["k"]


def test_local_never_lists_temp_or_foreign_files(local: LocalStorage) -> None:
    local.put("d/ok", b"1")
    (local.root / "d" / ".ok.abc123~tmp").write_bytes(b"partial")
    (local.root / "d" / "bad name").write_bytes(b"x")
    assert [i.key for i in local.list("")] == ["d/ok"]


def test_local_traversal_through_symlinks_is_impossible(local: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (local.root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside the store"):
        local.get("link/secret", max_bytes=100)
    with pytest.raises(ValueError, match="outside the store"):
        local.put("link/planted", b"x")
    with pytest.raises(ValueError, match="outside the store"):
        local.delete("link/secret")
    assert local.list("") == [] and local.list("link/") == []
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_local_get_counts_bytes_not_the_size(local: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    local.put("k", b"x" * 100)
    real_fstat = os.fstat

    def lying_fstat(fd: int) -> os.stat_result:
        fields = list(real_fstat(fd))
        fields[6] = 1  # st_size: the file claims one byte
        return os.stat_result(fields)

    monkeypatch.setattr(storage_mod.os, "fstat", lying_fstat)
    with pytest.raises(ObjectTooLarge):
        local.get("k", max_bytes=10)


def test_local_directories_are_not_objects(local: LocalStorage) -> None:
    local.put("a/b/c", b"1")
    with pytest.raises(ObjectNotFound):
        local.get("a/b", max_bytes=10)
    with pytest.raises(ObjectNotFound):
        local.stat("a")
    with pytest.raises(StorageError, match="clashes"):
        local.put("a/b", b"2")
    local.delete("a")  # not an object: nothing happens
    assert local.get("a/b/c", max_bytes=10) == b"1"


def test_local_delete_prunes_empty_directories(local: LocalStorage) -> None:
    local.put("a/b/c", b"1")
    local.put("a/d", b"2")
    local.delete("a/b/c")
    assert not (local.root / "a" / "b").exists() and (local.root / "a").is_dir()
    local.delete("a/d")
    assert local.root.is_dir() and list(local.root.iterdir()) == []
    local.put("a/b/c", b"3")  # directories come back on demand
    assert local.get("a/b/c", max_bytes=10) == b"3"


def test_local_root_must_be_usable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(StorageUnavailable, match="store directory"):
        LocalStorage(blocker / "store")


# --------------------------------------------------------------------------- open_storage


def test_open_storage_file_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = open_storage(f"file://{tmp_path / 'abs'}")
    assert isinstance(absolute, LocalStorage) and absolute.root == (tmp_path / "abs").resolve()
    monkeypatch.chdir(tmp_path)
    relative = open_storage("file://rel/dir")
    assert isinstance(relative, LocalStorage) and relative.root == (tmp_path / "rel" / "dir").resolve()
    assert isinstance(open_storage(f"FILE://{tmp_path / 'x'}"), LocalStorage)


def test_open_storage_default_settings_url(tmp_path: Path) -> None:
    from protocol.settings import load_settings

    store = open_storage(load_settings(home=tmp_path / "home").storage_url)
    assert isinstance(store, LocalStorage) and store.root == (tmp_path / "home" / "store").resolve()


def test_open_storage_s3_url() -> None:
    store = open_storage("s3://my-bucket/run/one?endpoint=http://127.0.0.1:9000&region=auto&path_style=1")
    assert isinstance(store, S3Storage)
    assert (store.bucket, store.prefix, store.endpoint_url) == (
        "my-bucket",
        "run/one/",
        "http://127.0.0.1:9000",
    )
    assert store._client.meta.config.s3["addressing_style"] == "path"
    assert store._client.meta.region_name == "auto"
    plain = open_storage("s3://my-bucket")
    assert isinstance(plain, S3Storage) and plain.prefix == "" and plain.endpoint_url is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "unsupported storage URL"),
        ("/tmp/store", "unsupported storage URL"),
        ("gs://bucket", "unsupported storage URL"),
        ("file:/tmp/x", "unsupported storage URL"),
        ("file://", "names no directory"),
        ("s3://", "no valid bucket"),
        ("s3:///prefix", "no valid bucket"),
        ("s3://key:secret@bucket", "credentials do not belong"),
        ("s3://bucket?endpont=http://x", "unknown option"),
        ("s3://bucket?region=a&region=b", "given twice"),
        ("s3://bucket?path_style=maybe", "path_style"),
        ("s3://bucket/a/../b", "unsafe storage key"),
        ("s3://bucket#frag", "fragment"),
    ],
)
def test_open_storage_rejects(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        open_storage(url)
    if "unsupported" in message:
        assert "file:///absolute/dir" in str(raised.value) and "s3://bucket" in str(raised.value)
