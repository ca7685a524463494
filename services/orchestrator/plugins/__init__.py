"""Tool plugins: the registry and its store, health checks, and the tool sources of plugins."""

from services.orchestrator.plugins.client import PluginSource, PluginUnreachable, probe
from services.orchestrator.plugins.config import PluginConfig
from services.orchestrator.plugins.registry import PluginRegistry, PluginTools
from services.orchestrator.plugins.store import PluginStore, open_plugin_store

__all__ = [
    "PluginConfig",
    "PluginRegistry",
    "PluginSource",
    "PluginStore",
    "PluginTools",
    "PluginUnreachable",
    "open_plugin_store",
    "probe",
]
