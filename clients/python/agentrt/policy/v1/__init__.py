"""Generated code of agentrt.policy.v1."""
