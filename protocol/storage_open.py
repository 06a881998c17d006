"""Open this node's own store from a settings URL (``file://`` or ``s3://``).

Apart from ``protocol.storage`` so that the contract never imports a backend: the S3 backend
imports the contract, and this module imports both (no import circle).
"""

from __future__ import annotations

from pathlib import Path

from protocol.storage import _URL_FORMS, LocalStorage, Storage, parse_s3_url

__all__ = ["open_storage"]


def open_storage(url: str) -> Storage:
    """The backend a settings URL names (see ``_URL_FORMS``); ``ValueError`` for anything else.

    For this node's *own* store. A store named by a peer goes through
    ``protocol.peer_storage.open_peer_storage``, which applies the endpoint policy first.
    """
    scheme, sep, rest = url.partition("://") if isinstance(url, str) else ("", "", "")
    scheme = scheme.lower()
    if sep and scheme == "file":
        if not rest:
            raise ValueError(f"storage URL {url!r} names no directory; {_URL_FORMS}")
        return LocalStorage(Path(rest))
    if sep and scheme == "s3":
        from protocol.storage_s3 import S3Storage  # boto3 is an extra: loaded only for s3://

        loc = parse_s3_url(url)
        return S3Storage(loc.bucket, loc.prefix, endpoint_url=loc.endpoint, region=loc.region,
                         path_style=loc.path_style)
    raise ValueError(f"unsupported storage URL {url!r}; {_URL_FORMS}")
