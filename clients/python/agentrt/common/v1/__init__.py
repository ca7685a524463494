"""Generated code of agentrt.common.v1."""
