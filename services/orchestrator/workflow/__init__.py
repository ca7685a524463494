"""Workflows: operators and graphs run as trees of child jobs by one graph executor."""

from __future__ import annotations

from services.orchestrator.workflow.executor import WorkflowRun, is_workflow

__all__ = ["WorkflowRun", "is_workflow"]
