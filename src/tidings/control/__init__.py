"""The control plane: an HTTP API (FastAPI on uvicorn) beside the gateway, and the dashboard."""

from tidings.control.api import create_app
from tidings.control.server import ControlPlane

__all__ = ["ControlPlane", "create_app"]
