"""Generated code of agentrt.gateway.v1."""
