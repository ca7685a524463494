"""Generated code of agentrt.jobs."""
