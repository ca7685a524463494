"""Generated code of agentrt.gateway."""
