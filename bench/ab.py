#!/usr/bin/env python3
"""ab.py: tollgate against tollgate. Two or more builds (git refs) measured in interleaved rounds
on the same mock, for a before/after figure that the VM's drift between two full runs of run.sh
would swamp. Each round starts each build in turn on a fresh ledger with an API key, warms it, then:
  plain1   wrk, 1 connection: p50 / p99 added (minus direct to the mock in the same round),
           and p99 through the gateway as measured
  raw1     stream_client --plain, 1 connection: the same, from every request's own latency
           (wrk adds samples for coordinated omission: bench/README.md, "Caveats")
  plain64  wrk, 64 connections: req/s and the gateway's CPU per request
  stream1  stream_client, 1 stream of 8 chunks 10 ms apart: time to first chunk p50 / p99
  burst    RSS after a burst: wrk at 256 connections, 2 s idle (the gateway's once-a-second
           trim), then the RSS peak of a 64-connection run (the order of run.sh's rounds,
           where a 64-connection cell follows the round before's 256-connection one), and
           the RSS 2 s after it
Medians over rounds are printed as a table. Everything listens on 127.0.0.1; every process it
starts is stopped by PID.

  bench/ab.py REF_A REF_B [REF_C ...] [--rounds 5] [--seconds 5]

Builds into bench/build/ab-<sha>/ (Release); the mock and stream_client come from bench/build
(bench/run.sh builds them; run it once first)."""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
BUILD = os.path.join(BENCH, "build")

sys.path.insert(0, BENCH)
from harness import mem_kb, reset_hwm, stop, wait_port_file  # noqa: E402  (as run.sh)


