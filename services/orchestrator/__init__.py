"""The orchestrator service: workers that lease jobs and run the agent loop."""
