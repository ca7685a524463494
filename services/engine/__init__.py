"""The engine service: agentrt's LLM gateway (providers, routing, retries, idempotency)."""
