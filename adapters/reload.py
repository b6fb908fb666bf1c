"""SIGHUP: reloading the configuration file in a serving process, without dropping a connection.

Theory of operation: ``proxycore reverse-proxy -c FILE`` and ``proxycore run APP -c FILE``
register, before they start serving, how the file was loaded (:func:`set_source`: the loader
that reads, checks and builds it exactly as start-up does, with the flags typed at start-up
applied over it again, and what start-up built). Every adapter's SIGHUP handler calls
:func:`reload` on the thread that feeds its engine; with ``--workers`` the supervisor forwards
the signal and each worker reloads on its own (the supervisor, which serves nothing, does not).

1. The file is read, checked and built again (the YAML, the schema, the flags, the
   certificates, the routes, the app's own sections) on a worker thread (the event loop keeps
   serving; under gevent's monkey patching, on the hub, where blocking calls yield), and the
   listener certificates are loaded. Any problem refuses the reload: one ERROR line
   ``configuration reload refused, keeping the current configuration: <the start-up
   message>`` and the line ``proxycore config reload refused`` on standard output; nothing
   changes.
2. Back on the loop: settings that only a new process can apply (the listeners, the backend,
   the workers, daemon, user and group, the pid file, the error log's path, the upgrade
   socket, ``record``, ``busy_poll``, ``reuse_port``) keep their running
   values, and if the file changed them, one WARNING line names them; everything else is
   applied. The upstream groups whose settings did not change are taken over with their
   state and health checks (:meth:`proxycore.builtin.RoutedProxy.keep_groups`); the access
   log is reopened (a file logrotate renamed away gets a new one at the path), or replaced if
   its path or format changed; the process's log level is set; the error log (with
   ``error_log``) is reopened onto standard error. Then one
   :class:`proxycore.events.Reconfigure` event hands the new app, ``ServerConf``,
   certificates, access log and services to the engine, which swaps them between two events:
   exchanges in flight finish with the app they started with, new ones use the new one.
3. ``proxycore config reloaded`` (and ``proxycore tls reloaded`` when the listeners have
   certificates) on standard output, and an INFO log line.

Without a configuration file (flags only), SIGHUP re-reads the TLS certificates
(:func:`proxycore.adapters.reload_tls`) and reopens the access log, as before. A SIGHUP that
arrives while a reload is being prepared runs once more after it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["UPGRADE_ONLY", "reload", "set_source"]

log = logging.getLogger("proxycore")

# The file's settings a reload cannot apply (a new process must: ``-u``).
UPGRADE_ONLY = (
    "listeners", "backend", "threads", "daemon", "pid_file", "error_log", "user", "group",
    "upgrade_sock", "work_stealing", "record", "busy_poll", "reuse_port",
)  # fmt: skip


class _Source:
    __slots__ = ("command", "conf", "load", "path", "start")

    def __init__(
        self, load: Callable[[], Any], start: Any, conf: dict[str, Any], command: str, path: str
    ) -> None:
        self.load = load  # -> proxycore.cliconf.Loaded
        self.start = start  # the RunArgs start-up served
        self.conf = conf  # the effective configuration start-up served
        self.command = command
        self.path = path


_source: _Source | None = None
_running = False  # a reload is being prepared
_again = False  # a SIGHUP came meanwhile


def set_source(
    load: Callable[[], Any], start: Any, conf: dict[str, Any], command: str, path: str
) -> None:
    """Register how the configuration file is loaded (``load()`` returns a
    :class:`proxycore.cliconf.Loaded`) and what start-up built from it (``start``, a
    :class:`proxycore.conffile.RunArgs`; ``conf``, the effective configuration)."""
    global _source
    _source = _Source(load, start, conf, command, path)


def reload(driver: Any) -> None:
    """SIGHUP (see the module docstring). ``driver``: the adapter's
    :class:`~proxycore.adapters._sockets.SocketDriver`; call on the thread that feeds its
    engine, between two events."""
    global _running, _again
    from proxycore.adapters import reload_tls
    from proxycore.adapters.access import reopen_access_log

    src = _source
    if src is None:
        reload_tls(driver.engine)
        reopen_access_log()
        return
    if _running:
        _again = True
        return
    _running = True
    engine = driver.engine

    def done(result: Any = None, error: BaseException | None = None) -> None:
        global _running, _again
        _running = False
        try:
            if error is not None:
                _refuse(f"{type(error).__name__}: {error}")
            elif isinstance(result, str):
                _refuse(result)
            else:
                _apply(driver, src, result)
        except Exception:  # a reload must never cost the worker
            log.exception("configuration reload failed, keeping the current configuration")
            print("proxycore config reload refused", flush=True)
        if _again:
            _again = False
            reload(driver)

    def prepare() -> Any:
        return _prepare(src, engine.conf)

    if _gevent_patched():
        try:
            result = prepare()
        except Exception as e:
            done(error=e)
        else:
            done(result)
    else:
        driver.run_in_thread(prepare, done)


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


class _Prepared:
    __slots__ = ("app", "built", "changed", "client_tls", "conf", "server_tls")

    def __init__(
        self, app: Any, built: Any, conf: dict[str, Any], changed: list[str], server_tls: Any
    ) -> None:
        from proxycore.tlsconfig import ClientContextCache

        self.app = app
        self.built = built
        self.conf = conf
        self.changed = changed
        self.server_tls = server_tls
        self.client_tls = ClientContextCache()


def _prepare(src: _Source, current: Any) -> _Prepared | str:
    """Off the loop: the file loaded and built as start-up does, the upgrade-only settings
    put back to their running values, the certificates loaded. A str: why it is refused."""
    from proxycore.tlsconfig import TlsConfigError, load_server_tls

    loaded = src.load()
    if loaded.problems:
        return "; ".join(loaded.problems)
    built = loaded.built
    changed = upgrade_changes(src.start, src.conf, built, loaded.conf)
    sc = built.conf
    # What the running process was started with stays (the adapter and the supervisor set
    # some of it: reuse_port with --workers, the TLS ports from the bound listeners).
    sc.reuse_port = current.reuse_port
    sc.record_dir = current.record_dir
    sc.busy_poll = current.busy_poll
    sc.upgrade_sock = current.upgrade_sock  # (the supervisor's is fixed at start-up)
    if current.tls is None:
        sc.tls = None  # no TLS listener is bound: a new one needs an upgrade
    elif sc.tls is None:
        sc.tls = current.tls  # the TLS listener still serves: its certificates, re-read
    else:
        sc.tls.ports = list(current.tls.ports)
    try:
        server_tls = load_server_tls(sc.tls, sc.h2) if sc.tls is not None else None
    except TlsConfigError as e:
        return str(e)
    return _Prepared(loaded.app, built, loaded.conf, changed, server_tls)


def upgrade_changes(
    start: Any, start_conf: dict[str, Any], built: Any, conf: dict[str, Any]
) -> list[str]:
    """The names in :data:`UPGRADE_ONLY` whose value differs between what start-up built
    (``start``, ``start_conf``) and the file now (``built``, ``conf``)."""
    out: list[str] = []
    if start.listen != built.listen:
        out.append("listeners")
    if (start_conf.get("admin") or {}) != (conf.get("admin") or {}):
        out.append("admin")  # (the admin listener is bound once, by the process that serves it)
    old = start_conf.get("server", {})
    new = conf.get("server", {})
    for name in UPGRADE_ONLY[1:]:
        if old.get(name) != new.get(name):
            out.append(name)
    return out


def _refuse(why: str) -> None:
    log.error("configuration reload refused, keeping the current configuration: %s", why)
    print("proxycore config reload refused", flush=True)


def _apply(driver: Any, src: _Source, new: _Prepared) -> None:
    from proxycore.adapters.access import reload_access_log
    from proxycore.builtin import RoutedProxy
    from proxycore.events import Reconfigure

    engine = driver.engine
    conf = new.built.conf
    try:
        access = reload_access_log(conf)
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e)
        _refuse(f"cannot open the access log {conf.access_log!r}: {reason}")
        return
    app = new.app
    services: list[Any] | None = None
    if isinstance(app, RoutedProxy) and isinstance(engine.app, RoutedProxy):
        kept = app.keep_groups(engine.app)
        lbs = {id(g.lb) for g in kept}
        services = [s for s in engine.services.values() if id(getattr(s, "lb", None)) in lbs]
        for g in app.groups.values():
            if g not in kept:
                services.extend(g.services())
    driver.feed(
        Reconfigure(
            0,
            driver.now(),
            app,
            conf,
            services=services,
            server_tls=new.server_tls,
            client_tls=new.client_tls,
            access_log=access,
        )
    )
    logging.getLogger().setLevel(new.built.log_level.upper())
    _reopen_error_log(src.start.daemon.get("error_log"))
    if new.changed:
        log.warning(
            "configuration reload: settings changed, needs an upgrade "
            "(proxycore %s -c %s -u), not reloaded: %s",
            src.command,
            src.path,
            ", ".join(new.changed),
        )
    log.info("configuration reloaded from %s", src.path)
    if conf.tls is not None:
        print("proxycore tls reloaded", flush=True)
    print("proxycore config reloaded", flush=True)


def _reopen_error_log(path: str | None) -> None:
    """With ``error_log``, standard error (and standard output, where it goes to the same
    file: a daemon) is the file: open the path again (logrotate)."""
    if not path:
        return
    try:
        err = os.fstat(2)
        out = os.fstat(1)
        same_out = (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as e:
        log.error("cannot reopen the error log %r: %s", path, e.strerror)
        return
    sys.stderr.flush()
    os.dup2(fd, 2)
    if same_out:
        sys.stdout.flush()
        os.dup2(fd, 1)
    os.close(fd)
