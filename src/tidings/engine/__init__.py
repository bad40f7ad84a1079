"""Where messages live and how they reach every gateway.

``base.Engine`` is the interface the gateway and the control plane see;
``embedded.EmbeddedEngine`` keeps everything in one process over ``tidings.log``.
"""

from tidings.engine.base import Engine, PublishResult

__all__ = ["Engine", "PublishResult"]
