"""Plugin resource names: "plugins/{plugin}"."""

from __future__ import annotations

from services.kit.names import ChosenIdCollection

PLUGINS = ChosenIdCollection("plugins", "plugin_id", "plugins/{plugin}")

plugin_name = PLUGINS.name
check_plugin_id = PLUGINS.check_id
parse_plugin_name = PLUGINS.parse
