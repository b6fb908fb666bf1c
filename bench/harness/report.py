"""Report: summarize (derived ratios), the three tables, the targets, the --rounds list,
the chart, and --report (re-print a saved JSON)."""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import BOTH_CPUS, LOAD_CPU, PROXY_CPU, log
from .targets import NOISY_BG_PCT, _bg, _ok, evaluate_targets
from .tlsprobe import TLS_CERT_DESC

# --------------------------------------------------------------------------- report


def summarize(rows: list[dict[str, Any]]) -> None:
    """Derived numbers: ratios to nginx / aiohttp (req/s and stream MB/s), added p50 at c1
    vs direct."""
    by = {r["name"]: r for r in rows}

    def ref(name: str, scen: str, key: str) -> float | None:
        res = _ok(by[name], scen) if name in by else None
        if res is None or (scen == "small" and res["c50"]["error_count"]):
            return None
        return float(res["c50"]["rps"] if scen == "small" else res[key])

    def ratio(x: float, y: float | None) -> float | None:
        return round(x / y, 3) if y else None

    def tls_ref(kind: str) -> float | None:
        """nginx (TLS) req/s: keep-alive, or new conns/s with resumed / full handshakes."""
        res = _ok(by["nginx"], "tls") if "nginx" in by else None
        m = (res or {}).get("keepalive") if kind == "keepalive" else None
        if res is not None and kind != "keepalive":
            m = res["handshakes"].get(kind)
        if not m or m.get("rps") is None or m["error_count"]:
            return None
        return float(m["rps"])

    direct = _ok(by["direct"], "small") if "direct" in by else None
    direct_c1 = direct["c1"]["p50_ms"] if direct else None
    for r in rows:
        if s := _ok(r, "small"):
            mine = s["c50"]["rps"]
            r["rps"] = mine
            r["ratio_nginx"] = ratio(mine, ref("nginx", "small", ""))
            r["ratio_aiohttp"] = ratio(mine, ref("aiohttp", "small", ""))
            r["p50_ms"] = s["c50"]["p50_ms"]
            r["p99_ms"] = s["c50"]["p99_ms"]
            r["c1_p50_ms"] = s["c1"]["p50_ms"]
            r["added_p50_ms"] = (
                round(s["c1"]["p50_ms"] - direct_c1, 4)
                if direct_c1 is not None and s["c1"]["p50_ms"] is not None
                else None
            )
            r["errors"] = s["c50"]["error_count"] + s["c1"]["error_count"]
            r["flagged"] = r["errors"] > 0
        if st := _ok(r, "stream"):
            r["stream_mb_s"] = st["mb_s"]
            r["stream_ratio_nginx"] = ratio(st["mb_s"], ref("nginx", "stream", "mb_s"))
            r["stream_ratio_aiohttp"] = ratio(st["mb_s"], ref("aiohttp", "stream", "mb_s"))
            r["stream_peak_rss_mib"] = st.get("peak_rss_mib")
        if idle := _ok(r, "idle"):
            r["idle_kib_per_conn"] = idle["kib_per_conn"]
        h2 = r.get("h2")
        if isinstance(h2, dict) and isinstance(h2.get("idle"), dict):
            r["h2_idle_kib_per_conn"] = h2["idle"].get("kib_per_conn")
        if tls := _ok(r, "tls"):
            ka = tls["keepalive"]
            r["tls_rps"] = ka["rps"]
            r["tls_rps_load_bound"] = ka.get("load_bound", False)
            r["tls_ratio_nginx"] = ratio(ka["rps"], tls_ref("keepalive"))
            r["tls_p50_ms"] = ka["p50_ms"]
            r["tls_p99_ms"] = ka["p99_ms"]
            errors = ka["error_count"]
            for kind, h in tls["handshakes"].items():
                if h.get("rps") is not None:
                    r[f"tls_hs_{kind}"] = h["rps"]
                    r[f"tls_hs_{kind}_load_bound"] = h.get("load_bound", False)
                    r[f"tls_hs_{kind}_ratio_nginx"] = ratio(h["rps"], tls_ref(kind))
                    errors += h["error_count"]
            r["tls_errors"] = errors
            if errors:
                r["flagged"] = True
        if r.get("scenario_errors"):
            r["flagged"] = True


