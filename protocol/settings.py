"""Node settings: where things live and how to reach them (not consensus parameters).

Precedence, highest first:

1. CLI flags (passed to ``load_settings`` as ``overrides``; ``None`` means "not given");
2. ``GAUNTLET_*`` environment variables (set but empty still counts as set);
3. btcli's environment variables, for the settings btcli shares with us (``BTCLI_ENV``):
   ``BT_NETWORK`` (chain), ``BT_WALLET`` (wallet name), ``BT_WALLET_HOTKEY`` and
   ``BT_WALLET_PATH``, the names the SDK's own ``btcli`` reads (``bittensor/cli/main.py``),
   so an operator's shell set up for btcli drives both tools alike; empty values are ignored;
4. the TOML settings file (``--config`` or ``GAUNTLET_CONFIG``);
5. defaults.

Environment above file is btcli's own rule (flag > env > config file), so one rule covers
both. ``BT_CHAIN_ENDPOINT`` is not mapped: the SDK reads it itself as the address of the
``local`` network name (``bittensor/settings.py``), which ``chain = "local"`` then honours.
The defaults are the embedded development setup: local chain, SQLite, a local storage
directory, no Redis. Consensus parameters live in the hyper-parameter file instead
(``protocol.hparams``), because every node of a subnet must share those.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = [
    "Settings",
    "SettingsError",
    "load_settings",
]

# The settings file named by the caller; a ContextVar keeps load_settings() free of global side effects.
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("gauntlet_config_file", default=None)


# Setting -> the btcli environment variable that supplies it when GAUNTLET_<SETTING> is unset.
BTCLI_ENV: dict[str, str] = {
    "chain": "BT_NETWORK",
    "wallet_name": "BT_WALLET",
    "wallet_hotkey": "BT_WALLET_HOTKEY",
    "wallet_path": "BT_WALLET_PATH",
}


class SettingsError(ValueError):
    """The node's settings are invalid; the message names the field."""


def _default_home() -> Path:
    return Path(os.environ.get("GAUNTLET_HOME", Path.home() / ".gauntlet"))


class _BtcliEnvSource(PydanticBaseSettingsSource):
    """btcli's ``BT_*`` variables as a settings source, ranked below ``GAUNTLET_*`` by its place in the list."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        var = BTCLI_ENV.get(field_name)
        value = os.environ.get(var) if var else None
        return value or None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {name: value for name, var in BTCLI_ENV.items() if (value := os.environ.get(var))}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GAUNTLET_", extra="forbid", validate_default=True)

    home: Path = Field(default_factory=_default_home, description="Directory for local state.")
    hparams: Path | None = Field(None, description="Hyper-parameter file; the packaged default when unset.")
    netuid: int = Field(1, ge=0, description="Subnet id on the chain.")
    chain: str = Field("", description="'local:<path-to-chain.db>', 'ws://host:port', 'test' or 'finney'. Empty: local chain in home.")
    storage: str = Field("", description="'file://<dir>' or 's3://bucket/prefix'. Empty: a directory in home.")
    database_url: str = Field("", description="SQLAlchemy URL. Empty: SQLite in home.")
    redis_url: str | None = Field(None, description="redis://host:port/db; unset runs without Redis.")
    wallet_path: Path = Field(Path.home() / ".bittensor" / "wallets", description="Wallet directory (SDK layout).")
    wallet_name: str = "default"
    wallet_hotkey: str = "default"
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus port; unset disables the exporter.")
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=0, le=65535)
    log_level: str = "INFO"
    migrate_on_start: bool = Field(
        True, description="`validator run` brings the database schema to head before it starts. Off "
        "(GAUNTLET_MIGRATE_ON_START=false) where one `gauntlet validator migrate` runs first, as the Compose "
        "deployment's one-shot migrate service does: the validator then refuses a schema that is not at head.")
    device: str = Field("cpu", description="Where the validator and its workers run Stage 2: cpu, cuda or cuda:N.")
    dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="Stage-2 precision: fp32, or bf16 autocast (fp32 weights; for GPUs).")
    allow_private_miner_storage: bool = Field(
        False, description="Development only: follow miners' file:// stores, plain-http endpoints and loopback or "
        "private hosts (local networks, tests). Off, a validator contacts only public https S3 endpoints.")

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, _BtcliEnvSource(settings_cls)]
        config = _CONFIG_FILE.get() or os.environ.get("GAUNTLET_CONFIG")
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)

    # Resolved locations; empty settings mean "inside home".
    @property
    def chain_url(self) -> str:
        return self.chain or f"local:{self.home / 'chain.db'}"

    @property
    def storage_url(self) -> str:
        return self.storage or f"file://{self.home / 'store'}"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'validator.db'}"


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from a TOML file, the environment and explicit overrides (None values ignored)."""
    config = config or os.environ.get("GAUNTLET_CONFIG")
    if config and not Path(config).is_file():
        raise SettingsError(f"settings file not found: {config}")
    token = _CONFIG_FILE.set(Path(config) if config else None)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"invalid settings: {problems}") from None
    finally:
        _CONFIG_FILE.reset(token)
