"""The data plane: WebSocket connections, subscriptions and fanout."""

from tidings.gateway.server import Gateway

__all__ = ["Gateway"]
