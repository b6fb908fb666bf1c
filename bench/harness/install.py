"""Tools: finding nginx/haproxy/wrk (apt-get install if missing) and their versions."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import ssl
import subprocess
import sys

from .common import ROOT, log
from .targets import Ctx

# --------------------------------------------------------------------------- install


def _find(binary: str) -> str | None:
    return shutil.which(binary) or next(
        (
            p
            for d in ("/usr/sbin", "/sbin", "/usr/local/sbin")
            if os.access(p := f"{d}/{binary}", os.X_OK)
        ),
        None,
    )


def apt_install(pkgs: list[str]) -> tuple[bool, str]:
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            return False, "not root and no sudo"
        prefix = ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", *pkgs]
    log(f"installing: {' '.join(pkgs)}")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        subprocess.run([*prefix, "apt-get", "update", "-q"], capture_output=True, env=env)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
    return r.returncode == 0, "\n".join(tail)


def ensure_tools(want_haproxy: bool) -> tuple[str, str | None, str]:
    missing = [pkg for b, pkg in (("nginx", "nginx-light"), ("wrk", "wrk")) if not _find(b)]
    if missing:
        ok, msg = apt_install(missing)
        if not ok:
            sys.exit(f"bench: could not install {missing}: {msg}")
    if not _find("taskset"):
        ok, msg = apt_install(["util-linux"])
        if not ok:
            sys.exit(f"bench: taskset missing and could not install util-linux: {msg}")
    nginx = _find("nginx")
    assert nginx and _find("wrk")
    haproxy, note = _find("haproxy"), ""
    if want_haproxy and not haproxy:
        ok, msg = apt_install(["haproxy"])
        haproxy = _find("haproxy") if ok else None
        if not haproxy:
            note = f"haproxy could not be installed ({msg.splitlines()[-1] if msg else '?'})"
            log(f"SKIP haproxy: {note}")
    return nginx, haproxy, note


def tool_versions(ctx: Ctx) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception as e:
            return f"? ({e})"

    import aiohttp
    import uvloop

    v = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "nginx": first_line([ctx.nginx, "-v"]),
        "wrk": first_line(["wrk", "--version"]),
        "aiohttp": aiohttp.__version__,
        "uvloop": uvloop.__version__,
        "openssl": first_line(["openssl", "version"]),  # the libssl wrk uses
        "python_ssl": ssl.OPENSSL_VERSION,
    }
    with contextlib.suppress(Exception):
        nv = subprocess.run([ctx.nginx, "-V"], capture_output=True, text=True, timeout=10)
        m = re.search(r"built with (OpenSSL [^\n]*)", nv.stderr + nv.stdout)
        if m:
            v["nginx_ssl"] = m.group(1).strip()
    if ctx.haproxy:
        v["haproxy"] = first_line([ctx.haproxy, "-v"])
    r = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    v["proxycore_git"] = r.stdout.strip() if r.returncode == 0 else "(no commit)"
    return v
