"""Configuration: the TOML schema, loading with precise error messages, and credential references."""

from gateway.config.loader import (
    DEFAULT_CONFIG_TOML,
    ConfigError,
    ConfigFileError,
    default_config,
    load_config,
    load_config_text,
    resolve_secret,
)
from gateway.config.schema import (
    Config,
    ImagesConfig,
    LogConfig,
    MetricsConfig,
    MockConfig,
    ModelConfig,
    ProviderConfig,
    ServerConfig,
    UpstreamConfig,
)

__all__ = [
    "DEFAULT_CONFIG_TOML",
    "Config",
    "ConfigError",
    "ConfigFileError",
    "ImagesConfig",
    "LogConfig",
    "MetricsConfig",
    "MockConfig",
    "ModelConfig",
    "ProviderConfig",
    "ServerConfig",
    "UpstreamConfig",
    "default_config",
    "load_config",
    "load_config_text",
    "resolve_secret",
]
