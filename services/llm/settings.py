"""The LLM service's own settings, on top of those every Folio process shares."""

from typing import Literal, Self

from pydantic import model_validator

from libs.config import Settings, StringList


class LlmSettings(Settings):
    """Models, limits, timeouts and budgets of the LLM service (``FOLIO_LLM_*``)."""

    # "auto": Anthropic when an API key is configured, else (dev only) the offline model.
    llm_provider: Literal["auto", "anthropic", "offline"] = "auto"
    # Another Messages API endpoint (a proxy, or a local server in tests).
    anthropic_base_url: str | None = None
    llm_models: StringList = ["claude-sonnet-4-5", "claude-haiku-4-5"]
    llm_default_model: str = "claude-sonnet-4-5"
    llm_default_max_tokens: int = 1024
    llm_max_tokens_cap: int = 8192
    llm_max_messages: int = 100
    # The most UTF-8 bytes a request's messages, system and context may hold together.
    llm_max_input_bytes: int = 512 * 1024
    # Connecting, and waiting for the next bytes of an answer (not the whole answer).
    llm_connect_timeout_seconds: float = 5.0
    llm_read_timeout_seconds: float = 60.0
    # Retries of a request that failed before its first token (429, 529, 5xx, network).
    llm_max_retries: int = 2
    # Tokens each role may use per period; every kind of token counts.
    llm_budget_tokens_user: int = 0
    llm_budget_tokens_premium: int = 2_000_000
    llm_budget_tokens_admin: int = 10_000_000
    llm_quota_period: Literal["day", "month"] = "month"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.llm_default_model not in self.llm_models:
            raise ValueError("FOLIO_LLM_DEFAULT_MODEL must be one of FOLIO_LLM_MODELS")
        if not 0 < self.llm_default_max_tokens <= self.llm_max_tokens_cap:
            raise ValueError("FOLIO_LLM_DEFAULT_MAX_TOKENS must be 1..FOLIO_LLM_MAX_TOKENS_CAP")
        if self.is_production and self.llm_provider == "offline":
            raise ValueError("production refuses the offline model")
        return self
