"""Generated code of agentrt.replay.v1."""
