"""aiki_server: the aiki durable execution server. Embed it with `Server`, or run `aiki-server`."""

__version__ = "0.1.0"

from .app import Server, create_app
from .config import ServerConfig

__all__ = ["Server", "ServerConfig", "__version__", "create_app"]
