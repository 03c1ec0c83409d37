#!/usr/bin/env python3
"""report.py: aggregate the cells of bench/harness.py into the tables of results/latest.md
(printed too), results/latest.csv (one line per kind/target/concurrency, medians over the
rounds) and results/raw.csv (every cell). Also usable alone:
    python3 bench/report.py [RESULTS_DIR]   (re-renders latest.md and latest.csv from raw.csv
                                             and info.json; default bench/results)
"""
import csv
import json
import os
import statistics
import sys

RAW_FIELDS = [
    "round", "kind", "target", "conns", "duration_s", "elapsed_s", "requests", "ok", "non2xx",
    "errors", "rps", "lat_p50", "lat_p90", "lat_p99", "lat_p999", "lat_max", "ttfc_p50",
    "ttfc_p90", "ttfc_p99", "ttfc_max", "chunk_p50", "chunk_p90", "chunk_p99", "chunk_p999",
    "chunk_max", "chunks", "chunks_expected", "complete", "incomplete", "cpu_s", "cpu_pct",
    "cpu_us_per_req", "rss_hwm_kb", "rss_end_kb", "rss_max_sampled_kb", "up_conns", "up_reqs",
    "streams_open_max", "conn_errors", "rows", "billed", "billed_disconnected", "reserved_left",
    "failed", "parity", "parity_note", "other_cpu_pct", "steal_pct",
]
METRICS = ["rps", "lat_p50", "lat_p90", "lat_p99", "lat_max", "ttfc_p50", "ttfc_p90", "ttfc_p99",
           "ttfc_max", "chunk_p50", "chunk_p90", "chunk_p99", "chunk_max", "cpu_us_per_req",
           "rss_hwm_kb", "up_conns", "up_reqs", "requests", "ok", "chunks", "chunks_expected"]
def bad(rs):
    n = sum(int(num(r.get("non2xx")) or 0) + int(num(r.get("errors")) or 0) for r in rs)
    return n


ADDED = ["lat_p50", "lat_p90", "lat_p99", "ttfc_p50", "ttfc_p99", "chunk_p50", "chunk_p99",
         "chunk_max"]


def num(v):
    if v in ("", None):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def aggregate(rows):
    """medians over rounds per (kind, target, conns) + per-round 'added' vs direct."""
    groups = {}
    for r in rows:
        if r["kind"] in ("plain", "stream", "parity", "lat1"):
            groups.setdefault((r["kind"], r["target"], int(r["conns"])), []).append(r)
    direct = {(r["kind"], int(r["conns"]), int(r["round"])): r for r in rows
              if r["target"] == "direct" and r["kind"] in ("plain", "stream", "lat1")}
    agg = {}
    for key, rs in groups.items():
        kind, target, conns = key
        a = {"kind": kind, "target": target, "conns": conns, "rounds": len(rs)}
        for m in METRICS:
            a[m] = med([num(r.get(m)) for r in rs])
        if target != "direct":
            for m in ADDED:
                diffs = []
                for r in rs:
                    d = direct.get((kind, conns, int(r["round"])))
                    if d is not None and num(r.get(m)) is not None and num(d.get(m)) is not None:
                        diffs.append(num(r[m]) - num(d[m]))
                a["added_" + m] = med(diffs)
        a["failed_answers"] = bad(rs)
        par = [r.get("parity") for r in rs if r.get("parity")]
        a["parity"] = ("n/a" if not par else
                       "ok %d/%d" % (sum(p in ("ok", "exact") for p in par), len(par)))
        agg[key] = a
    return agg


def f(v, digits=0, unit=""):
    if v is None:
        return "-"
    if digits == 0:
        return f"{v:,.0f}{unit}"
    return f"{v:,.{digits}f}{unit}"


def mb(kb):
    return "-" if kb is None else f"{kb / 1024:.1f}"


def table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def verdict(value, limit, le=True):
    if value is None:
        return "not measured"
    if le and value < 0:
        # an 'added' figure below zero: the direct run of the round was slower, so the cell
        # says nothing about the gateway
        return "NOISE (direct slower)"
    return "PASS" if (value <= limit if le else value >= limit) else "MISS"


