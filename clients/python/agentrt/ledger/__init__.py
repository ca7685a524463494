"""Generated code of agentrt.ledger."""
