"""Model providers the engine routes completions to."""