def _lat(ms: float | None) -> str:
    if ms is None:
        return "-"
    if abs(ms) < 1:
        return f"{ms * 1000:.0f}us"
    return f"{ms:.2f}ms"


def _added(ms: float | None, is_direct: bool) -> str:
    if is_direct or ms is None:
        return "-"
    return ("+" if ms >= 0 else "-") + _lat(abs(ms))


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}%"


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def _render(hdr: list[str], lines: list[list[str]], failures: dict[int, str]) -> None:
    """Aligned table; failures[i] replaces line i's cells after the name."""
    widths = [
        max([len(hdr[i])] + [len(ln[i]) for j, ln in enumerate(lines) if j not in failures])
        for i in range(len(hdr))
    ]
    fmt = lambda cols: "  ".join(  # noqa: E731
        c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cols)
    )
    print(fmt(hdr))
    print("  ".join("-" * w for w in widths))
    for j, ln in enumerate(lines):
        if j in failures:
            reason = failures[j].strip().splitlines() or [""]
            print(f"{ln[0].ljust(widths[0])}  {reason[0]}")
            for extra in reason[1:4]:
                print(" " * (widths[0] + 4) + extra)
        else:
            print(fmt(ln))


def _failure(r: dict[str, Any], scen: str) -> str | None:
    if r.get("skipped"):
        return f"SKIPPED: {r.get('error', '')}"
    res = r.get(scen)
    if isinstance(res, dict) and res.get("error") and _ok(r, scen) is None:
        return f"FAILED: {res['error']}"
    return None


def print_table(rows: list[dict[str, Any]]) -> None:
    """Table 1: GET /small req/s and latency."""
    hdr = ["name", "req/s", "vs nginx", "vs aiohttp", "p50", "p99", "c1 p50", "added p50",
           "proxy cpu", "bg cpu", "errors"]  # fmt: skip
    lines: list[list[str]] = []
    failures: dict[int, str] = {}
    for r in rows:
        if "small" not in r and not r.get("skipped"):
            continue
        if (why := _failure(r, "small")) or _ok(r, "small") is None:
            failures[len(lines)] = why or "FAILED"
            lines.append([r["name"]])
            continue
        cpu = r["small"]["cpu"].get("proxy_pct")
        lines.append(
            [
                r["name"] + (" *" if r.get("cpu_pin") == BOTH_CPUS else ""),
                f"{r['rps']:,.0f}",
                _ratio(r["ratio_nginx"]),
                _ratio(r["ratio_aiohttp"]),
                _lat(r["p50_ms"]),
                _lat(r["p99_ms"]),
                _lat(r["c1_p50_ms"]),
                _added(r["added_p50_ms"], r["name"] == "direct"),
                "-" if cpu is None else f"{cpu:.0f}%",
                f"{r['small']['cpu'].get('bg_pct', 0):.0f}%",
                f"{r['errors']} FLAG" if r["errors"] else "0",
            ]
        )
    if lines:
        _render(hdr, lines, failures)
    if any(r.get("cpu_pin") == BOTH_CPUS and "small" in r for r in rows):
        print(
            f"* --workers 2: proxy NOT pinned (taskset -c {BOTH_CPUS}); one worker shares cpu "
            f"{LOAD_CPU} with origin+wrk. Compare with the 1-worker row pinned to cpu {PROXY_CPU}."
        )


