#!/usr/bin/env python3
"""harness.py: tollgate's benchmark matrix. Started by bench/run.sh, which installs what is
missing and builds tollgate, the fast mock, the stream client and sockcheck first.

Starts the fast mock, tollgate (and Portkey's gateway with --portkey) on 127.0.0.1, runs
interleaved rounds of cells (direct to the mock, through tollgate, through Portkey) at each
concurrency, non-streaming with wrk and streaming with stream_client, measures each cell
(throughput, latency, CPU time and RSS of the gateway process, upstream connections and
requests seen by the mock, ledger rows), then aggregates the rounds and writes
results/latest.md, results/latest.csv and results/raw.csv. Every process it starts is
stopped by PID, on any exit.
"""
import argparse
import atexit
import datetime
import json
import os
import platform
import re
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODEL = "bench/echo-1"           # the catalog id clients ask tollgate for
UPSTREAM_MODEL = "bench-echo-1"  # the provider's own id (what the mock sees)
PLAIN_BODY = ('{"model":"%s","messages":[{"role":"user","content":"Say hello"}],'
              '"max_tokens":16}')

PROCS = []


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stop_all():
    for p in reversed(PROCS):
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 8
    for p in reversed(PROCS):
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    PROCS.clear()


def on_signal(signum, frame):
    stop_all()
    sys.exit(128 + signum)


def start(cmd, logfile, env=None, cwd=None):
    f = open(logfile, "ab")
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                         stdin=subprocess.DEVNULL)
    PROCS.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in PROCS:
        PROCS.remove(p)


def wait_port_file(path, proc, timeout=20):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}) before listening")
        try:
            with open(path) as f:
                s = f.read().strip()
            if s:
                return int(s)
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no port file {path} after {timeout}s")


# ---- /proc ---------------------------------------------------------------------------

def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])   # utime + stime, all threads


