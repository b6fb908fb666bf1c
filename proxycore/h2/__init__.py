"""HTTP/2 from clients (RFC 9113): one connection object per client connection
(:class:`proxycore.h2.server.H2Conn`, over the sans-I/O
:class:`proxycore.h2.connection.Connection`) and one :class:`proxycore.h2.server.H2Stream`
(a :class:`proxycore.codec.ServerStream`) per stream, each stream its own exchange."""
