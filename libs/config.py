"""Settings from ``FOLIO_*`` environment variables, shared by every Folio process."""

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BeforeValidator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SERVICE_PORTS: dict[str, int] = {
    "auth": 50051,
    "user": 50052,
    "document": 50053,
    "llm": 50054,
    "task": 50055,
}


def _comma_or_json_list(value: object) -> object:
    """Accept a JSON list or a comma-separated string."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


# A list setting written either as JSON or as "a,b,c" in the environment.
StringList = Annotated[list[str], NoDecode, BeforeValidator(_comma_or_json_list)]


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
    # The same for services without fields of their own (name -> port, name -> host:port).
    service_ports: dict[str, int] = {}
    service_addrs: dict[str, str] = {}

    # Object storage (S3 API). Without s3_url, boto3's defaults (AWS) apply, unless
    # `folio dev` starts its embedded SeaweedFS; s3_public_url is the endpoint presigned
    # URLs name, for clients that reach storage by another address than the services.
    # Without keys, boto3's default credential chain (environment, instance role) applies.
    s3_url: str | None = None
    s3_public_url: str | None = None
    s3_bucket: str = "folio"
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None

    grace_period_seconds: float = 10.0
    default_deadline_seconds: float = 10.0

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    def port(self, service: str, default: int | None = None) -> int:
        """The port ``service`` listens on."""
        port = self.service_ports.get(service) or getattr(self, f"{service}_port", None) or default
        if port is None:
            # A service without settings of its own listens on the port it declares.
            from libs.service import registered_services

            declared = registered_services().get(service)
            if declared is None:
                raise KeyError(f"no port configured for service {service!r}")
            port = declared.port
        return int(port)

    def address(self, service: str) -> str:
        """The ``host:port`` other processes dial to reach ``service``."""
        configured = self.service_addrs.get(service) or getattr(self, f"{service}_addr", None)
        return configured or f"{self.service_host}:{self.port(service)}"


SettingsT = TypeVar("SettingsT", bound=Settings)


def settings_as(kind: type[SettingsT], base: Settings) -> SettingsT:
    """``base`` as ``kind``: the values it was given, and ``kind``'s own from the environment."""
    if isinstance(base, kind):
        return base
    return kind(**base.model_dump(exclude_unset=True))


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
