"""Generated code of agentrt.policy."""