def render(rows, info):
    agg = aggregate(rows)
    targets = [t for t in ("direct", "relay", "tollgate", "portkey")
               if any(r["target"] == t for r in rows)]
    conns = sorted({int(r["conns"]) for r in rows if r["kind"] in ("plain", "stream")})
    s = info.get("settings", {})
    md = ["# tollgate benchmark", ""]
    md.append(f"{info.get('date')} on {info.get('host')}: {info.get('cpu')}, {info.get('cores')} "
              f"cores, {info.get('memory_gb')} GB, Linux {info.get('kernel')}; load average at start "
              f"{' '.join(info.get('loadavg_at_start', []))}. tollgate {info.get('tollgate_commit')}, "
              f"libmicrohttpd {info.get('libmicrohttpd')}, libcurl {info.get('libcurl')}, SQLite "
              f"{info.get('sqlite')}, {info.get('wrk')}"
              + (f", Portkey gateway {info.get('portkey_gateway')} (@hono/node-server "
                 f"{info.get('hono_node_server')}, node {info.get('node')})"
                 if info.get("portkey_gateway") else "") + ".")
    md.append("")
    matrix = any(r["kind"] in ("plain", "stream") for r in rows)
    para = "Load generator, mock and gateway share the machine's cores. "
    if matrix:
        para += (f"{s.get('rounds')} interleaved rounds; {s.get('duration_s')} s per "
                 f"non-streaming cell, {s.get('stream_duration_s')} s per streaming cell "
                 f"({s.get('chunks')} chunks {s.get('interval_ms')} ms apart); figures are medians "
                 f"over the rounds, 'added' is the median over rounds of (gateway - direct) in "
                 f"the same round. Latencies in us. ")
    para += (f"Ledger on (SQLite WAL, synchronous=normal), log level {s.get('log_level')}, "
             f"client auth: {s.get('auth', '?')}. Wall time {info.get('wall_time_s')} s.")
    md.append(para)
    oth = sorted(num(r.get("other_cpu_pct")) for r in rows if num(r.get("other_cpu_pct")) is not None)
    if oth:
        stl = [num(r.get("steal_pct")) or 0 for r in rows if r.get("steal_pct") not in (None, "")]
        md.append("")
        md.append(f"Noise: during the cells, processes other than the benchmark's used a median "
                  f"{statistics.median(oth):.1f}% (max {oth[-1]:.1f}%) of the machine's CPU, and "
                  f"the hypervisor stole a median {statistics.median(stl):.1f}% (from /proc/stat). "
                  f"A negative 'added' figure means the direct run of that round was slower: noise.")
    md.append("")

    if any(r["kind"] == "plain" for r in rows):
        md.append("## Non-streaming (wrk, small bodies)")
        md.append("")
        lines = []
        for c in conns:
            for t in targets:
                a = agg.get(("plain", t, c))
                if not a:
                    continue
                up = f"{f(a['up_conns'])} / {f(a['up_reqs'])}" if t != "direct" else f"({f(a['up_conns'])} / {f(a['up_reqs'])})"
                lines.append([c, t, f(a["rps"]), f(a["lat_p50"]), f(a["lat_p90"]), f(a["lat_p99"]),
                              f(a.get("added_lat_p50")), f(a.get("added_lat_p90")),
                              f(a.get("added_lat_p99")), f(a["cpu_us_per_req"], 1),
                              mb(a["rss_hwm_kb"]), up, a["failed_answers"], a["parity"]])
        md.append(table(["conns", "target", "req/s", "p50", "p90", "p99", "added p50",
                         "added p90", "added p99", "CPU us/req", "RSS peak MB",
                         "conns/reqs to mock", "non-2xx+errors", "ledger parity"], lines))
        md.append("")
    if any(r["kind"] == "lat1" for r in rows):
        md.append("## One connection, each request's own latency (stream_client, non-streaming)")
        md.append("")
        md.append("wrk's percentiles above include the samples wrk adds for coordinated omission: "
                  "for every response slower than twice the mean interval it adds copies at "
                  "smaller multiples of the interval. At one connection a single stall of the "
                  "VM thus becomes hundreds of samples, in the direct run as in the gateway's. "
                  "These cells time every request from its send to its last byte, nothing added.")
        md.append("")
        lines = []
        for t in targets:
            a = agg.get(("lat1", t, 1))
            if not a:
                continue
            lines.append([t, f(a["rps"]), f(a["lat_p50"]), f(a["lat_p90"]), f(a["lat_p99"]),
                          f(a["lat_max"]), f(a.get("added_lat_p50")), f(a.get("added_lat_p90")),
                          f(a.get("added_lat_p99")), f(a["cpu_us_per_req"], 1),
                          a["failed_answers"], a["parity"]])
        md.append(table(["target", "req/s", "p50", "p90", "p99", "max", "added p50", "added p90",
                         "added p99", "CPU us/req", "non-2xx+errors", "ledger parity"], lines))
        md.append("")
    if any(r["kind"] == "stream" for r in rows):
        md.append(f"## Streaming (stream_client; {s.get('chunks')} chunks {s.get('interval_ms')} ms apart)")
        md.append("")
        lines = []
        for c in conns:
            for t in targets:
                a = agg.get(("stream", t, c))
                if not a:
                    continue
                lines.append([c, t, f(a["rps"], 1), f(a["ttfc_p50"]), f(a["ttfc_p99"]),
                              f(a.get("added_ttfc_p50")), f(a.get("added_ttfc_p99")),
                              f(a["chunk_p50"]), f(a["chunk_p99"]), f(a["chunk_max"]),
                              f(a.get("added_chunk_p50")), f(a.get("added_chunk_p99")),
                              f(a["cpu_us_per_req"], 1), mb(a["rss_hwm_kb"]),
                              f"{f(a['chunks'])}/{f(a['chunks_expected'])}", a["failed_answers"],
                              a["parity"]])
        md.append(table(["conns", "target", "streams/s", "TTFC p50", "TTFC p99", "added TTFC p50",
                         "added TTFC p99", "chunk delay p50", "p99", "max", "added chunk p50",
                         "added chunk p99", "CPU us/stream", "RSS peak MB",
                         "chunks got/expected", "non-2xx+errors", "ledger parity"], lines))
        md.append("")
    par_rows = [r for r in rows if r["kind"] == "parity"]
    if par_rows:
        md.append("## Exact ledger parity, non-streaming (draining client, 64 connections)")
        md.append("")
        md.append(table(["round", "req/s", "2xx answers", "billed rows", "rows", "upstream requests",
                         "verdict"],
                        [[r["round"], f(num(r["rps"])), r["ok"], r["billed"], r["rows"],
                          r["up_reqs"], r["parity"]] for r in par_rows]))
        md.append("")
    open_rows = [r for r in rows if r["kind"] == "open"]
    if open_rows:
        md.append(f"## Open streams ({s.get('open_streams')} concurrent streams, one chunk per second "
                  f"for {s.get('open_seconds')} s)")
        md.append("")
        md.append(table(["target", "streams complete", "open at once (mock, sampled)",
                         "chunks delivered/expected",
                         "CPU % of one core (steady state)", "RSS peak MB", "TTFC p99",
                         "chunk delay p50", "p99", "max", "conns/reqs to mock", "ledger parity"],
                        [[r["target"], f"{r['complete']}/{r['conns']}", r.get("streams_open_max", "-"),
                          f"{r['chunks']}/{r['chunks_expected']}", r.get("cpu_pct", "-"),
                          mb(num(r["rss_hwm_kb"])), r["ttfc_p99"], r["chunk_p50"], r["chunk_p99"],
                          r["chunk_max"], f"{r['up_conns']}/{r['up_reqs']}",
                          r.get("parity") or "n/a"] for r in open_rows]))
        md.append("")

    # floors
    lf = info.get("ledger_floor") or {}
    if "relay" in targets or lf:
        md.append("## Floors on this machine")
        md.append("")
        if "relay" in targets:
            md.append("`relay` is bench/floor_relay.c: each client connection paired with its own "
                      "upstream connection, bytes copied both ways unread (no HTTP parsing, no "
                      "JSON, no ledger, no hand-off: two threads, a pair stays on the one that "
                      "accepted it). What it adds over direct is what any relay pays here: a "
                      "second loopback hop each way and one more process wake-up. "
                      "The targets table shows its figure beside tollgate's.")
            md.append("")
        if lf:
            md.append("The ledger's two durable writes (bench/ledger_bench `latency`, before any "
                      "load, on a fresh ledger in the work directory): one request's reserve and "
                      "settlement, each appended to the ledger's intent journal on the calling "
                      "thread and acknowledged, as tollgate does on its event loop. The design "
                      "makes both durable before the answer, so their sum is the floor under "
                      "tollgate's added latency at one connection, on top of the relay's.")
            md.append("")
            ll = []
            for gap in sorted(lf, key=int):
                v = lf[gap]
                ll.append([f"{gap} us" if gap != "0" else "none (back to back)",
                           f"{v.get('reserve_ack_p50', '-')} / {v.get('reserve_ack_p99', '-')}",
                           f"{v.get('settle_ack_p50', '-')} / {v.get('settle_ack_p99', '-')}",
                           f"{v.get('both_ack_p50', '-')} / {v.get('both_ack_p99', '-')}"])
            md.append(table(["gap between requests", "reserve p50 / p99 us",
                             "settle p50 / p99 us", "both p50 / p99 us"], ll))
            md.append("")

    # targets
    md.append("## Targets (tollgate)")
    md.append("")
    tl = []

    def A(kind, c, m, target="tollgate"):
        a = agg.get((kind, target, c))
        return None if a is None else a.get(m)

    def R(kind, c, m, fmt=f):
        """the zero-work relay's figure for the same cell (the floor column)"""
        return fmt(A(kind, c, m, "relay")) if "relay" in targets else "-"
    tl.append(["added latency, 1 conn, p50", f(A("plain", 1, "added_lat_p50")), "<= 60 us",
               verdict(A("plain", 1, "added_lat_p50"), 60), R("plain", 1, "added_lat_p50")])
    tl.append(["added latency, 1 conn, p99", f(A("plain", 1, "added_lat_p99")), "<= 150 us",
               verdict(A("plain", 1, "added_lat_p99"), 150), R("plain", 1, "added_lat_p99")])
    if A("lat1", 1, "added_lat_p50") is not None:
        for q in ("p50", "p99"):
            lim = 60 if q == "p50" else 150
            tl.append([f"added latency, 1 conn, {q}, per request (stream_client)",
                       f(A("lat1", 1, "added_lat_" + q)), f"<= {lim} us",
                       verdict(A("lat1", 1, "added_lat_" + q), lim),
                       R("lat1", 1, "added_lat_" + q)])
    tl.append(["req/s at 64 conns", f(A("plain", 64, "rps")), ">= 10,000",
               verdict(A("plain", 64, "rps"), 10000, le=False), R("plain", 64, "rps")])
    pk = A("plain", 64, "rps", "portkey")
    tg = A("plain", 64, "rps")
    ratio = tg / pk if pk and tg else None
    tl.append(["throughput vs Portkey at 64 conns", f(ratio, 1, "x"), ">= 5x",
               verdict(ratio, 5, le=False) if pk else
               ("not run (--portkey)" if "portkey" not in targets else "not measured"), "-"])
    tl.append(["CPU per request at 64 conns", f(A("plain", 64, "cpu_us_per_req"), 1), "<= 80 us",
               verdict(A("plain", 64, "cpu_us_per_req"), 80),
               R("plain", 64, "cpu_us_per_req", lambda v: f(v, 1))])
    tl.append(["RSS peak at 64 conns", mb(A("plain", 64, "rss_hwm_kb")) + " MB", "<= 30 MB",
               verdict(A("plain", 64, "rss_hwm_kb"), 30 * 1024),
               R("plain", 64, "rss_hwm_kb", lambda v: mb(v) + " MB")])
    for c in conns:
        if A("stream", c, "added_ttfc_p99") is not None:
            tl.append([f"streaming: added TTFC p99, {c} conns", f(A("stream", c, "added_ttfc_p99")),
                       "<= 300 us", verdict(A("stream", c, "added_ttfc_p99"), 300),
                       R("stream", c, "added_ttfc_p99")])
    for c in conns:
        if A("stream", c, "added_chunk_p99") is not None:
            tl.append([f"streaming: chunk forwarding, added p99 (max), {c} conns",
                       f"{f(A('stream', c, 'added_chunk_p99'))} ({f(A('stream', c, 'added_chunk_max'))})",
                       "<= 100 us", verdict(A("stream", c, "added_chunk_p99"), 100),
                       R("stream", c, "added_chunk_p99")])
    relay_open = {r["conns"]: r for r in open_rows if r["target"] == "relay"}
    for r in open_rows:
        if r["target"] != "tollgate":
            continue
        fl = relay_open.get(r["conns"])
        every = int(r["chunks"]) == int(r["chunks_expected"]) and int(r["complete"]) == int(r["conns"])
        tl.append([f"{r['conns']} open streams: every chunk delivered",
                   f"{r['chunks']}/{r['chunks_expected']}", "all", "PASS" if every else "MISS",
                   f"{fl['chunks']}/{fl['chunks_expected']}" if fl else "-"])
        tl.append([f"{r['conns']} open streams: RSS peak", mb(num(r["rss_hwm_kb"])) + " MB",
                   "<= 200 MB", verdict(num(r["rss_hwm_kb"]), 200 * 1024),
                   mb(num(fl["rss_hwm_kb"])) + " MB" if fl else "-"])
        tl.append([f"{r['conns']} open streams: gateway CPU", f"{r.get('cpu_pct')} %", "<= 10 %",
                   verdict(num(r.get("cpu_pct")), 10), f"{fl.get('cpu_pct')} %" if fl else "-"])
    gw_par = [r for r in rows if r["target"] == "tollgate" and r.get("parity")]
    good = sum(r["parity"] in ("ok", "exact") for r in gw_par)
    tl.append(["ledger parity, every tollgate run", f"{good}/{len(gw_par)} runs", "100 %",
               "PASS" if gw_par and good == len(gw_par) else ("MISS" if gw_par else "not measured"),
               "-"])
    md.append(table(["target", "measured", "limit", "verdict", "floor: zero-work relay"], tl))
    md.append("")

    # socket hygiene
    md.append("## Socket hygiene")
    md.append("")
    for k, v in sorted(info.get("sockets", {}).items()):
        g, m = v.get("gateway", {}), v.get("mock", {})
        md.append(f"- {k}: gateway upstream sockets with TCP_NODELAY {g.get('peer_nodelay')}/"
                  f"{g.get('peer')}, client sockets {g.get('local_nodelay')}/{g.get('local')}; "
                  f"mock sockets {m.get('local_nodelay')}/{m.get('local')} (sockcheck, mid-run)")
    for t in targets:
        if t == "direct":
            continue
        rs = [r for r in rows
              if r["target"] == t and r["kind"] in ("plain", "stream", "parity", "lat1")]
        if rs:
            uc = sum(int(r["up_conns"]) for r in rs)
            ur = sum(int(r["up_reqs"]) for r in rs)
            md.append(f"- keep-alive reuse, {t}: {uc:,} connections opened to the mock for "
                      f"{ur:,} upstream requests over the matrix ({ur / max(1, uc):,.0f} requests "
                      f"per connection)")
    for t in targets:
        # per request where measured: wrk's p99 carries its coordinated-omission samples
        a = agg.get(("lat1", t, 1)) or agg.get(("plain", t, 1))
        if a:
            how = "per request" if a["kind"] == "lat1" else "wrk"
            md.append(f"- Nagle check, {t}, 1 connection ({how}): p99 {f(a['lat_p99'])} us, max "
                      f"{f(a['lat_max'])} us (a Nagle/delayed-ACK stall costs ~40,000 us)")
    md.append("")
    md.append("Raw cells: raw.csv; aggregated: latest.csv. See bench/README.md for how each figure "
              "is computed.")
    md.append("")
    return "\n".join(md), agg


def write(rows, info, out):
    with open(os.path.join(out, "raw.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=RAW_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    with open(os.path.join(out, "info.json"), "w") as fh:
        json.dump(info, fh, indent=1)
    render_files(out)


def render_files(out):
    """latest.md and latest.csv from raw.csv and info.json in out; prints latest.md."""
    with open(os.path.join(out, "raw.csv")) as fh:
        rows = list(csv.DictReader(fh))
    with open(os.path.join(out, "info.json")) as fh:
        info = json.load(fh)
    md, agg = render(rows, info)
    with open(os.path.join(out, "latest.md"), "w") as fh:
        fh.write(md)
    fields = ["kind", "target", "conns", "rounds"] + METRICS + ["added_" + m for m in ADDED] + \
        ["failed_answers", "parity"]
    with open(os.path.join(out, "latest.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for key in sorted(agg, key=lambda k: (k[0], k[2], k[1])):
            w.writerow(agg[key])
    print(md)


if __name__ == "__main__":
    render_files(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "results"))
