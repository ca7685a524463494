"""Tests of the engine service's model layer."""
