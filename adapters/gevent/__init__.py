"""The gevent adapter: gevent's hub drives the sockets; filter phases run in greenlets."""

from proxycore.adapters.gevent.server import GeventServer, serve

__all__ = ["GeventServer", "serve"]
