"""``proxycore.run``: pick an adapter by name and serve a Proxy with it.

Theory of operation: this module only parses listen addresses and dispatches; the adapter
module is imported lazily so the core stays free of event-loop imports. It is also the process
entry point of a user's script: a start-up failure (a listen address that cannot be bound, a
backend whose package is missing, a worker that fails before serving) is a
:class:`StartupError` carrying one line, which :func:`run` writes to stderr before exiting with
status 2 (``exit_on_error=False`` raises it instead); ``proxycore.cli`` prints it the same way.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

from proxycore.config import ServerConf
from proxycore.phases import Proxy

__all__ = [
    "BACKENDS",
    "BACKEND_EXTRAS",
    "StartupError",
    "assign_tls_ports",
    "listen_scheme",
    "load_backend",
    "parse_listen",
    "resolve_backend",
    "run",
]


class StartupError(Exception):
    """The server cannot start; ``str(e)`` is one line naming what and why (e.g. ``cannot listen
    on 127.0.0.1:80: permission denied (...)``). Nothing is left running when it is raised."""


# backend name -> (module, extra options)
BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("proxycore.adapters.asyncio", {"uvloop": False}),
    "uvloop": ("proxycore.adapters.asyncio", {"uvloop": True}),
    "gevent": ("proxycore.adapters.gevent", {}),
    "threads": ("proxycore.adapters.threads", {}),
    "trio": ("proxycore.adapters.trio", {}),
}

# backend name -> the packages it imports, all installed by the extra of the same name
# (``pip install "proxycore[uvloop]"``; see pyproject.toml)
BACKEND_EXTRAS: dict[str, tuple[str, ...]] = {
    "uvloop": ("uvloop",),
    "gevent": ("gevent",),
    "trio": ("trio",),
}


def resolve_backend(name: str) -> tuple[str, dict[str, Any]]:
    """A registered backend name, or the dotted path of an adapter module that has ``serve``
    (for adapters that live outside this repository). Raises ValueError naming the value."""
    if name in BACKENDS:
        return BACKENDS[name]
    if "." in name:
        return name, {}
    raise ValueError(
        f"unknown backend {name!r}; choose from {', '.join(BACKENDS)} or give a module path"
    )


def load_backend(name: str) -> tuple[Any, dict[str, Any]]:
    """Import the adapter module of backend ``name`` → (module, extra options). A registered
    backend whose package is missing raises :class:`StartupError` naming the extra to install;
    an unknown name raises ValueError."""
    module_name, extra = resolve_backend(name)
    try:
        for package in BACKEND_EXTRAS.get(name, ()):
            importlib.import_module(package)
        return importlib.import_module(module_name), extra
    except ImportError as e:
        missing = (e.name or "").partition(".")[0]
        if name in BACKEND_EXTRAS and missing and missing != "proxycore":
            raise StartupError(
                f"the {name} backend needs the {missing} package, which is not installed: "
                f'pip install "proxycore[{name}]"'
            ) from None
        raise StartupError(f"cannot load backend {name!r}: {e}") from None


def listen_scheme(text: str) -> str | None:
    """``"https"``/``"http"`` for a listen address written with that prefix, else None."""
    for scheme in ("https", "http"):
        if text.startswith(scheme + "://"):
            return scheme
    return None


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``, optionally prefixed ``http://`` or ``https://`` →
    (host, port); raises ValueError naming the value."""
    scheme = listen_scheme(text)
    addr = text[len(scheme) + 3 :] if scheme else text
    host, sep, port_s = addr.rpartition(":")
    if not sep or not host or not port_s.isdigit() or not 0 <= int(port_s) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_s)


