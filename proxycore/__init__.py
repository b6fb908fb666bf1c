"""proxycore: a programmable HTTP proxy framework with a pure sans-I/O core.

Write a :class:`Proxy` subclass with Pingora's filter phases and serve it with :func:`run` on
any adapter (``asyncio``, ``uvloop``). The core (:class:`Engine`) takes events and returns
actions; it never touches sockets, clocks or threads.
"""

from proxycore._version import __version__
from proxycore.config import ServerConf, TlsSettings
from proxycore.engine import Engine
from proxycore.errors import ErrorSource, ErrorType, HTTPParseError, ProxyError
from proxycore.h1.parse import Limits
from proxycore.http import Headers, RequestHeader, ResponseHeader
from proxycore.lb import Backend, LoadBalancer, RoundRobin
from proxycore.peer import Peer
from proxycore.phases import Proxy, blocking, nonblocking
from proxycore.runner import BACKENDS, StartupError, run
from proxycore.session import Session
from proxycore.tls import TlsInfo

__all__ = [
    "BACKENDS",
    "Backend",
    "Engine",
    "ErrorSource",
    "ErrorType",
    "HTTPParseError",
    "Headers",
    "Limits",
    "LoadBalancer",
    "Peer",
    "Proxy",
    "ProxyError",
    "RequestHeader",
    "ResponseHeader",
    "RoundRobin",
    "ServerConf",
    "Session",
    "StartupError",
    "TlsInfo",
    "TlsSettings",
    "__version__",
    "blocking",
    "nonblocking",
    "run",
]
