"""The LLM service: Claude completions with usage accounting and token budgets."""
