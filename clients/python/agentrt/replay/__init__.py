"""Generated code of agentrt.replay."""
