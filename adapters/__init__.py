"""Event-loop adapters for proxycore (installed as ``proxycore.adapters``).

Each adapter accepts connections, moves bytes, runs timers and deferred filters, and executes the
core's actions. It makes no protocol decision; see docs/adapters.md for the contract.
"""