def run(
    app: Proxy,
    listen: Sequence[str] = ("127.0.0.1:8080",),
    backend: str = "asyncio",
    conf: ServerConf | None = None,
    *,
    record: str | None = None,
    workers: int = 1,
    exit_on_error: bool = True,
    daemon: bool = False,
    pid_file: str | None = None,
    error_log: str | None = None,
    user: str | None = None,
    group: str | None = None,
    upgrade: bool = False,
    **options: Any,
) -> None:
    """Serve ``app`` on every ``listen`` address until SIGTERM (graceful) or SIGINT (fast).

    ``backend`` is one of :data:`BACKENDS` or the dotted path of an adapter module with a
    ``serve(app, addrs, conf, **options)`` function. ``conf`` holds timeouts and limits.
    ``record`` names a directory for session traces (one file per client connection),
    created if missing (its parent must exist); one that cannot be used is a start-up error.
    ``workers`` > 1 forks that many worker processes sharing the ports (SO_REUSEPORT) under a
    supervisor that forwards SIGTERM/SIGINT/SIGUSR1/SIGHUP; a worker that fails before serving
    stops them all (a :class:`StartupError`), one that dies later is restarted with a back-off.

    Process management (Pingora's server fields; see :mod:`proxycore.adapters.daemon`):
    ``daemon`` detaches (double fork, ``setsid``, stdin/stdout/stderr to ``/dev/null`` or
    ``error_log``); the calling process then exits 0 once the daemon serves, or fails as
    below with the daemon's start-up error; in the daemon, ``run`` returns after shutdown as
    in the foreground. ``pid_file`` (default ``/tmp/proxycore.pid`` in daemon mode, none
    otherwise) is written with the serving process's pid (the supervisor's with ``workers``),
    refused if it names a running process, replaced if stale, removed on exit.
    ``error_log`` is a file that stderr (and in daemon mode stdout) is appended to.
    ``user``/``group``: each serving process switches to them (supplementary groups cleared)
    right after binding its listeners, so ports below 1024 work when started as root; an
    unknown name is a start-up error before anything binds.

    Shutdown (SIGTERM, or the old process after an upgrade): the listeners close, exchanges
    in flight get ``conf.grace_period`` seconds to finish (``grace=`` sets it too), then
    connections still writing their last bytes ``conf.shutdown_timeout`` more. SIGINT: at
    once. SIGHUP reloads the TLS certificates; SIGUSR1 prints a stats line.

    ``upgrade`` (``-u``): take the listening sockets over from the running process instead of
    binding them: wait on ``conf.upgrade_sock`` until it hands them over (its SIGQUIT), serve
    on them, then tell it to drain (see :mod:`proxycore.adapters.upgrade`).

    A start-up failure writes one line (``proxycore: error: ...``) to stderr and exits with
    status 2 (``SystemExit(2)``, no traceback); with ``exit_on_error=False`` it raises
    :class:`StartupError` instead. Invalid arguments raise ValueError.
    """
    managed: dict[str, Any] = {
        "daemon": daemon,
        "pid_file": pid_file,
        "error_log": error_log,
        "user": user,
        "group": group,
        "upgrade": upgrade,
    }
    if not exit_on_error:
        _run(app, listen, backend, conf, record=record, workers=workers, **managed, **options)
        return
    try:
        _run(app, listen, backend, conf, record=record, workers=workers, **managed, **options)
    except StartupError as e:
        sys.stderr.write(f"proxycore: error: {e}\n")
        sys.stderr.flush()
        raise SystemExit(2) from None


