"""Generated code of agentrt.plugin.v1."""
