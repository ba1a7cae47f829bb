"""The Envoy gateway in front of the scheduler(s): its config (rendered from one Jinja2 template,
deploy/envoy/envoy.yaml.j2) and the Envoy process `cpa gateway` runs. docs/GATEWAY.md.
"""

from .config import GatewayConfig, deploy_dir, render_envoy_config
from .envoy import EnvoyGateway, GatewayError, envoy_binary

__all__ = [
    "GatewayConfig",
    "deploy_dir",
    "render_envoy_config",
    "EnvoyGateway",
    "GatewayError",
    "envoy_binary",
]
