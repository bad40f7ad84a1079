"""The agent SDK. It depends on ``tidings.protocol`` only, never on the server."""

from tidings.sdk.client import Agent, Message, Subscription, connect

__all__ = ["Agent", "Message", "Subscription", "connect"]
