"""tidings: realtime messaging infrastructure for multi-agent AI systems."""

from tidings.sdk import Agent, Message, Subscription, connect

__version__ = "0.1.0"

__all__ = ["Agent", "Message", "Subscription", "__version__", "connect"]
