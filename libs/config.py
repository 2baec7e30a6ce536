"""Settings from ``FOLIO_*`` environment variables, shared by every Folio process."""

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SERVICE_PORTS: dict[str, int] = {
    "auth": 50051,
    "user": 50052,
    "document": 50053,
    "llm": 50054,
    "task": 50055,
}

# The PostgreSQL schema each service owns (DESIGN §5).
SERVICE_SCHEMAS: dict[str, str] = {
    "auth": "auth",
    "user": "users",
    "document": "documents",
    "llm": "llm",
    "task": "tasks",
}


class Settings(BaseSettings):
    """Everything a Folio process reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="FOLIO_", extra="ignore")

    env: Literal["dev", "production"] = "dev"
    data_dir: Path = Path(".folio")
    database_url: str | None = None
    redis_url: str | None = None
    log_level: str = "INFO"

    # Tasks and the worker pool (DESIGN §6). A task's own time limit comes first, then
    # Celery's soft and hard limits, all below the broker's visibility timeout, so Redis
    # never hands a task that is still running to a second worker.
    task_time_limit_seconds: float = 300.0
    task_soft_limit_margin_seconds: float = 5.0
    task_hard_limit_margin_seconds: float = 15.0
    task_max_attempts: int = 3
    task_retry_backoff_seconds: float = 2.0
    task_retry_backoff_max_seconds: float = 300.0
    broker_visibility_timeout_seconds: int = 3600
    # How often the outbox relay looks for due messages when no notification wakes it.
    task_relay_poll_seconds: float = 1.0
    worker_concurrency: int = 2
    # Modules the worker imports besides every services/<domain>/tasks.py.
    worker_imports: list[str] = []

    # Secrets: AWS Secrets Manager when secrets_id is set (aws_endpoint_url points at
    # a local server in tests), else FOLIO_* variables, else generated in data_dir (dev).
    secrets_id: str | None = None
    aws_endpoint_url: str | None = None
    aws_region: str = "us-east-1"

    token_issuer: str = "https://auth.folio.local"
    token_audience: str = "folio-api"
    token_leeway_seconds: int = 30
    jwks_ttl_seconds: int = 300

    bind_host: str = "127.0.0.1"
    service_host: str = "127.0.0.1"
    auth_port: int = SERVICE_PORTS["auth"]
    user_port: int = SERVICE_PORTS["user"]
    document_port: int = SERVICE_PORTS["document"]
    llm_port: int = SERVICE_PORTS["llm"]
    task_port: int = SERVICE_PORTS["task"]
    gateway_port: int = 8080
    # Where to reach each service when it is not service_host:port (e.g. "user:50052").
    auth_addr: str | None = None
    user_addr: str | None = None
    document_addr: str | None = None
    llm_addr: str | None = None
    task_addr: str | None = None

    grace_period_seconds: float = 10.0
    default_deadline_seconds: float = 10.0

    # Google sign-in (auth service). The certs URL must serve Google's v1 format
    # ({kid: x509 PEM}); tests point both URLs at a local issuer.
    google_client_ids: Annotated[list[str], NoDecode] = []
    google_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    google_token_url: str = "https://oauth2.googleapis.com/token"
    google_hd_allowlist: Annotated[list[str], NoDecode] = []
    # Exact redirect URIs the code flow accepts; the code flow is off while empty.
    google_redirect_uris: Annotated[list[str], NoDecode] = []
    google_timeout_seconds: float = 10.0

    # Sessions: a refresh token dies after idle_ttl unused, a session after absolute_ttl.
    refresh_idle_ttl_seconds: int = 14 * 24 * 3600
    refresh_absolute_ttl_seconds: int = 30 * 24 * 3600
    # A new signing key is published this long before it signs; it must exceed every
    # verifier's JWKS cache TTL plus the auth service's key reload interval.
    signing_key_publish_delay_seconds: int = 600
    signing_keys_reload_seconds: float = 10.0

    # Sign-in and refresh attempts per client IP and per subject, per window.
    rate_limit_window_seconds: int = 60
    rate_limit_signin_per_ip: int = 20
    rate_limit_signin_per_subject: int = 10
    rate_limit_refresh_per_ip: int = 60
    rate_limit_refresh_per_subject: int = 30
    # Proxies in front of the gateway that append to X-Forwarded-For; the client
    # address is the entry this many places left of the one the gateway appended.
    trusted_proxy_hops: int = 0

    @field_validator(
        "google_client_ids", "google_hd_allowlist", "google_redirect_uris", mode="before"
    )
    @classmethod
    def _comma_or_json_list(cls, value: object) -> object:
        """Accept a JSON list or a comma-separated string."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    def port(self, service: str) -> int:
        """The port ``service`` listens on."""
        port: int = getattr(self, f"{service}_port")
        return port

    def address(self, service: str) -> str:
        """The ``host:port`` other processes dial to reach ``service``."""
        configured: str | None = getattr(self, f"{service}_addr")
        return configured or f"{self.service_host}:{self.port(service)}"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
