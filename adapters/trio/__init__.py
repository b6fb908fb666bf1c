"""proxycore on trio: ``serve(app, addrs, conf, grace=5.0, **options)``.

Select it with ``--backend trio``. See :mod:`.server`.
"""

from proxycore.adapters.trio.server import serve

__all__ = ["serve"]
