"""The policy service: policy sets of rules, and the decisions they make."""