def print_table2(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Table 2: 1 GiB stream and idle keep-alive connections."""
    hdr = ["name", "1GiB MB/s", "vs nginx", "vs aiohttp", "peak RSS MiB", "bg cpu",
           "idle conns", "RSS before MiB", "RSS with MiB", "KiB/conn", "proxy fds"]  # fmt: skip
    lines: list[list[str]] = []
    failures: dict[int, str] = {}
    for r in rows:
        if "stream" not in r and "idle" not in r and not r.get("skipped"):
            continue
        if r.get("skipped"):
            failures[len(lines)] = _failure(r, "stream") or "SKIPPED"
            lines.append([r["name"]])
            continue
        st, idle = _ok(r, "stream"), _ok(r, "idle")
        ln = [r["name"]]
        if st:
            inc = "" if st["complete"] else " (partial)"
            ln += [
                f"{st['mb_s']:,.0f}{inc}",
                _ratio(r.get("stream_ratio_nginx")),
                _ratio(r.get("stream_ratio_aiohttp")),
                f"{st['peak_rss_mib']:.1f}" if "peak_rss_mib" in st else "-",
                f"{st['cpu'].get('bg_pct', 0):.0f}%",
            ]
        else:
            ln += ["FAILED" if "stream" in r else "-", "-", "-", "-", "-"]
        if idle:
            ln += [
                f"{idle['opened']:,}" + ("" if idle["opened"] == idle["wanted"] else "!"),
                _mib(idle["rss_before_kib"]),
                _mib(idle["rss_with_kib"]),
                f"{idle['kib_per_conn']:.1f}",
                f"{idle['fds_with']:,}",
            ]
        else:
            ln += ["FAILED" if "idle" in r else "-", "-", "-", "-", "-"]
        lines.append(ln)
    if not lines:
        return
    print()
    print(
        f"GET /big (1 GiB sparse file, origin sendfile) x{args.stream_runs} with curl -> "
        f"/dev/null on cpu {LOAD_CPU}: median MB/s (1e6 B); peak RSS = proxy process tree "
        "during the transfers. "
        f"idle: {args.idle_conns:,} keep-alive conns, each after one GET /small; "
        f"KiB/conn = (RSS with - RSS before) / conns."
    )
    _render(hdr, lines, failures)
    for r in rows:
        for scen in ("stream", "idle"):
            res = r.get(scen)
            if isinstance(res, dict) and res.get("error"):
                print(f"  {r['name']} {scen}: {res['error'].splitlines()[0]}")


def print_table3(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Table 3: TLS termination -- keep-alive req/s and new connections/s (handshakes)."""
    tls_rows = [r for r in rows if "tls" in r or (r.get("skipped") and r["name"] == "nginx")]
    if not tls_rows:
        return
    secs = getattr(args, "tls_duration", 5)
    hdr = ["name (TLS)", "keep-alive req/s", "vs nginx", "p50", "p99", "proxy cpu",
           "resumed hs/s", "vs nginx", "proxy cpu", "full hs/s", "vs nginx", "proxy cpu",
           "bg cpu", "errors"]  # fmt: skip
    bound = False
    lines: list[list[str]] = []
    failures: dict[int, str] = {}
    notes: list[str] = []
    negotiated: dict[str, list[str]] = {}
    for r in tls_rows:
        if (why := _failure(r, "tls")) or (t := _ok(r, "tls")) is None:
            failures[len(lines)] = why or "FAILED"
            lines.append([r["name"]])
            continue
        cells = []
        for kind in ("resumed", "full"):
            h = t["handshakes"].get(kind)
            if not h or h.get("rps") is None:
                cells += ["FAILED" if h else "-", "-", "-"]
                continue
            mark = "" if h.get("kind") == kind else "!"
            if mark:
                notes.append(f"  ! {r['name']} {kind}: {h.get('warning', '')}")
            if h.get("load_bound"):
                mark += "^"
                bound = True
            cells += [
                f"{h['rps']:,.0f}{mark}",
                _ratio(r.get(f"tls_hs_{kind}_ratio_nginx")),
                _pct(h["cpu"].get("proxy_pct")),
            ]
            for p in h["probe"]["negotiated"]:
                negotiated.setdefault(p, []).append(f"{r['name']}/{kind}")
        errs = r.get("tls_errors", 0)
        ka_mark = "^" if t["keepalive"].get("load_bound") else ""
        bound = bound or bool(ka_mark)
        lines.append(
            [
                r["name"],
                f"{t['keepalive']['rps']:,.0f}{ka_mark}",
                _ratio(r.get("tls_ratio_nginx")),
                _lat(r.get("tls_p50_ms")),
                _lat(r.get("tls_p99_ms")),
                _pct(t["cpu"].get("proxy_pct")),
                *cells,
                f"{t.get('bg_pct_max', 0):.0f}%",
                f"{errs} FLAG" if errs else "0",
            ]
        )
    print()
    print(
        f"TLS termination, one {TLS_CERT_DESC} for every target; wrk -t1 -c50 -d{secs:g}s "
        "https://127.0.0.1:PORT/small. keep-alive: 50 long-lived TLS connections. hs/s: "
        'the same with -H "Connection: close" -- a new TCP + TLS connection per request '
        "(req/s = connections/s; wrk's latency starts after the handshake, so none shown). "
        "resumed: wrk as is, it resumes the TLS session on every reconnect (TLS 1.3 "
        "PSK from a session ticket: ECDHE but no certificate, no signature). full: wrk with "
        "an LD_PRELOAD shim that drops the session -> a full handshake (ECDHE + ECDSA "
        "signature) per connection. Both checked per row through a relay (1 s, -c4) that "
        "reads each ServerHello. proxy cpu = % of one core during that run; bg cpu = max "
        "over the 3 runs."
    )
    _render(hdr, lines, failures)
    if bound:
        print(
            f"^ cpu {LOAD_CPU} (wrk + origin) was saturated and the proxy was not: that "
            "number is wrk's limit, a lower bound for the row (ratios against it are upper "
            "bounds). wrk's side of a handshake costs more than the server's (ECDSA verify > "
            "sign), so with one load core a fast server's handshake rate is wrk's."
        )
    for r in tls_rows:
        t = r.get("tls")
        if isinstance(t, dict):
            if t.get("full_handshakes_note"):
                notes.append(f"  {r['name']} full handshakes: {t['full_handshakes_note']}")
            if t.get("error") and _ok(r, "tls") is not None:
                notes.append(f"  {r['name']} tls: {t['error'].splitlines()[0]}")
    probes = [
        h["probe"]
        for r in tls_rows
        for h in (r.get("tls") or {}).get("handshakes", {}).values()
        if isinstance(h, dict) and "probe" in h
    ]
    if probes:
        conns, reqs = sum(p["connections"] for p in probes), sum(p["requests"] for p in probes)
        print(
            f"relay check: {conns:,} connections for {reqs:,} requests in "
            f"{len(probes)} probe runs (one connection per request; the few extra were "
            "still in flight when wrk stopped)."
        )
    for p, who in negotiated.items():
        scope = (
            "all rows" if len(who) == sum(len(w) for w in negotiated.values()) else ", ".join(who)
        )
        print(f"negotiated by wrk: {p} ({scope})")
    for n in notes:
        print(n)


def print_targets(targets: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    if not targets:
        return
    print("\ntargets (ratios from this run):")
    w = max(len(t["what"]) for t in targets)
    for t in targets:
        v = t["value"]
        if v is None:
            val = "-"
        elif t["unit"] == "x":
            val = f"{v:.2f}x"
        else:
            val = f"{v:.1f} {t['unit']}"
        tgt = f"{t['op']} {t['target']:g}{'x' if t['unit'] == 'x' else ' ' + t['unit']}"
        noisy = f"  (noisy: {', '.join(t['noisy'])})" if t.get("noisy") else ""
        print(f"  {t['what'].ljust(w)}  {val:>10}  {tgt:>10}  {t['verdict']}{noisy}")
    n = {k: sum(t["verdict"] == k for t in targets) for k in ("PASS", "FAIL", "n/a")}
    nn = sum(bool(t.get("noisy")) for t in targets)
    print(
        f"  -> {n['PASS']} PASS, {n['FAIL']} FAIL, {n['n/a']} not measured"
        + (f"; {nn} verdict(s) rest on a noisy measurement -- re-run those rows" if nn else "")
    )
    by = {r["name"]: r for r in rows}
    w1, w2 = by.get("proxycore-uvloop", {}).get("rps"), by.get("proxycore-uvloop-w2", {}).get("rps")
    if w1 and w2:
        print(
            f"  uvloop --workers 2 (unpinned, cpus {BOTH_CPUS}): {w2:,.0f} req/s vs "
            f"{w1:,.0f} with 1 worker on cpu {PROXY_CPU} = {w2 / w1:.2f}x"
        )


def _ensure_matplotlib() -> Any:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        log("matplotlib missing: pip install matplotlib")
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "matplotlib"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"pip install matplotlib failed: {r.stderr.strip()[-300:]}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Horizontal bars: req/s (c50), 1 GiB MB/s, idle KiB per connection, TLS req/s and
    new connections/s."""
    plt = _ensure_matplotlib()
    panels = [
        ("req/s, GET /small, wrk -c50", "rps", "{:,.0f}", "small"),
        ("1 GiB stream, MB/s", "stream_mb_s", "{:,.0f}", "stream"),
        ("peak RSS streaming 1 GiB, MiB", "stream_peak_rss_mib", "{:.1f}", ""),
        ("RSS per idle keep-alive conn, KiB", "idle_kib_per_conn", "{:.1f}", ""),
        ("RSS per idle HTTP/2 conn, KiB", "h2_idle_kib_per_conn", "{:.1f}", ""),
        ("TLS keep-alive req/s, wrk -c50 (ECDSA P-256)", "tls_rps", "{:,.0f}", "tls"),
        ("TLS new conns/s, resumed handshakes", "tls_hs_resumed", "{:,.0f}", "tls"),
        ("TLS new conns/s, full handshakes", "tls_hs_full", "{:,.0f}", "tls"),
    ]
    panels = [p for p in panels if any(r.get(p[1]) is not None for r in rows)]
    if not panels:
        return
    by = {r["name"]: r for r in rows}

    def rows_with(ps: list[tuple[str, str, str, str]]) -> list[str]:
        return [r["name"] for r in rows if any(r.get(p[1]) is not None for p in ps)]

    # The TLS panels list only the rows that ran the tls scenario (nginx + proxycore);
    # the others share one row list, as before.
    tls_panels = [p for p in panels if p[3] == "tls"]
    names_main = rows_with([p for p in panels if p[3] != "tls"])
    names_tls = rows_with(tls_panels)

    def color(n: str) -> str:
        if n == "direct":
            return "#999999"
        if n.startswith("proxycore"):
            return "#1f77b4"
        return "#ff7f0e" if n == "aiohttp" else "#2ca02c"

    ncols = min(2, len(panels))
    main = [p for p in panels if p[3] != "tls"]
    # grid rows: the main panels, then the TLS panels starting on a fresh row
    layout = [main[i : i + ncols] for i in range(0, len(main), ncols)]
    layout += [tls_panels[i : i + ncols] for i in range(0, len(tls_panels), ncols)]
    heights = [0.36 * len(names_tls if row[0][3] == "tls" else names_main) + 1.0 for row in layout]
    fig, grid = plt.subplots(
        len(layout), ncols, figsize=(6.2 * ncols + 1, sum(heights) + 0.6), squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )  # fmt: skip
    placed = []
    for row_axes, row_panels in zip(grid, layout, strict=True):
        for i, ax in enumerate(row_axes):
            if i < len(row_panels):
                placed.append((ax, row_panels[i]))
            else:
                ax.set_visible(False)
    for ax, (label, key, f, noise_scen) in placed:
        names = names_tls if noise_scen == "tls" else names_main
        ys = list(range(len(names)))[::-1]
        vals = [by[n].get(key) for n in names]
        # hatched + "(noisy)": measured while other processes used > NOISY_BG_PCT of a core
        noisy = [bool(noise_scen) and _bg(by[n], noise_scen) > NOISY_BG_PCT for n in names]
        bars = ax.barh(ys, [v or 0 for v in vals], color=[color(n) for n in names])
        top = max((v for v in vals if v), default=1)
        for bar, y, v, nz, n in zip(bars, ys, vals, noisy, names, strict=True):
            if nz:
                bar.set_hatch("///")
            txt = "-" if v is None else f.format(v) + (" (noisy)" if nz else "")
            if v is not None and by[n].get(f"{key}_load_bound"):
                txt += " (wrk's limit)"
            ax.text((v or 0) + top * 0.01, y, txt, va="center", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_yticks(ys)
        ax.set_yticklabels(names, fontsize=8)
        ax.set_xlim(0, top * (1.5 if noise_scen == "tls" else 1.3))
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (sum(heights) + 0.6)))  # room for the title
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_rounds(rows: list[dict[str, Any]]) -> None:
    lines = [
        f"  {r['name']:<22} "
        + ", ".join(f"{x['rps']:,.0f}" for x in r["small"]["c50_rounds"])
        + f"  -> median {r['small']['c50']['rps']:,.0f}"
        for r in rows
        if isinstance(r.get("small"), dict) and len(r["small"].get("c50_rounds", ())) > 1
    ]
    if lines:
        print("\nc50 req/s per pass (--rounds; passes interleaved over all rows):")
        print("\n".join(lines))


def report(rows: list[dict[str, Any]], args: argparse.Namespace, started: str) -> list[Any]:
    """Print both tables, the noise warning and the targets; return the targets."""
    print()
    print(
        f"proxycore bench {started}; GET /small (53 B), wrk -t1 -c50 -d{args.duration:g}s; "
        f"c1 = wrk -t1 -c1 -d{args.c1_duration:g}s. "
        f"proxy on cpu {PROXY_CPU}, origin+wrk on cpu {LOAD_CPU}."
    )
    print_table(rows)
    print_table2(rows, args)
    print_table3(rows, args)
    noisy = sorted(
        {
            f"{r['name']}/{sc}"
            for r in rows
            for sc in ("small", "stream", "tls")
            if _bg(r, sc) > NOISY_BG_PCT
        }
    )
    if noisy:
        print(
            f"WARNING: other processes used >{NOISY_BG_PCT:.0f}% of a core during: "
            f"{', '.join(noisy)} (bg cpu column; see others_top in the JSON) -- those numbers "
            "are noisy."
        )
    targets_eval = evaluate_targets(rows)
    print_targets(targets_eval, rows)
    return targets_eval


def rereport(path: str, chart: str) -> int:
    """--report: re-print the tables/targets (and redraw the chart) of a saved JSON."""
    data = json.loads(Path(path).read_text())
    rows, meta = data["rows"], data["meta"]
    summarize(rows)
    report(rows, argparse.Namespace(**meta["args"]), meta["started"])
    print_rounds(rows)
    if chart:
        draw_chart(rows, Path(chart), _chart_title(meta["started"]))
        print(f"chart: {chart}")
    return 0


def _chart_title(started: str) -> str:
    return (
        f"proxycore bench {started} - proxy on cpu {PROXY_CPU}, origin+load on cpu "
        f"{LOAD_CPU} (w2 row unpinned)"
    )


def _brief(sname: str, res: dict[str, Any]) -> str:
    if sname == "small":
        c50 = res["c50"]
        c1 = _lat(res["c1"]["p50_ms"])
        return f"{c50['rps']:,.0f} req/s, p99 {_lat(c50['p99_ms'])}, c1 p50 {c1}"
    if sname == "stream":
        rss = f", peak RSS {res['peak_rss_mib']} MiB" if "peak_rss_mib" in res else ""
        return f"{res['mb_s']} MB/s{rss}" + (f" ({res['error']})" if res.get("error") else "")
    if sname == "idle":
        return (
            f"{res['opened']} open in {res['setup_s']}s, RSS {_mib(res['rss_before_kib'])} -> "
            f"{_mib(res['rss_with_kib'])} MiB, {res['kib_per_conn']} KiB/conn"
        )
    if sname == "h2":
        idle = res.get("idle") or {}
        return (
            ", ".join(
                f"h2load {k} {res[k]['rps']:,.0f} req/s ({res[k]['failed']} failed)"
                for k in ("c10m10", "c1m100")
                if k in res
            )
            + (
                f"; {idle['conns']} idle h2 conns: RSS {_mib(idle['rss_before_kib'])} -> "
                f"{_mib(idle['rss_with_kib'])} MiB, {idle['kib_per_conn']} KiB/conn"
                if "kib_per_conn" in idle
                else ""
            )
            + (f" ({res['error']})" if res.get("error") else "")
        )
    if sname == "tls":
        ka = res["keepalive"]
        out = f"keep-alive {ka['rps']:,.0f} req/s, p99 {_lat(ka['p99_ms'])}"
        for kind, h in res["handshakes"].items():
            if h.get("rps") is None:
                out += f"; {kind} handshakes FAILED"
                continue
            p = h["probe"]
            out += (
                f"; {kind} {h['rps']:,.0f} conn/s (relay: {p['connections']} conns / "
                f"{p['requests']} reqs, {p['handshakes']})"
            )
        return out
    return ""


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()