def machine_ticks():
    """(busy, steal) jiffies summed over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return v[0] + v[1] + v[2] + v[5] + v[6], v[7] if len(v) > 7 else 0


def own_ticks(pids):
    """jiffies used by the processes we run: targets (by pid), finished children (load
    generators), and this harness."""
    t = 0
    for pid in pids:
        try:
            t += cpu_ticks(pid)
        except OSError:
            pass
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    return t + (ch.ru_utime + ch.ru_stime + me.ru_utime + me.ru_stime) * CLK_TCK


def mem_kb(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out.get("VmRSS", 0), out.get("VmHWM", 0)


def reset_hwm(pid):
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")   # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


# ---- the mock and the ledger -----------------------------------------------------------

class Mock:
    def __init__(self, port):
        self.port = port
        self.calls = 0   # our own /_stats connections, subtracted from connection counts

    def stats(self):
        self.calls += 1
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stats", timeout=5) as r:
            return json.loads(r.read())


class Ledger:
    def __init__(self, path):
        self.path = path

    def q(self, sql, args=()):
        for attempt in range(20):
            try:
                con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
                try:
                    return con.execute(sql, args).fetchall()
                finally:
                    con.close()
            except sqlite3.OperationalError:
                if attempt == 19:
                    raise
                time.sleep(0.1)

    def max_id(self):
        return self.q("select coalesce(max(id),0) from requests")[0][0]

    def since(self, first_id):
        rows = self.q("select status, client_disconnected, count(*) from requests where id > ? "
                      "group by 1, 2", (first_id,))
        out = {"rows": 0, "billed": 0, "billed_disconnected": 0, "reserved": 0, "failed": 0,
               "other": 0}
        for status, disc, n in rows:
            out["rows"] += n
            if status == "billed":
                out["billed"] += n
                if disc:
                    out["billed_disconnected"] += n
            elif status == "reserved":
                out["reserved"] += n
            elif status == "failed":
                out["failed"] += n
            else:
                out["other"] += n
        return out


# ---- load generators ------------------------------------------------------------------

def run_wrk(port, conns, duration, headers, model):
    threads = 1 if conns == 1 else 2
    env = dict(os.environ)
    env["BENCH_BODY"] = PLAIN_BODY % model
    env["BENCH_HEADERS"] = "|".join(f"{k}: {v}" for k, v in headers.items())
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{max(1, round(duration))}s", "--timeout", "10s",
           "-s", os.path.join(HERE, "wrk_post.lua"), f"http://127.0.0.1:{port}/v1/chat/completions"]
    return cmd, env


def parse_wrk(out):
    m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
    if not m:
        raise RuntimeError("wrk printed no WRKJSON line:\n" + out[-2000:])
    j = json.loads(m.group(1))
    errors = j["err_connect"] + j["err_read"] + j["err_write"] + j["err_timeout"]
    return {
        "requests": j["requests"], "ok": j["requests"] - j["err_status"],
        "non2xx": j["err_status"], "errors": errors,
        "rps": j["requests"] / (j["duration_us"] / 1e6) if j["duration_us"] else 0,
        "lat_p50": j["lat_p50"], "lat_p90": j["lat_p90"], "lat_p99": j["lat_p99"],
        "lat_p999": j["lat_p999"], "lat_max": j["lat_max"],
    }


def stream_client_cmd(bindir, port, conns, headers, model, plain=False, duration=None,
                      requests=None, chunks=8, interval=10, ramp_ms=0, drain_s=30):
    cmd = [os.path.join(bindir, "stream_client"), "--port", str(port), "--streams", str(conns),
           "--model", model, "--drain-s", str(drain_s)]
    if duration:
        cmd += ["--duration", str(duration)]
    if requests:
        cmd += ["--requests", str(requests)]
    if plain:
        cmd += ["--plain"]
    else:
        cmd += ["--chunks", str(chunks), "--interval-ms", str(interval)]
    if ramp_ms:
        cmd += ["--ramp-ms", str(ramp_ms)]
    for k, v in headers.items():
        cmd += ["--header", f"{k}: {v}"]
    return cmd


def parse_sc(out):
    m = re.search(r"^SC (.*)$", out, re.M)
    if not m:
        raise RuntimeError("stream_client printed no SC line:\n" + out[-2000:])
    kv = dict(x.split("=", 1) for x in m.group(1).split())
    num = {}
    for k, v in kv.items():
        try:
            num[k] = float(v) if "." in v else int(v)
        except ValueError:
            num[k] = v
    return num


# ---- one cell -------------------------------------------------------------------------

class Bench:
    def __init__(self, args, work, bindir, mock, mock_proc, targets, ledger):
        self.args = args
        self.work = work
        self.bindir = bindir
        self.mock = mock
        self.mock_proc = mock_proc
        self.targets = targets   # name -> dict(port, pid, headers, model)
        self.ledger = ledger
        self.rows = []
        self.sock = {}

    def sockcheck(self, tname):
        t = self.targets[tname]
        out = {}
        for who, pid, extra in (("gateway", t["pid"], ["--peer-port", str(self.mock.port),
                                                        "--local-port", str(t["port"])]),
                                ("mock", self.mock_proc.pid, ["--local-port", str(self.mock.port)])):
            r = subprocess.run([os.path.join(self.bindir, "sockcheck"), str(pid)] + extra,
                               capture_output=True, text=True)
            m = re.search(r"^SOCK (.*)$", r.stdout, re.M)
            out[who] = dict(x.split("=", 1) for x in m.group(1).split()) if m else {"error": r.stderr}
        return out

    def cell(self, rnd, kind, tname, conns, duration, sock=False):
        t = self.targets[tname]
        pid = t["pid"]
        gw = tname == "tollgate"
        first_id = self.ledger.max_id() if gw else 0
        s0 = self.mock.stats()
        n0 = self.mock.calls
        reset_hwm(pid)
        c0 = cpu_ticks(pid)
        pids = {self.mock_proc.pid} | {x["pid"] for x in self.targets.values()}
        m0, st0 = machine_ticks()
        o0 = own_ticks(pids)
        t0 = time.time()
        if kind == "plain":
            cmd, env = run_wrk(t["port"], conns, duration, t["headers"], t["model"])
        elif kind in ("parity", "lat1"):
            cmd, env = stream_client_cmd(self.bindir, t["port"], conns, t["headers"], t["model"],
                                         plain=True, duration=duration), None
        else:
            cmd, env = stream_client_cmd(self.bindir, t["port"], conns, t["headers"], t["model"],
                                         duration=duration, chunks=self.args.chunks,
                                         interval=self.args.interval_ms), None
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env)
        if sock:
            time.sleep(min(1.0, duration / 2))
            self.sock[(kind, tname, conns)] = self.sockcheck(tname)
        out, _ = p.communicate(timeout=duration + 120)
        elapsed = time.time() - t0
        m1, st1 = machine_ticks()
        o1 = own_ticks(pids)
        cap = elapsed * (os.cpu_count() or 1) * CLK_TCK
        other_pct = max(0.0, ((m1 - m0) - (o1 - o0)) / cap * 100) if cap else 0
        steal_pct = (st1 - st0) / cap * 100 if cap else 0
        r = parse_wrk(out) if kind == "plain" else parse_sc(out)
        c1 = cpu_ticks(pid)
        rss, hwm = mem_kb(pid)
        # the gateway may still finish requests the load generator abandoned at its deadline:
        # wait until the ledger and the mock agree and both stay still for two readings
        s1 = self.mock.stats()
        if gw:
            settle_deadline = time.time() + 15
            prev = None
            while time.time() < settle_deadline:
                led = self.ledger.since(first_id)
                s1 = self.mock.stats()
                cur = (led["rows"], led["reserved"], s1["chat_requests"])
                if cur == prev and led["reserved"] == 0 and \
                        led["rows"] == s1["chat_requests"] - s0["chat_requests"]:
                    break
                prev = cur
                time.sleep(0.15)
        else:
            settle_deadline = time.time() + 5
            prev = None
            while time.time() < settle_deadline and s1["chat_requests"] != prev:
                prev = s1["chat_requests"]
                time.sleep(0.15)
                s1 = self.mock.stats()
        up_reqs = s1["chat_requests"] - s0["chat_requests"]
        up_conns = s1["connections"] - s0["connections"] - (self.mock.calls - n0)
        cpu_s = (c1 - c0) / CLK_TCK
        row = {
            "round": rnd, "kind": kind, "target": tname, "conns": conns, "duration_s": duration,
            "elapsed_s": round(elapsed, 2),
            "requests": r.get("requests", r.get("finished", 0)), "ok": r["ok"],
            "non2xx": r["non2xx"], "errors": r["errors"], "rps": round(r["rps"], 1),
            "lat_p50": r["lat_p50"], "lat_p90": r["lat_p90"], "lat_p99": r["lat_p99"],
            "lat_p999": r.get("lat_p999", ""), "lat_max": r["lat_max"],
            "cpu_s": round(cpu_s, 3),
            "cpu_us_per_req": round(cpu_s * 1e6 / up_reqs, 1) if up_reqs else "",
            "rss_hwm_kb": hwm, "rss_end_kb": rss,
            "up_conns": up_conns, "up_reqs": up_reqs,
            "other_cpu_pct": round(other_pct, 1), "steal_pct": round(steal_pct, 1),
        }
        if kind == "stream":
            for k in ("ttfc_p50", "ttfc_p90", "ttfc_p99", "ttfc_max", "chunk_p50", "chunk_p90",
                      "chunk_p99", "chunk_p999", "chunk_max", "chunks", "chunks_expected",
                      "complete", "incomplete"):
                row[k] = r[k]
            row["rps"] = round(r["finished"] / r["elapsed_s"], 1) if r["elapsed_s"] else 0
        if gw:
            led = self.ledger.since(first_id)
            row.update({"rows": led["rows"], "billed": led["billed"],
                        "billed_disconnected": led["billed_disconnected"],
                        "reserved_left": led["reserved"], "failed": led["failed"]})
            row["parity"], row["parity_note"] = self.parity(kind, conns, row)
        self.rows.append(row)
        extra = ""
        if kind == "stream":
            extra = (f" ttfc p50/p99 {row['ttfc_p50']}/{row['ttfc_p99']} us, chunk p50/p99 "
                     f"{row['chunk_p50']}/{row['chunk_p99']} us, {row['chunks']}/"
                     f"{row['chunks_expected']} chunks")
        log(f"r{rnd} {kind:6} {tname:8} c={conns:<4} {row['rps']:>9} req/s  p50 {row['lat_p50']} "
            f"p99 {row['lat_p99']} us  cpu {row['cpu_us_per_req']} us/req  hwm "
            f"{hwm // 1024} MB  up {up_conns} conns/{up_reqs} reqs{extra}"
            + (f"  parity {row['parity']}" if gw else ""))
        return row

    @staticmethod
    def parity(kind, conns, row):
        """settled rows == successful responses."""
        ok = row["ok"]
        billed = row["billed"]
        base_ok = row["reserved_left"] == 0 and row["rows"] == row["up_reqs"] and \
            row["non2xx"] == 0 and row["failed"] == 0
        note = (f"billed {billed}, 2xx {ok}, rows {row['rows']}, upstream requests "
                f"{row['up_reqs']}, reserved left {row['reserved_left']}, failed {row['failed']}")
        if kind == "plain":
            # wrk stops at its deadline without reading the answers still in flight (at most
            # one per connection) and closes those connections. The gateway billed the ones
            # it had already answered, and settles the rest as failed with
            # client_disconnected (it notices the client left), so billed + failed may
            # exceed wrk's 2xx count by at most the number of connections.
            base_ok = row["reserved_left"] == 0 and row["rows"] == row["up_reqs"] and \
                row["non2xx"] == 0
            gap = billed + row["failed"] - ok
            good = base_ok and billed >= ok and 0 <= gap <= conns
            note += f", in flight at wrk's stop {gap} (<= {conns} allowed)"
            return ("ok" if good else "MISMATCH"), note
        # stream_client drains: exact
        good = base_ok and billed == ok and row["billed_disconnected"] == 0
        if kind == "stream":
            good = good and row["complete"] == ok and row["chunks"] == row["chunks_expected"]
        return ("exact" if good else "MISMATCH"), note

    # ---- open streams ----
    def open_streams(self, tname):
        a = self.args
        t = self.targets[tname]
        pid = t["pid"]
        n, secs = a.open_streams, a.open_seconds
        ramp_ms = a.open_ramp_ms
        gw = tname == "tollgate"
        first_id = self.ledger.max_id() if gw else 0
        s0 = self.mock.stats()
        n0 = self.mock.calls
        reset_hwm(pid)
        cmd = stream_client_cmd(self.bindir, t["port"], n, t["headers"], t["model"],
                                requests=n, chunks=secs, interval=1000, ramp_ms=ramp_ms,
                                drain_s=secs + 60)
        log(f"open streams: {n} streams x {secs} chunks 1 s apart via {tname} (ramp {ramp_ms} ms)")
        c_start = cpu_ticks(pid)
        t0 = time.time()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # steady state: every stream open, from ramp + 1.5 s for (secs - 4) s
        w0, w1 = ramp_ms / 1000 + 1.5, ramp_ms / 1000 + 1.5 + max(2.0, secs - 4.0)
        cw0 = cw1 = None
        tw0 = tw1 = None
        rss_max = 0
        open_max = 0
        while p.poll() is None:
            now = time.time() - t0
            rss, hwm = mem_kb(pid)
            rss_max = max(rss_max, rss)
            if cw0 is None and now >= w0:
                cw0, tw0 = cpu_ticks(pid), time.time()
                open_max = max(open_max, self.mock.stats()["streams_open"])
            if cw1 is None and now >= w1:
                cw1, tw1 = cpu_ticks(pid), time.time()
                open_max = max(open_max, self.mock.stats()["streams_open"])
            time.sleep(0.25)
        out = p.stdout.read()
        elapsed = time.time() - t0
        r = parse_sc(out)
        c_end = cpu_ticks(pid)
        rss, hwm = mem_kb(pid)
        s1 = self.mock.stats()
        cpu_pct = ((cw1 - cw0) / CLK_TCK) / (tw1 - tw0) * 100 if cw1 is not None else None
        row = {
            "round": 0, "kind": "open", "target": tname, "conns": n, "duration_s": secs,
            "elapsed_s": round(elapsed, 2), "requests": r["finished"], "ok": r["ok"],
            "non2xx": r["non2xx"], "errors": r["errors"], "rps": "",
            "lat_p50": r["lat_p50"], "lat_p90": r["lat_p90"], "lat_p99": r["lat_p99"],
            "lat_max": r["lat_max"], "ttfc_p50": r["ttfc_p50"], "ttfc_p99": r["ttfc_p99"],
            "ttfc_max": r["ttfc_max"], "chunk_p50": r["chunk_p50"], "chunk_p90": r["chunk_p90"],
            "chunk_p99": r["chunk_p99"], "chunk_p999": r["chunk_p999"],
            "chunk_max": r["chunk_max"], "chunks": r["chunks"],
            "chunks_expected": n * secs, "complete": r["complete"], "incomplete": r["incomplete"],
            "cpu_s": round((c_end - c_start) / CLK_TCK, 2),
            "cpu_pct": round(cpu_pct, 1) if cpu_pct is not None else "",
            "cpu_us_per_req": round((c_end - c_start) / CLK_TCK * 1e6 / max(1, r["finished"]), 1),
            "rss_hwm_kb": hwm, "rss_end_kb": rss, "rss_max_sampled_kb": rss_max,
            "up_conns": s1["connections"] - s0["connections"] - (self.mock.calls - n0),
            "up_reqs": s1["chat_requests"] - s0["chat_requests"], "streams_open_max": open_max,
            "conn_errors": r["conn_errors"],
        }
        if gw:
            deadline = time.time() + 10
            while self.ledger.since(first_id)["reserved"] and time.time() < deadline:
                time.sleep(0.1)
            led = self.ledger.since(first_id)
            row.update({"rows": led["rows"], "billed": led["billed"],
                        "billed_disconnected": led["billed_disconnected"],
                        "reserved_left": led["reserved"], "failed": led["failed"]})
            row["parity"], row["parity_note"] = self.parity("stream", n, row)
        self.rows.append(row)
        log(f"open {tname}: {r['complete']}/{n} streams complete, chunks {r['chunks']}/{n * secs}, "
            f"mock streams open (sampled max) {open_max}, cpu {row['cpu_pct']}% of one core, "
            f"RSS hwm {hwm // 1024} MB, chunk delay p50/p99/max {r['chunk_p50']}/"
            f"{r['chunk_p99']}/{r['chunk_max']} us" + (f", parity {row['parity']}" if gw else ""))
        return row


# ---- set-up ---------------------------------------------------------------------------

def ledger_floor(binary, work):
    """ledger_bench latency: the reserve and settlement of one request at a time (a journal
    append each, until acknowledged), back to back and 300 us apart (about the spacing at one
    connection), on a fresh ledger in the work directory. {gap: {name: us}}."""
    out = {}
    for gap in (0, 300):
        db = os.path.join(work, f"ledger-floor-{gap}.db")
        for suffix in ("", "-wal", "-shm", "-tgj0", "-tgj1"):
            if os.path.exists(db + suffix):
                os.unlink(db + suffix)
        r = subprocess.run([binary, "latency", db, "2000", str(gap)], capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            log(f"ledger_bench latency failed: {r.stderr.strip()[-300:]}")
            return out
        vals = {}
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == "us":
                vals[parts[0]] = int(parts[1])
        out[str(gap)] = vals
        log(f"ledger writes, {gap} us apart: reserve p50/p99 {vals.get('reserve_ack_p50')}/"
            f"{vals.get('reserve_ack_p99')} us, settle {vals.get('settle_ack_p50')}/"
            f"{vals.get('settle_ack_p99')} us, both {vals.get('both_ack_p50')}/"
            f"{vals.get('both_ack_p99')} us")
    return out


def write_config(work, mock_port, ledger_path, log_level, no_auth):
    catalog = {
        "version": "bench-1",
        "note": "benchmark catalog: one model priced at one provider (the fast mock)",
        "models": [{
            "id": MODEL, "owned_by": "bench", "created": 1750000000,
            "input_modalities": ["text"], "capabilities": ["tools", "json_mode"],
            "providers": {"groq": {"model": UPSTREAM_MODEL, "input": "0.15", "output": "0.60",
                                   "context_length": 131072, "max_output": 4096}},
        }],
    }
    cfg = {
        "listen": "127.0.0.1:0",
        "log_level": log_level,
        "catalog": "catalog.json",
        "ledger": {"path": ledger_path, "synchronous": "normal"},
        "routing": {"default_order": ["groq"]},
        "providers": {"groq": {"base_url": f"http://127.0.0.1:{mock_port}/v1",
                               "api_key": "bench"}},
    }
    if no_auth:
        cfg["auth"] = {"enabled": False}
    if os.environ.get("TG_BENCH_THREADS"):   # event loops (config "threads")
        cfg["threads"] = int(os.environ["TG_BENCH_THREADS"])
    with open(os.path.join(work, "catalog.json"), "w") as f:
        json.dump(catalog, f, indent=1)
    path = os.path.join(work, "tollgate.json")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)
    return path


def machine_info(args, tollgate_bin):
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except Exception:
            return ""
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = f.readline().split()[1]
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(int(mem) / 1024 / 1024, 1),
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
        "tollgate_commit": args.source or sh(f"git -C {ROOT} rev-parse --short HEAD"),
        "wrk": sh("wrk -v 2>&1 | head -1").split(" [")[0],
        "libmicrohttpd": sh("pkg-config --modversion libmicrohttpd"),
        "libcurl": sh("pkg-config --modversion libcurl"),
        "sqlite": sqlite3.sqlite_version,
    }
    if args.portkey:
        info["node"] = sh("node --version")
        try:
            with open(os.path.join(HERE, "portkey/node_modules/@portkey-ai/gateway/package.json")) as f:
                info["portkey_gateway"] = json.load(f)["version"]
            with open(os.path.join(HERE, "portkey/node_modules/@hono/node-server/package.json")) as f:
                info["hono_node_server"] = json.load(f)["version"]
        except OSError:
            pass
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bindir", required=True, help="where fast_mock, stream_client, sockcheck are")
    ap.add_argument("--tollgate", required=True, help="the tollgate binary")
    ap.add_argument("--work", required=True, help="scratch directory (ledger, logs)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--source", default="", help="what tollgate was built from (for the report)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--duration", type=float, help="seconds per non-streaming cell")
    ap.add_argument("--stream-duration", type=float, help="seconds per streaming cell")
    ap.add_argument("--conns", default="1,16,64,256")
    ap.add_argument("--chunks", type=int, default=8, help="content chunks per stream (matrix)")
    ap.add_argument("--interval-ms", type=int, default=10, help="ms between chunks (matrix)")
    ap.add_argument("--no-matrix", action="store_true", help="skip the matrix (open streams only)")
    ap.add_argument("--no-stream", action="store_true")
    ap.add_argument("--portkey", action="store_true")
    ap.add_argument("--ledger-bench", default="",
                    help="bench/ledger_bench binary: measure the ledger's commit latency first")
    ap.add_argument("--no-relay", action="store_true",
                    help="skip floor_relay, the zero-work relay that measures the floor")
    ap.add_argument("--open-streams", type=int, default=0, help="run the open-streams test with N")
    ap.add_argument("--open-seconds", type=int, default=20)
    ap.add_argument("--open-ramp-ms", type=int, default=3000)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--no-auth", action="store_true",
                    help="run tollgate with auth.enabled=false instead of with an API key")
    ap.add_argument("--perf", action="store_true", help="perf record tollgate at 64 connections")
    args = ap.parse_args()
    if args.rounds is None:
        args.rounds = 3
    if args.duration is None:
        args.duration = 1.0 if args.quick else 5.0
    if args.stream_duration is None:
        args.stream_duration = 1.5 if args.quick else 4.0
    conns_list = [int(c) for c in args.conns.split(",") if c]

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    atexit.register(stop_all)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log(f"open files limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")

    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    info = machine_info(args, args.tollgate)
    t_begin = time.time()

    # the ledger's own floor: one request's two commits, on this disk, before any load
    if args.ledger_bench:
        info["ledger_floor"] = ledger_floor(args.ledger_bench, args.work)

    # fast mock
    mport_file = os.path.join(args.work, "mock.port")
    for f in (mport_file,):
        if os.path.exists(f):
            os.unlink(f)
    mock_proc = start([os.path.join(args.bindir, "fast_mock"), "--port", "0", "--port-file",
                       mport_file], os.path.join(args.work, "mock.log"))
    mock = Mock(wait_port_file(mport_file, mock_proc))
    log(f"fast mock pid {mock_proc.pid} on 127.0.0.1:{mock.port}")

    # the floor: a relay that copies bytes and does nothing else
    relay_port = relay_proc = None
    if not args.no_relay:
        rport_file = os.path.join(args.work, "relay.port")
        if os.path.exists(rport_file):
            os.unlink(rport_file)
        relay_proc = start([os.path.join(args.bindir, "floor_relay"), "--upstream-port",
                            str(mock.port), "--port", "0", "--port-file", rport_file],
                           os.path.join(args.work, "relay.log"))
        relay_port = wait_port_file(rport_file, relay_proc)
        log(f"floor relay pid {relay_proc.pid} on 127.0.0.1:{relay_port}")

    # tollgate
    ledger_path = os.path.join(args.work, "ledger.db")
    for suffix in ("", "-wal", "-shm", "-tgj0", "-tgj1"):
        if os.path.exists(ledger_path + suffix):
            os.unlink(ledger_path + suffix)
    cfg = write_config(args.work, mock.port, ledger_path, args.log_level, args.no_auth)
    # a tollgate API key (auth is on by default): no budget, no rate limits
    key = None
    if not args.no_auth:
        kr = subprocess.run([args.tollgate, "keys", "create", "--name", "bench", "--ledger",
                             ledger_path], capture_output=True, text=True)
        if kr.returncode == 0 and kr.stdout.strip().startswith("tg-"):
            key = kr.stdout.strip().splitlines()[0]
            log("created a tollgate key for the benchmark (tollgate keys create)")
        else:
            log("no key created (this tollgate has no 'keys create'?); running without one: "
                + (kr.stderr.strip().splitlines() or [""])[-1])
    gport_file = os.path.join(args.work, "tollgate.port")
    if os.path.exists(gport_file):
        os.unlink(gport_file)
    gw_proc = start([args.tollgate, "serve", "--config", cfg, "--listen", "127.0.0.1:0",
                     "--port-file", gport_file, "--ledger", ledger_path],
                    os.path.join(args.work, "tollgate.log"))
    gport = wait_port_file(gport_file, gw_proc)
    log(f"tollgate pid {gw_proc.pid} on 127.0.0.1:{gport}, ledger {ledger_path}")
    ledger = Ledger(ledger_path)
    targets = {
        "direct": {"port": mock.port, "pid": mock_proc.pid, "headers": {}, "model": MODEL},
        "tollgate": {"port": gport, "pid": gw_proc.pid, "model": MODEL,
                     "headers": {"Authorization": f"Bearer {key}"} if key else {}},
    }
    if relay_proc:
        targets["relay"] = {"port": relay_port, "pid": relay_proc.pid, "headers": {},
                            "model": MODEL}

    # Portkey
    if args.portkey:
        pk_dir = os.path.join(HERE, "portkey")
        pport_file = os.path.join(args.work, "portkey.port")
        if os.path.exists(pport_file):
            os.unlink(pport_file)
        env = dict(os.environ, PORT_FILE=pport_file, NODE_ENV="production")
        pk_proc = start(["node", "-r", os.path.join(pk_dir, "loopback.cjs"),
                         os.path.join(pk_dir, "node_modules/@portkey-ai/gateway/build/start-server.js"),
                         "--port=0", "--headless"], os.path.join(args.work, "portkey.log"),
                        env=env, cwd=pk_dir)
        pport = wait_port_file(pport_file, pk_proc, timeout=60)
        log(f"portkey pid {pk_proc.pid} on 127.0.0.1:{pport}")
        targets["portkey"] = {
            "port": pport, "pid": pk_proc.pid, "model": UPSTREAM_MODEL,
            "headers": {"x-portkey-provider": "openai",
                        "x-portkey-custom-host": f"http://127.0.0.1:{mock.port}/v1",
                        "Authorization": "Bearer bench"},
        }

    b = Bench(args, args.work, args.bindir, mock, mock_proc, targets, ledger)
    order = ["direct"] + (["relay"] if relay_proc else []) + ["tollgate"] + \
        (["portkey"] if args.portkey else [])

    if not args.no_matrix:
        # warm-up (discarded): connection pools, page cache, Node's JIT
        log("warm-up")
        for tn in order:
            cmd, env = run_wrk(targets[tn]["port"], 16, 2 if tn == "portkey" else 1,
                               targets[tn]["headers"], targets[tn]["model"])
            subprocess.run(cmd, env=env, capture_output=True)
        kinds = ["plain"] + ([] if args.no_stream else ["stream"])
        for rnd in range(1, args.rounds + 1):
            for kind in kinds:
                dur = args.duration if kind == "plain" else args.stream_duration
                for c in conns_list:
                    for tn in order:
                        b.cell(rnd, kind, tn, c, dur, sock=(rnd == 1 and c == 16 and tn != "direct"))
            # one connection again, each request's own latency: wrk's percentiles include the
            # samples it adds for coordinated omission (bench/README.md, "Caveats")
            if 1 in conns_list:
                for tn in order:
                    if tn != "portkey":
                        b.cell(rnd, "lat1", tn, 1, args.duration)
            # exact parity check for non-streaming answers (wrk cannot drain)
            b.cell(rnd, "parity", "tollgate", 64, min(3.0, args.duration))

        if args.perf:
            perf_out = os.path.join(args.out, "perf-tollgate.txt")
            data = os.path.join(args.work, "perf.data")
            log("perf record of tollgate at 64 connections, 5 s")
            cmd, env = run_wrk(gport, 64, 6, targets["tollgate"]["headers"], MODEL)
            w = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
            time.sleep(0.5)
            subprocess.run(["perf", "record", "-F", "999", "-g", "-p", str(gw_proc.pid), "-o", data,
                            "--", "sleep", "5"], capture_output=True)
            w.wait()
            rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                                  "--sort", "dso,symbol", "-g", "none", "--percent-limit", "0.7"],
                                 capture_output=True, text=True)
            with open(perf_out, "w") as f:
                f.write(rep.stdout)
            log(f"perf report in {perf_out}")

    if args.open_streams:
        for tn in order:
            b.open_streams(tn)

    info["wall_time_s"] = round(time.time() - t_begin, 1)
    info["settings"] = {
        "rounds": args.rounds, "duration_s": args.duration, "stream_duration_s": args.stream_duration,
        "conns": conns_list, "chunks": args.chunks, "interval_ms": args.interval_ms,
        "open_streams": args.open_streams, "open_seconds": args.open_seconds,
        "log_level": args.log_level, "quick": args.quick, "portkey": args.portkey,
        "relay": not args.no_relay,
        "auth": "off (auth.enabled=false)" if args.no_auth else ("API key" if key else "none"),
    }
    info["sockets"] = {f"{k[0]}/{k[1]}/c={k[2]}": v for k, v in b.sock.items()}
    stop_all()

    import report
    report.write(b.rows, info, args.out)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