def _run(
    app: Proxy,
    listen: Sequence[str],
    backend: str,
    conf: ServerConf | None,
    *,
    record: str | None,
    workers: int,
    daemon: bool = False,
    pid_file: str | None = None,
    error_log: str | None = None,
    user: str | None = None,
    group: str | None = None,
    upgrade: bool = False,
    **options: Any,
) -> None:
    addrs = [parse_listen(a) for a in listen]
    conf = conf or ServerConf()
    grace = options.pop("grace", None)
    if grace is not None:  # (the older name of grace_period)
        conf.grace_period = float(grace)
    conf.check()
    assign_tls_ports(listen, addrs, conf)
    if record is not None:
        conf.record_dir = record
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    module, extra = load_backend(backend)
    if conf.record_dir:  # before anything binds or forks: one StartupError naming the path
        from proxycore.adapters import prepare_record_dir

        prepare_record_dir(conf.record_dir)
    lifecycle: Any = None
    if daemon or pid_file or error_log or user or group:
        lifecycle = importlib.import_module("proxycore.adapters.daemon").Lifecycle(
            daemon=daemon,
            pid_file=pid_file,
            error_log=error_log,
            user=user,
            group=group,
            upgrade=upgrade,
        )
        lifecycle.prepare()  # before anything binds or forks: one StartupError
    cfg = conf

    def start() -> None:
        sockets = importlib.import_module("proxycore.adapters._sockets")
        admin_server = _start_admin(cfg, workers)
        handover: Any = None
        if upgrade:
            handover = importlib.import_module("proxycore.adapters.upgrade").Handover.wait(
                cfg.upgrade_sock,
                user_uid=None if lifecycle is None else lifecycle.uid,
                user_gid=None if lifecycle is None else lifecycle.gid,
            )
            sockets.inherited[:] = handover.sockets
        try:
            if workers == 1:
                if handover is not None:
                    sockets.listening_hooks.append(lambda _addrs: handover.ready())
                module.serve(app, addrs, cfg, **extra, **options)
                return
            supervisor = importlib.import_module("proxycore.adapters.workers")
            # The supervisor binds (or takes over) the listeners; every worker serves them.
            bound = sockets.bind_listeners(addrs, cfg.reuse_port)
            sockets.inherited[:] = bound
            sockets.inherited_shared = True  # type: ignore[attr-defined]  # (kept for each worker)
            sockets.upgrade_role = "worker"  # type: ignore[attr-defined]  # (SIGQUIT: ours)

            def serve_one(index: int) -> None:
                if admin_server is not None:  # (the supervisor's: it serves /metrics)
                    admin_server.httpd.socket.close()
                    admin_server.board.index = index
                module.serve(app, addrs, cfg, **extra, **options)

            def on_ready() -> None:
                if lifecycle is not None:
                    lifecycle.ready()
                if handover is not None:
                    handover.ready()

            supervisor.supervise(
                workers,
                serve_one,
                on_ready=on_ready,
                listeners=bound,
                upgrade_sock=cfg.upgrade_sock,
                admin_board=None if admin_server is None else admin_server.board,
            )
        except BaseException as e:
            if handover is not None:
                handover.failed(str(e) if isinstance(e, StartupError) else repr(e))
            raise
        finally:
            if admin_server is not None:
                admin_server.stop()
                if workers > 1:
                    admin_server.board.remove()

    if lifecycle is None:
        start()
    else:
        lifecycle.run(start, hooks=workers == 1)


def _start_admin(conf: ServerConf, workers: int) -> Any:
    """The admin listener of ``conf.admin`` (HOST:PORT), serving on a thread of this process
    (with ``workers`` > 1 the supervisor: a file board its workers publish to), or None."""
    if conf.admin is None:
        return None
    admin = importlib.import_module("proxycore.adapters.admin")
    host, port = parse_listen(conf.admin)
    # (through importlib: the compiled build's type check follows runner's imports, and
    # conffile's would bring in tlsconfig and cryptography)
    problem = importlib.import_module("proxycore.conffile").admin_address_problem(
        conf.admin, conf.admin_allow_non_loopback
    )
    if problem is not None:
        raise StartupError(f"admin listener: {problem}")
    board = admin.FileBoard() if workers > 1 else admin.Board()
    admin.board = board  # type: ignore[attr-defined]  # (the drivers publish to it)
    return admin.AdminServer(host, port, board).start()


def assign_tls_ports(
    listen: Sequence[str], addrs: Sequence[tuple[str, int]], conf: ServerConf
) -> None:
    """With ``conf.tls`` set, every listen address speaks TLS unless written ``http://``;
    ``https://`` without ``conf.tls`` is an error. TLS listeners are known by their port."""
    tls_ports: list[int] = []
    plain_ports: list[int] = []
    for text, (_, port) in zip(listen, addrs, strict=True):
        scheme = listen_scheme(text)
        if scheme == "https" or (scheme is None and conf.tls is not None):
            if conf.tls is None:
                raise ValueError(f"listen address {text!r} needs a TLS certificate")
            if port == 0:
                raise ValueError(f"TLS listen address {text!r} needs an explicit port")
            tls_ports.append(port)
        else:
            plain_ports.append(port)
    clash = set(tls_ports) & set(plain_ports)
    if clash:
        raise ValueError(f"port {min(clash)} is used by both a TLS and a plain listener")
    if conf.tls is not None:
        conf.tls.ports = tls_ports
