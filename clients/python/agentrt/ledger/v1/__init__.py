"""Generated code of agentrt.ledger.v1."""
