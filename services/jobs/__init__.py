"""The jobs service: job records, their state machine, leases, checkpoints and events."""
