"""Data files shipped with the protocol package (the default-corpus tokenizer)."""
