"""Source addresses of connections to origins (Pingora's ``client_bind_to_ipv4/ipv6``), on every
backend: ``--client-bind-to 127.0.0.2`` makes the origin see its connections come from 127.0.0.2
(Linux routes all of 127/8 to the loopback interface), several addresses are all used, one that
is not an address of this host stops the start (status 2, one line naming it), and a peer's
``bind_to`` that cannot be bound gives a 502 and an error-log line naming it while the proxy
keeps serving. 192.0.2.1 (TEST-NET-1) is only ever refused by bind(): nothing is sent to it."""

from __future__ import annotations

import socket
import subprocess

from conformance.client import get
from conformance.origins import HOST, EchoOrigin, free_port
from conformance.proxy import PROCESS_CWD, process_env, python_cmd

NOT_OURS = "192.0.2.1"


class SourceOrigin(EchoOrigin):
    """An echo origin that records the source address of every connection it accepts."""

    name = "source"

    def __init__(self) -> None:
        self.sources: list[str] = []
        super().__init__()

    def _run_conn(self, sock: socket.socket, conn_id: int) -> None:
        with self.lock:
            self.sources.append(sock.getpeername()[0])
        super()._run_conn(sock, conn_id)


def test_the_origin_sees_the_source_address(origins, proxy):
    o = origins(SourceOrigin)
    bound = proxy(to=[o.port], extra=["--client-bind-to", "127.0.0.2"])
    assert get(bound.port, "/a").status == 200
    assert o.sources == ["127.0.0.2"]
    plain = proxy(to=[o.port])  # without the flag the kernel picks 127.0.0.1
    assert get(plain.port, "/b").status == 200
    assert o.sources == ["127.0.0.2", HOST]


def test_several_addresses_are_all_used(origins, proxy):
    o = origins(SourceOrigin)
    addrs = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    extra = ["--pool-size", "0"]  # a new upstream connection per request
    for a in addrs:
        extra += ["--client-bind-to", a]
    extra += ["--client-bind-to", "::1"]  # IPv6: not used for an IPv4 origin
    p = proxy(to=[o.port], extra=extra)
    for i in range(30):
        assert get(p.port, f"/n{i}").status == 200
    assert len(o.sources) == 30
    assert set(o.sources) == set(addrs), o.sources


def test_an_address_not_of_this_host_stops_the_start(backend):
    base = [*python_cmd(), "-m", "proxycore", "reverse-proxy", "--to", f"{HOST}:9",
            "--backend", backend, "--client-bind-to", "127.0.0.2", "--client-bind-to", NOT_OURS]  # fmt: skip
    argvs = [[*base, "--listen", f"{HOST}:{free_port()}"],
             [*base, "--listen", f"{HOST}:{free_port()}", "--workers", "2"]]  # fmt: skip
    procs = [
        subprocess.Popen(a, cwd=PROCESS_CWD, env=process_env({}), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for a in argvs
    ]  # fmt: skip
    for p in procs:
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        what = f"{p.args}\n--- stdout ---\n{out}--- stderr ---\n{err}"
        assert p.returncode == 2, what
        assert "Traceback" not in err, what
        lines = err.splitlines()
        assert len(lines) == 1, what
        assert lines[0].startswith("proxycore reverse-proxy: error: "), what
        assert f"cannot bind connections to origins to {NOT_OURS} (client_bind_to_ipv4" in lines[0]
        assert "cannot assign requested address" in lines[0], what


def test_a_source_that_cannot_be_bound_is_a_502_naming_it(origins, proxy):
    o = origins(SourceOrigin)
    p = proxy(
        mode="run",
        app="conformance.apps:BindToApp",
        env={"ORIGIN_PORT": str(o.port), "BIND_TO": NOT_OURS},
    )
    for i in range(3):
        r = get(p.port, f"/x{i}")
        assert r.status == 502, r
    assert o.sources == []
    err = p.stderr()
    line = f"upstream {HOST}:{o.port} could not be connected from source address {NOT_OURS}: "
    assert line + "cannot assign requested address" in err, p.report()
    assert "Traceback" not in err, p.report()
    assert p.alive()
    good = proxy(
        mode="run",
        app="conformance.apps:BindToApp",
        env={"ORIGIN_PORT": str(o.port), "BIND_TO": "127.0.0.3"},
    )
    assert get(good.port, "/y").status == 200
    assert o.sources == ["127.0.0.3"]
