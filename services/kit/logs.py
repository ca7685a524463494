"""Process-wide logging: one line per record, level from AGENTRT_LOG_LEVEL."""

from __future__ import annotations

import logging

from services.kit.config import ConfigError, env_str
from services.kit.request_context import RequestContextFilter

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def configure_logging(request_log: bool) -> None:
    """AGENTRT_LOG_LEVEL (default INFO) for every logger; the per-RPC request log
    (`agentrt.requests`) is kept at that level when `request_log`, else only its failures.
    Every line ends with the request context of the work it is about (tenant, job, ...)."""
    level = env_str("AGENTRT_LOG_LEVEL", "INFO").upper()
    if level not in LEVELS:
        raise ConfigError(f"AGENTRT_LOG_LEVEL: expected one of {', '.join(LEVELS)}, got {level!r}")
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s%(request_context)s",
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestContextFilter())
    if not request_log and level != "DEBUG":
        logging.getLogger("agentrt.requests").setLevel(logging.WARNING)
