"""Generated code of agentrt.jobs.v1."""
