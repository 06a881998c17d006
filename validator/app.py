"""Startup wiring: turn settings and hyper-parameters into a running validator or worker.

The startup sequence (like the FastAPI template's prestart): migrate the database (or, with
``migrate_on_start`` off, check that a separate ``gauntlet validator migrate`` did), store
the resolved configuration as a ``run_config`` row, load the hotkey, commit this
validator's role and storage URL on chain (``validator:<url>``: every node reads its
proposals and history there, and no validator scores it as a miner),
connect Redis if configured (degraded without it), and build the
:class:`validator.window.ValidatorContext`. Nothing here scores anything.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Any

from chain.base import Chain, ChainError
from chain.connect import open_chain
from chain.wallets import load_hotkey
from protocol.follow import Decision, Follower, OwnStore, store_opener, validator_commitment
from protocol.global_model import GlobalModel
from protocol.hparams import HParams, load_hparams
from protocol.settings import Settings
from protocol.storage_open import open_storage
from validator import metrics
from validator.db import repo
from validator.db.session import make_engine, migrate, require_head, session_factory
from validator.evaluate import Compute
from validator.stage1 import SketchHistory
from validator.stage2 import Stage2Runner
from validator.window import Carry, ValidatorContext

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    allow_local_storage: bool = False  # GAUNTLET_ALLOW_PRIVATE_MINER_STORAGE also sets it (see build_context)
    per_peer_timeout_s: float = 30.0
    remote_timeout_s: float = 120.0
    commit_storage_url: bool = True


def _redis(settings: Settings, validator_hotkey: str) -> tuple[Any, Any] | tuple[None, None]:
    """(WorkQueue, LeaderLease) when Redis is configured, else (None, None).

    Keys are per validator hotkey, so validators sharing one Redis never take each other's
    jobs or weight-setting lease; a worker names the validator it serves.
    """
    if not settings.redis_url:
        return None, None
    from validator.queue import LeaderLease, RedisHealth, WorkQueue, connect

    client = connect(settings.redis_url)
    health = RedisHealth(client)
    prefix = f"gauntlet:{validator_hotkey}"
    return (WorkQueue(client, stream=f"{prefix}:eval", health=health),
            LeaderLease(client, key=f"{prefix}:leader", health=health))


def leader_check(lease: Any, owner: str) -> Any:
    """A callable telling whether this process may set weights now (lease held, or no Redis)."""
    from validator.queue import QueueUnavailable

    def is_leader() -> bool:
        if lease is None:
            return True
        try:
            return bool(lease.acquire(owner))
        except QueueUnavailable:
            # Degraded: the DB's unique weight set per window still prevents a double set.
            log.warning("Redis down: acting as leader; the database guards against a second weight set")
            return True

    return is_leader


def compute_of(settings: Settings) -> Compute:
    """Stage 2's device and dtype; a CUDA device on a machine without one stops here, before any work."""
    try:
        return Compute(device=settings.device, dtype=settings.dtype)
    except ValueError as exc:
        raise SystemExit(f"gauntlet validator: {exc}") from None


def build_context(settings: Settings, hp: HParams | None = None, *, options: RunOptions | None = None,
                  chain: Chain | None = None, keypair: Any = None, pages: Any = None) -> ValidatorContext:
    """The validator's long-lived context; ``chain``/``keypair``/``pages`` may be injected (tests)."""
    from protocol.codec import CodecConfig
    from protocol.pages import default_store

    options = options or RunOptions()
    if settings.allow_private_miner_storage:  # the settings' dev flag, as if --allow-local-storage were given
        options = replace(options, allow_local_storage=True)
    hp = hp or load_hparams(settings.hparams)
    chain = chain or open_chain(settings.chain_url)
    keypair = keypair or load_hotkey(settings.wallet_path, settings.wallet_name, settings.wallet_hotkey)
    if settings.migrate_on_start:
        migrate(settings.db_url)
    else:  # a one-shot `gauntlet validator migrate` owns the schema (no two processes run Alembic at once)
        require_head(settings.db_url)
    sessions = session_factory(make_engine(settings.db_url))
    with sessions() as s:
        repo.record_run_config(s, config={"settings": settings.model_dump(mode="json"), "hparams": hp.model_dump(
            mode="json"), "options": options.__dict__}, hotkey=keypair.ss58_address)
    if options.commit_storage_url:
        commitment = validator_commitment(settings.storage_url)
        try:
            if chain.commitments(settings.netuid).get(keypair.ss58_address) != commitment:
                chain.commit(keypair, settings.netuid, commitment)
        except ChainError as exc:
            log.warning("could not commit the storage URL on chain: %s", exc)
    pages = pages if pages is not None else default_store(settings.home, hp.data)
    queue, lease = _redis(settings, keypair.ss58_address)
    dispatcher = None
    if queue is not None:
        from validator.worker import QueueDispatcher

        dispatcher = QueueDispatcher(queue)
    own_storage = open_storage(settings.storage_url)
    follower = Follower(hp, chain, settings.netuid,
                        open_store=store_opener(allow_local=options.allow_local_storage),
                        own=OwnStore(keypair.ss58_address, own_storage, keypair),
                        on_decision=decision_recorder(sessions))
    return ValidatorContext(
        hp=hp, chain=chain, netuid=settings.netuid, keypair=keypair, own_storage=own_storage, follower=follower,
        sessions=sessions, codec_cfg=CodecConfig.from_params(hp.codec),
        stage2=Stage2Runner(pages, dispatcher=dispatcher, remote_timeout_s=options.remote_timeout_s,
                            num_pages=pages.num_pages, compute=compute_of(settings)),
        allow_local_storage=options.allow_local_storage, per_peer_timeout_s=options.per_peer_timeout_s,
        is_leader=leader_check(lease, f"{keypair.ss58_address}:{os.getpid()}"),
        carry=Carry(history=SketchHistory(hp.scoring.copy_history_windows)),
    )


def decision_recorder(sessions: Any) -> Any:
    """Store each window's applied aggregate (publisher, theta_{W+1} hash) in the validator's DB."""

    def record(window: int, decision: Decision, model: GlobalModel) -> None:
        with sessions() as s:
            repo.record_decision(s, window=window, publisher=decision.publisher if decision.kind == "chosen" else None,
                                 next_model_hash=model.hash)

    return record


def build_worker(settings: Settings, *, validator_hotkey: str, allow_local_storage: bool,
                 consumer: str, hp: HParams | None = None, pages: Any = None) -> Any:
    from protocol.codec import CodecConfig
    from protocol.pages import default_store
    from validator.worker import Worker, WorkerConfig

    hp = hp or load_hparams(settings.hparams)
    queue, _ = _redis(settings, validator_hotkey)
    if queue is None:
        raise SystemExit("gauntlet validator worker needs redis_url (GAUNTLET_REDIS_URL)")
    allow = allow_local_storage or settings.allow_private_miner_storage
    cfg = WorkerConfig(consumer=consumer, validator_hotkey=validator_hotkey, allow_local_storage=allow,
                       compute=compute_of(settings))
    return Worker(cfg, hp=hp, queue=queue, publish_storage=open_storage(settings.storage_url),
                  pages=pages if pages is not None else default_store(settings.home, hp.data), codec_cfg=CodecConfig.from_params(hp.codec))


def serve_metrics(settings: Settings) -> None:
    metrics.serve(settings.metrics_port)
