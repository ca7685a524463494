"""Generated code of agentrt.engine."""
