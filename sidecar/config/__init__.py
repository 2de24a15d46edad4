"""The one configuration object, built once from defaults, a YAML file, the environment
and flags, and passed down. ``schema`` declares every key and ``keys`` describes each
for the sources, the CLI and the docs; ``sources`` reads and checks the values, and
``rules`` checks what spans keys.
"""

from ..errors import ConfigError
from ..redact import REDACTED, redact_url
from .keys import SECTIONS, KeySpec, check_key_specs, key_specs
from .rules import TOKEN_MIN_BYTES, read_token_file, token_problem
from .schema import (
    ACCESS_LOG_FIELDS,
    ACCESS_LOG_TEXT_FIELDS,
    ENV_PREFIX,
    AdminConfig,
    AppConfig,
    Config,
    HealthCheckConfig,
    HealthConfig,
    LifespanConfig,
    LoggingConfig,
    MetricsConfig,
    ReloadConfig,
    ServerConfig,
    ShutdownConfig,
)
from .sources import check_settings, dump_config, load_config, require_target

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
