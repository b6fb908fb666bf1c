"""proxycore's ``consistent`` selector picks the same backend as nginx's
``hash $key consistent`` for 10,000 keys, with mixed weights. Needs Debian's nginx (installed by
.ci/run); skipped with a clear message only where nginx cannot be found."""

from __future__ import annotations

import http.client
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conformance.origins import free_port
from proxycore import Backend, LoadBalancer, Peer

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")
def test_consistent_hash_matches_nginx_for_10000_keys():
    weights = [1, 1, 2, 3]
    ports = [free_port() for _ in weights]
    front = free_port()
    work = Path(tempfile.mkdtemp(prefix="pc-nginx-"))
    servers = "\n".join(
        f"    server 127.0.0.1:{p} weight={w};" if w > 1 else f"    server 127.0.0.1:{p};"
        for p, w in zip(ports, weights, strict=True)
    )
    origins = "\n".join(
        f'  server {{ listen 127.0.0.1:{p}; location / {{ return 200 "{p}"; }} }}' for p in ports
    )
    (work / "nginx.conf").write_text(
        f"""worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {work}/cbt; proxy_temp_path {work}/pt; fastcgi_temp_path {work}/ft;
  uwsgi_temp_path {work}/ut; scgi_temp_path {work}/st;
  upstream u {{
    hash $arg_k consistent;
{servers}
    keepalive 8;
  }}
  server {{
    listen 127.0.0.1:{front};
    location / {{ proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
{origins}
}}
"""
    )
    proc = subprocess.Popen(
        [NGINX, "-c", str(work / "nginx.conf"), "-p", str(work)], stderr=subprocess.DEVNULL
    )
    conn: http.client.HTTPConnection | None = None
    try:
        deadline = time.monotonic() + 10
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", front, timeout=5)
            try:
                conn.request("GET", "/?k=probe")
                conn.getresponse().read()
                break
            except OSError:
                conn.close()
                assert proc.poll() is None, (work / "error.log").read_text()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        lb = LoadBalancer(
            [Backend(Peer("127.0.0.1", p), w) for p, w in zip(ports, weights, strict=True)],
            "consistent",
        )
        mismatches = []
        for i in range(10000):
            key = f"key-{i}-{i * 7919 % 10007}"
            conn.request("GET", f"/?k={key}")
            theirs = int(conn.getresponse().read())
            b = lb.select(key.encode())
            assert b is not None
            if b.peer.port != theirs:
                mismatches.append((key, theirs, b.peer.port))
        assert not mismatches, f"{len(mismatches)} of 10000 keys differ, e.g. {mismatches[:5]}"
    finally:
        if conn is not None:
            conn.close()
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(work, ignore_errors=True)
