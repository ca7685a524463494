"""Tools in the agent loop: where they come from, how one call runs, and what wraps it."""
