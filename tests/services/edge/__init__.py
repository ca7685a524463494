"""Tests of the edge (services/edge)."""
