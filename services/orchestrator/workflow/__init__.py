"""Workflows: operators and graphs run as trees of child jobs by one graph executor
(`executor`), and sub-agents a model starts with the run_agent tool (`sub_agents`)."""
