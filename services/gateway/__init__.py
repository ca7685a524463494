"""The gateway service: agentrt's public front door (API keys, tenant scoping, RuntimeService)."""
