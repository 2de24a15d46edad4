"""The one configuration object, built once from defaults, a YAML file, the environment
and flags, and passed down. ``schema`` declares every key; ``sources`` reads and checks
the values.
"""

from ..errors import ConfigError
from .schema import (
    ACCESS_LOG_FIELDS,
    ACCESS_LOG_TEXT_FIELDS,
    ENV_PREFIX,
    REDACTED,
    SECTIONS,
    AdminConfig,
    AppConfig,
    Config,
    HealthCheckConfig,
    HealthConfig,
    KeySpec,
    LifespanConfig,
    LoggingConfig,
    MetricsConfig,
    ReloadConfig,
    ServerConfig,
    ShutdownConfig,
    check_key_specs,
    key_specs,
    redact_url,
)
from .sources import (
    TOKEN_MIN_BYTES,
    check_settings,
    dump_config,
    load_config,
    read_token_file,
    require_target,
    token_problem,
)

__all__ = [
    "ACCESS_LOG_FIELDS",
    "ACCESS_LOG_TEXT_FIELDS",
    "ENV_PREFIX",
    "REDACTED",
    "SECTIONS",
    "TOKEN_MIN_BYTES",
    "AdminConfig",
    "AppConfig",
    "Config",
    "ConfigError",
    "HealthCheckConfig",
    "HealthConfig",
    "KeySpec",
    "LifespanConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ReloadConfig",
    "ServerConfig",
    "ShutdownConfig",
    "check_key_specs",
    "check_settings",
    "dump_config",
    "key_specs",
    "load_config",
    "read_token_file",
    "redact_url",
    "require_target",
    "token_problem",
]
