"""HTTP/2 from clients (RFC 9113) on the ``h2`` library: one connection object per client
connection (:class:`proxycore.h2.server.H2Conn`) and one :class:`proxycore.h2.server.H2Stream`
(a :class:`proxycore.codec.ServerStream`) per stream, each stream its own exchange."""
