"""The ledger service: usage records, prices, budgets and reservations that never overspend."""
