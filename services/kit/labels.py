"""Job labels that the runtime's own services set, and callers may not."""

from __future__ import annotations

WHAT_IF_LABEL = "agentrt.dev/what-if"
"""The label of a what-if job, a live re-execution of a recording (its value is the
recording's id): the orchestrator charges it to no budget, and the replay service reports
its usage instead. Only the replay service sets it; the gateway refuses it."""
