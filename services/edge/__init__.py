"""The edge: Envoy in front of the gateway, configured from AGENTRT_EDGE_* variables."""