def log(msg):
    print(f"[ab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(ref):
    sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", ref], check=True,
                         capture_output=True, text=True).stdout.strip()
    out = os.path.join(BUILD, f"ab-{sha}")
    binary = os.path.join(out, "build", "tollgate")
    if os.path.exists(binary):
        return sha, binary
    src = os.path.join(out, "src")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(src)
    archive = subprocess.Popen(["git", "-C", ROOT, "archive", ref], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", src], stdin=archive.stdout, check=True)
    archive.wait()
    log(f"building {ref} ({sha})")
    subprocess.run(["cmake", "-S", src, "-B", os.path.join(out, "build"),
                    "-DCMAKE_BUILD_TYPE=Release", "-DTG_TESTS=OFF"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", os.path.join(out, "build"), "-j", str(os.cpu_count())],
                   check=True, stdout=subprocess.DEVNULL)
    return sha, binary


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # utime + stime


def wrk(port, conns, seconds, key=None):
    cmd = ["wrk", f"-t{1 if conns == 1 else 2}", f"-c{conns}", f"-d{seconds}s", "-s",
           os.path.join(BENCH, "wrk_post.lua")]
    if key:
        cmd += ["-H", f"Authorization: Bearer {key}"]
    cmd.append(f"http://127.0.0.1:{port}/v1/chat/completions")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"WRKJSON (\{.*\})", out)
    if not m:
        raise RuntimeError("wrk printed no WRKJSON line:\n" + out[-1000:])
    return json.loads(m.group(1))


def client1(port, seconds, key, plain=False):
    """stream_client on one connection: one stream of 8 chunks 10 ms apart at a time, or with
    plain non-streaming requests. Returns its SC line's figures."""
    cmd = [os.path.join(BUILD, "stream_client"), "--port", str(port), "--streams", "1",
           "--model", "bench/echo-1", "--duration", str(seconds)]
    cmd += ["--plain"] if plain else ["--chunks", "8", "--interval-ms", "10"]
    if key:
        cmd += ["--header", f"Authorization: Bearer {key}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"^SC (.*)$", out, re.M)
    if not m:
        raise RuntimeError("stream_client printed no SC line")
    return dict(x.split("=", 1) for x in m.group(1).split())


def start_mock(work):
    """bench/build/fast_mock on a free loopback port. Returns (proc, port)."""
    port_file = os.path.join(work, "mock.port")
    mock = subprocess.Popen([os.path.join(BUILD, "fast_mock"), "--port", "0", "--port-file",
                             port_file], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return mock, wait_port_file(port_file, mock)
    except BaseException:
        stop(mock)
        raise


def start_gateway(binary, work, mock_port, prefix=(), log_level="warn"):
    """tollgate (binary, run under the command prefix if any) on a fresh ledger in work with
    the bench catalog, the mock at mock_port as groq, and an API key. Returns (proc, port,
    key); stop proc with harness.stop."""
    for f in os.listdir(work):
        if f.startswith("ledger.db"):
            os.unlink(os.path.join(work, f))
    ledger = os.path.join(work, "ledger.db")
    cfg = os.path.join(work, "tollgate.json")
    with open(os.path.join(work, "catalog.json"), "w") as f:
        # the same one-model catalog as harness.py
        json.dump({"version": "bench-1", "models": [{
            "id": "bench/echo-1", "owned_by": "bench", "created": 1750000000,
            "input_modalities": ["text"], "capabilities": [],
            "providers": {"groq": {"model": "bench-echo-1", "input": "0.15", "output": "0.60",
                                   "context_length": 131072, "max_output": 4096}}}]}, f)
    with open(cfg, "w") as f:
        json.dump({"listen": "127.0.0.1:0", "log_level": log_level, "catalog": "catalog.json",
                   "ledger": {"path": ledger, "synchronous": "normal"},
                   "routing": {"default_order": ["groq"]},
                   "providers": {"groq": {"base_url": f"http://127.0.0.1:{mock_port}/v1",
                                          "api_key": "bench"}}}, f)
    key = subprocess.run([binary, "keys", "create", "--name", "ab", "--ledger", ledger],
                         check=True, capture_output=True, text=True).stdout.strip()
    port_file = os.path.join(work, "tollgate.port")
    if os.path.exists(port_file):
        os.unlink(port_file)
    with open(os.path.join(work, "tollgate.log"), "a") as logf:
        gw = subprocess.Popen(list(prefix) + [binary, "serve", "--config", cfg, "--listen",
                                              "127.0.0.1:0", "--port-file", port_file,
                                              "--ledger", ledger], cwd=work,
                              stdout=logf, stderr=logf)
    try:
        return gw, wait_port_file(port_file, gw, timeout=60), key
    except BaseException:
        stop(gw)
        raise


def run_build(binary, work, mock_port, seconds, direct, direct_raw):
    """One build's cells in this round. Returns {figure: value}."""
    gw, port, key = start_gateway(binary, work, mock_port)
    try:
        wrk(port, 64, 1, key)   # warm-up: connection pools, page cache
        r = {}
        w = wrk(port, 1, seconds, key)
        r["plain1 p50"] = w["lat_p50"] - direct["lat_p50"]
        r["plain1 p99"] = w["lat_p99"] - direct["lat_p99"]
        # as measured: a stall in the round's direct run (the VM's, tens of ms at times)
        # makes that round's added p99 meaningless, even negative; this one is not differenced
        r["plain1 p99 through gateway"] = w["lat_p99"]
        raw = client1(port, seconds, key, plain=True)
        r["raw1 p50"] = int(raw["lat_p50"]) - int(direct_raw["lat_p50"])
        r["raw1 p99"] = int(raw["lat_p99"]) - int(direct_raw["lat_p99"])
        r["raw1 p99 through gateway"] = int(raw["lat_p99"])
        t0 = cpu_ticks(gw.pid)
        w = wrk(port, 64, seconds, key)
        ticks = cpu_ticks(gw.pid) - t0
        r["plain64 req/s"] = w["requests"] / (w["duration_us"] / 1e6)
        r["plain64 CPU us/req"] = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(1, w["requests"])
        s = client1(port, seconds, key)
        r["stream1 TTFC p50"] = int(s["ttfc_p50"])
        r["stream1 TTFC p99"] = int(s["ttfc_p99"])
        wrk(port, 256, seconds, key)
        time.sleep(2)
        reset_hwm(gw.pid)
        wrk(port, 64, seconds, key)
        r["burst RSS MB, 64 conn after 256"] = mem_kb(gw.pid)[1] / 1024
        time.sleep(2)
        r["burst RSS MB, 2 s idle after"] = mem_kb(gw.pid)[0] / 1024
        return r
    finally:
        stop(gw)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("refs", nargs="+", metavar="REF")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    for tool in ("fast_mock", "stream_client"):
        if not os.access(os.path.join(BUILD, tool), os.X_OK):
            sys.exit(f"ab: bench/build/{tool} is missing: run bench/run.sh --quick once first")
    if len(args.refs) < 2:
        sys.exit("ab: give at least two refs")
    builds = [build(ref) for ref in args.refs]
    work = tempfile.mkdtemp(prefix="tg-ab-")
    mock = None
    results = {sha: [] for sha, _ in builds}
    try:
        mock, mport = start_mock(work)
        for rnd in range(args.rounds):
            direct = wrk(mport, 1, args.seconds)
            direct_raw = client1(mport, args.seconds, None, plain=True)
            # each build takes each place in the order in turn (with two: A B, B A, ...)
            first = rnd % len(builds)
            order = builds[first:] + builds[:first]
            for sha, binary in order:
                r = run_build(binary, work, mport, args.seconds, direct, direct_raw)
                results[sha].append(r)
                log(f"round {rnd + 1} {sha}: " +
                    ", ".join(f"{k} {v:,.1f}" for k, v in r.items()))
    finally:
        if mock:
            stop(mock)
        shutil.rmtree(work, ignore_errors=True)
    figures = list(results[builds[0][0]][0].keys())
    print(f"| figure (median of {args.rounds} rounds) | " +
          " | ".join(f"{ref} ({sha})" for ref, (sha, _) in zip(args.refs, builds)) + " |")
    print("|---" * (len(builds) + 1) + "|")
    for fig in figures:
        cells = [statistics.median(r[fig] for r in results[sha]) for sha, _ in builds]
        unit = "" if "req/s" in fig or "MB" in fig else " µs"
        added = fig in ("plain1 p50", "plain1 p99", "raw1 p50", "raw1 p99")
        fmt = "{:,.1f}" if "MB" in fig else "{:,.0f}"
        print(f"| {fig}{' (added)' if added else ''} | " +
              " | ".join(fmt.format(c) + unit for c in cells) + " |")


if __name__ == "__main__":
    main()
