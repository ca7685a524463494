"""Generated code of agentrt.plugin."""
