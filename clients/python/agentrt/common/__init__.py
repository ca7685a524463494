"""Generated code of agentrt.common."""
