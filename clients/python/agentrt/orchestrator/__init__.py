"""Generated code of agentrt.orchestrator."""
