"""``gauntlet data ...``: build and inspect the pre-tokenized page store.

Heavy imports (tokenizers, numpy, torch) happen inside the commands so ``gauntlet --help`` stays
instant. Nodes normally never call ``build`` for the default corpus (``default_store`` builds it
on first use); the command exists for custom corpora and for inspecting what a node holds.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from protocol.hparams import DataParams

data_app = typer.Typer(help="Build and inspect the pre-tokenized page store.", no_args_is_help=True)

_DEFAULTS = DataParams()


@data_app.command("build")
def build(
    out: Path = typer.Option(..., "--out", help="Directory to create (must not exist or be empty)."),
    text: list[Path] = typer.Option(
        None,
        "--text",
        help="A .txt (one document) or .jsonl ('text' field per line) file; repeatable. "
        "Without any, the default KJV corpus with the shipped tokenizer.",
    ),
    seq_len: int = typer.Option(_DEFAULTS.seq_len, "--seq-len", min=8, help="Tokens per sequence."),
    page_seqs: int = typer.Option(_DEFAULTS.page_seqs, "--page-seqs", min=1, help="Sequences per page."),
    vocab_size: int = typer.Option(
        4096, "--vocab-size", min=258, help="Vocabulary of the tokenizer trained for --text."
    ),
    shard_pages: int = typer.Option(1024, "--shard-pages", min=1, help="Pages per shard file."),
) -> None:
    """Tokenize a corpus into a page store (the tokenizer is saved inside the store)."""
    from protocol.corpus import default_corpus_texts, read_user_texts
    from protocol.pages import build_page_store
    from protocol.tokenizer import load_tokenizer, train_tokenizer

    started = time.monotonic()
    if text:
        typer.echo(f"training a {vocab_size}-token tokenizer on {len(text)} file(s) ...", err=True)
        try:
            tok = train_tokenizer(read_user_texts(text), vocab_size)
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--text") from None
        texts, source = read_user_texts(text), ",".join(p.name for p in text)
    else:
        tok, texts, source = load_tokenizer(), default_corpus_texts(), "kjv"
    try:
        m = build_page_store(
            texts, tok, out, seq_len=seq_len, page_seqs=page_seqs, shard_pages=shard_pages, source=source
        )
    except FileExistsError as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"built {out}: {m.num_pages} pages ({m.train_pages} training, {m.heldout_pages} held out), "
        f"{m.num_tokens} tokens, {len(m.shards)} shard(s) in {time.monotonic() - started:.1f}s"
    )


@data_app.command("info")
def info(
    directory: Path = typer.Argument(..., help="A page store directory."),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Check shard sha256 against the manifest."
    ),
) -> None:
    """Show a page store's manifest (and verify its files)."""
    from protocol.pages import PageStore, PageStoreError

    try:
        store = PageStore.open(directory, verify=verify)
    except PageStoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    m = store.manifest
    rows = {
        "store digest": m.digest,
        "source": m.source or "-",
        "tokenizer": f"{m.tokenizer_hash} (vocab {m.vocab_size}, eos {m.eos_id})",
        "dtype": m.dtype,
        "geometry": f"seq_len {m.seq_len} x page_seqs {m.page_seqs} = {m.page_tokens} tokens/page",
        "pages": f"{m.num_pages} ({m.train_pages} training, {m.heldout_pages} held out)",
        "tokens": f"{m.num_tokens} ({m.num_tokens - m.num_pages * m.page_tokens} dropped at the end)",
        "shards": f"{len(m.shards)} of up to {m.shard_pages} pages",
        "verified": "yes (sha256)" if verify else "sizes only",
    }
    width = max(map(len, rows))
    for key, value in rows.items():
        typer.echo(f"{key:<{width}}  {value}")
