"""Generated code of agentrt.orchestrator.v1."""
