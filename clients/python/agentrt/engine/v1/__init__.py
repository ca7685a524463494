"""Generated code of agentrt.engine.v1."""
