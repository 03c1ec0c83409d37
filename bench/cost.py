#!/usr/bin/env python3
"""cost.py: what one request costs tollgate, counted rather than timed. This VM's timings drift
by tens of percent between runs, and a change worth 5% is lost in that; counts are not:
  syscalls  system calls per request by kind, context switches and page faults: `perf
            stat` on the syscall tracepoints and software counters of the gateway process
            for the whole of a wrk run, divided by the requests wrk completed (64
            connections, then 1)
  CPU       the gateway's CPU time per request in the same runs (/proc: timed, so noisy)
  instr     user-space instructions per request, every thread: the gateway under valgrind
            (callgrind), its counters zeroed after a warm-up and dumped after N sequential
            requests (callgrind_control), and the functions that take the most (inclusive)
With --streams, the same for relayed stream chunks, in a second table:
  stream instr  user-space instructions per relayed chunk: S streams of C chunks 10 ms apart
            under callgrind (zeroed after a warm-up stream, dumped when all have ended),
            divided by S x C (each stream's start and end included, spread over its chunks)
  open      system calls per chunk and CPU with N open streams at one chunk a second (perf
            stat over 8 s once every stream is open; --open N)
For one or more git refs (each built once into bench/build/ab-<sha>/, as ab.py does) or a
binary (--binary PATH). Everything listens on 127.0.0.1; every process it starts is stopped by
PID.

  bench/cost.py REF [REF ...] [--rounds 3] [--seconds 5] [--requests 2000] [--no-instr] [--top 12]
                [--streams 20 --chunks 200 --open 2000] [--out bench/results/cost.md]

Needs perf (linux-perf) for the system calls and valgrind for the instructions; a part whose
tool is missing is skipped with a note. The mock comes from bench/build (bench/run.sh)."""

import argparse
import glob
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
from ab import BUILD, build, cpu_ticks, start_gateway, start_mock, wrk  # noqa: E402
from harness import stop  # noqa: E402

SYSCALLS = ["futex", "pwrite64", "epoll_ctl", "epoll_wait", "poll", "recvfrom", "sendto",
            "sendmsg", "pread64", "fcntl", "write", "read"]
# software counters beside the system calls: a page fault costs about as much as a system call
COUNTERS = ["context-switches", "page-faults"]
BODY = json.dumps({"model": "bench/echo-1", "messages": [{"role": "user", "content": "Say hello"}],
                   "max_tokens": 16})


def log(msg):
    print(f"[cost {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def syscalls(binary, work, mock_port, conns, seconds):
    """{figure: per-request value} for one wrk run at conns connections."""
    gw, port, key = start_gateway(binary, work, mock_port)
    out = os.path.join(work, "perfstat.csv")
    try:
        wrk(port, 64, 1, key)   # warm-up: connection pools, page cache, the journal's files
        events = ",".join([f"syscalls:sys_enter_{s}" for s in SYSCALLS] + COUNTERS)
        perf = subprocess.Popen(["perf", "stat", "-x,", "-e", events, "-p", str(gw.pid),
                                 "-o", out], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(0.3)   # attached before the first request
        t0 = cpu_ticks(gw.pid)
        w = wrk(port, conns, seconds, key)
        ticks = cpu_ticks(gw.pid) - t0
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=30)
    finally:
        stop(gw)
    n = max(1, w["requests"])
    r = {"req/s": w["requests"] / (w["duration_us"] / 1e6),
         "CPU µs/req": ticks / os.sysconf("SC_CLK_TCK") * 1e6 / n}
    r.update(perf_counts(out, n, SYSCALLS))
    return r


def perf_counts(path, units, listed):
    """perf stat's CSV output at path: {event: count per unit}, the syscall tracepoints by
    their call's name, and "syscalls (listed)", the sum over listed."""
    r = {}
    with open(path) as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) < 3 or not fields[0].replace(".", "").isdigit():
                continue
            r[fields[2].replace("syscalls:sys_enter_", "")] = float(fields[0]) / units
    r["syscalls (listed)"] = sum(r.get(s, 0.0) for s in listed)
    return r


def stream_cmd(port, key, streams, chunks, interval_ms, ramp_ms=200, drain_s=120):
    return [os.path.join(BUILD, "stream_client"), "--port", str(port), "--streams", str(streams),
            "--requests", str(streams), "--model", "bench/echo-1", "--chunks", str(chunks),
            "--interval-ms", str(interval_ms), "--ramp-ms", str(ramp_ms), "--drain-s",
            str(drain_s), "--header", f"Authorization: Bearer {key}"]


def run_streams(cmd, timeout):
    """Run stream_client; its SC figures as a dict. Raises unless every stream completed."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout
    m = re.search(r"^SC (.*)$", out, re.M)
    if not m:
        raise RuntimeError("stream_client printed no SC line:\n" + out[-1000:])
    sc = dict(kv.split("=", 1) for kv in m.group(1).split())
    if sc["complete"] != sc["started"] or sc["chunks"] != sc["chunks_expected"]:
        raise RuntimeError(f"streams incomplete: {m.group(1)}")
    return sc


def open_streams(binary, work, mock_port, n):
    """{figure: per-chunk value} with n streams open at one chunk a second: system calls
    (perf stat over 8 s once every stream is open) and the gateway's CPU in that window."""
    gw, port, key = start_gateway(binary, work, mock_port)
    out = os.path.join(work, "perfopen.csv")
    try:
        run_streams(stream_cmd(port, key, 4, 5, 10), 60)   # warm-up
        sc = subprocess.Popen(stream_cmd(port, key, n, 20, 1000, ramp_ms=3000), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(6)   # ramp (3 s) and every stream's first chunk
        events = ",".join([f"syscalls:sys_enter_{s}" for s in SYSCALLS + ["ioctl"]] + COUNTERS)
        t0 = cpu_ticks(gw.pid)
        subprocess.run(["perf", "stat", "-x,", "-e", events, "-p", str(gw.pid), "-o", out,
                        "--", "sleep", "8"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
        ticks = cpu_ticks(gw.pid) - t0
        sc.wait(timeout=120)
    finally:
        stop(gw)
    chunks = n * 8.0   # one a second per stream over the 8 s window
    r = {"CPU % of a core": ticks / os.sysconf("SC_CLK_TCK") / 8.0 * 100,
         "CPU µs/chunk": ticks / os.sysconf("SC_CLK_TCK") * 1e6 / chunks}
    r.update(perf_counts(out, chunks, SYSCALLS + ["ioctl"]))
    return r


def stream_instructions(binary, work, mock_port, streams, chunks, top):
    """(Ir per relayed chunk, [(Ir per chunk, function)]): streams streams of chunks chunks,
    10 ms apart, under callgrind, zeroed after a warm-up and dumped once every stream ended."""
    ir, _, funcs = under_callgrind(
        binary, work, mock_port, streams * chunks, top,
        lambda port, key: run_streams(stream_cmd(port, key, 4, 20, 10), 120),
        lambda port, key: run_streams(stream_cmd(port, key, streams, chunks, 10), 600))
    return ir, funcs


def chat_requests(port, key, n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(n):
        c.request("POST", "/v1/chat/completions", BODY,
                  {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
        resp = c.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status} under callgrind")
    c.close()


def instructions(binary, work, mock_port, requests, top):
    """(Ir per request, {thread: Ir per request}, [(Ir per request, function)]) for requests
    sequential requests. The threads: the event loops' path (engine_main), the ledger
    writer and the checkpointer, whose share depends on how requests fell into batches."""
    return under_callgrind(binary, work, mock_port, requests, top,
                           lambda port, key: chat_requests(port, key, 200),
                           lambda port, key: chat_requests(port, key, requests))


def under_callgrind(binary, work, mock_port, units, top, warm_up, measured):
    """The gateway under callgrind: warm_up(port, key), counters zeroed, measured(port, key),
    counters dumped; annotate's figures per unit."""
    prefix = os.path.join(work, "cg.out")
    for f in glob.glob(prefix + "*"):
        os.unlink(f)
    gw, port, key = start_gateway(binary, work, mock_port, prefix=[
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}.%p",
        "--dump-instr=no", "--collect-atstart=yes"])
    try:
        warm_up(port, key)
        subprocess.run(["callgrind_control", "-z", str(gw.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        measured(port, key)
        subprocess.run(["callgrind_control", "-d", str(gw.pid)], check=True,
                       stdout=subprocess.DEVNULL)
    finally:
        stop(gw)
    return annotate(prefix, units, top)


def annotate(prefix, units, top):
    """(Ir per unit, {thread: Ir per unit}, [(Ir per unit, function)]) from the callgrind
    dump at prefix.*."""
    dumps = sorted(f for f in glob.glob(prefix + ".*") if re.search(r"\.\d+\.\d+$", f))
    if not dumps:
        raise RuntimeError("callgrind wrote no dump")
    ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", dumps[0]],
                         capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"^([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", ann, re.M)
                .group(1).replace(",", ""))
    threads = {}
    for label, fn in (("event loops", "engine_main"), ("ledger writer", "writer_main"),
                      ("checkpointer", "checkpoint_main")):
        m = re.search(r"^\s*([\d,]+)\s+\([\d. ]+%\)\s+\S*:" + fn + r"\b", ann, re.M)
        threads[label] = int(m.group(1).replace(",", "")) / units if m else 0.0
    funcs = []
    for m in re.finditer(r"^\s*([\d,]+)\s+\([\d. ]+%\)\s+(\S+)", ann, re.M):
        name = m.group(2)
        if "PROGRAM" in name or "start_thread" in name or "clone" in name:
            continue
        name = name.split(":", 1)[-1]
        if name.startswith("0x"):
            continue   # a stripped library's internal function: no name to report
        funcs.append((int(m.group(1).replace(",", "")) / units, name))
        if len(funcs) >= top:
            break
    return total / units, threads, funcs


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("refs", nargs="*")
    ap.add_argument("--binary", action="append", default=[],
                    help="a tollgate binary to measure as it is (repeatable)")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3,
                    help="wrk runs per build and connection count (medians reported)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--no-instr", action="store_true")
    ap.add_argument("--streams", type=int, default=0,
                    help="also count instructions per relayed chunk: S streams under callgrind")
    ap.add_argument("--chunks", type=int, default=200, help="chunks per stream for --streams")
    ap.add_argument("--open", type=int, default=0,
                    help="also count system calls per chunk with N streams open (1 chunk/s)")
    ap.add_argument("--out", default=os.path.join(BENCH, "results", "cost.md"),
                    help="also write the report here ('' for none)")
    args = ap.parse_args()
    if not os.access(os.path.join(BUILD, "fast_mock"), os.X_OK):
        sys.exit("cost: bench/build/fast_mock is missing: run bench/run.sh --quick once first")
    binaries = [os.path.abspath(b) for b in args.binary]   # the gateway runs in a work dir
    builds = [build(r) for r in args.refs] + [(os.path.basename(os.path.dirname(b)) or b, b)
                                              for b in binaries]
    if not builds:
        sys.exit("cost: name at least one git ref or --binary")
    have_perf = shutil.which("perf") is not None
    have_vg = shutil.which("valgrind") and shutil.which("callgrind_control")
    if not have_perf:
        log("perf is missing (apt-get install linux-perf): no system call counts")
    if not have_vg and not args.no_instr:
        log("valgrind is missing: no instruction counts")
    work = tempfile.mkdtemp(prefix="tg-cost-")
    mock = None
    table = {}      # figure -> {sha: value}
    tops = {}
    chunk_table = {}   # figure -> {sha: value}, per relayed chunk
    chunk_tops = {}
    try:
        mock, mport = start_mock(work)
        samples = {}   # (figure, sha) -> [value per round]
        for rnd in range(args.rounds if have_perf else 0):
            # interleaved, the order alternating by round: the timed CPU drifts with the VM
            for sha, binary in (builds if rnd % 2 == 0 else builds[::-1]):
                for conns in (64, 1):
                    log(f"round {rnd + 1}, {sha}: system calls at {conns} connection(s)")
                    for k, v in syscalls(binary, work, mport, conns, args.seconds).items():
                        samples.setdefault((f"{conns} conn: {k}", sha), []).append(v)
        for (fig, sha), vals in samples.items():
            table.setdefault(fig, {})[sha] = statistics.median(vals)
        for sha, binary in builds:
            if have_vg and not args.no_instr:
                log(f"{sha}: instructions, {args.requests} requests under callgrind")
                ir, threads, funcs = instructions(binary, work, mport, args.requests, args.top)
                table.setdefault("instructions per request (user space)", {})[sha] = ir
                for label, v in threads.items():
                    table.setdefault(f"instructions: {label}", {})[sha] = v
                tops[sha] = funcs
            if have_vg and args.streams:
                log(f"{sha}: instructions, {args.streams} streams of {args.chunks} chunks under"
                    " callgrind")
                ir, funcs = stream_instructions(binary, work, mport, args.streams, args.chunks,
                                                args.top)
                chunk_table.setdefault("instructions per relayed chunk (user space)", {})[sha] = ir
                chunk_tops[sha] = funcs
        for rnd in range(args.rounds if have_perf and args.open else 0):
            for sha, binary in (builds if rnd % 2 == 0 else builds[::-1]):
                log(f"round {rnd + 1}, {sha}: {args.open} open streams")
                for k, v in open_streams(binary, work, mport, args.open).items():
                    samples.setdefault((f"{args.open} open streams: {k}", sha), []).append(v)
        for (fig, sha), vals in samples.items():
            if "open streams" in fig:
                chunk_table.setdefault(fig, {})[sha] = statistics.median(vals)
    finally:
        if mock:
            stop(mock)
        shutil.rmtree(work, ignore_errors=True)
    shas = [sha for sha, _ in builds]
    lines = ["| figure, per request | " + " | ".join(shas) + " |",
             "|---|" + "---|" * len(shas)]
    for fig, cells in table.items():
        fmt = "{:,.0f}" if ("req/s" in fig or "instructions" in fig) else "{:,.2f}"
        if "CPU" in fig:
            fmt = "{:,.1f}"
        lines.append(f"| {fig} | " + " | ".join(fmt.format(cells[s]) if s in cells else "-"
                                                 for s in shas) + " |")
    if chunk_table:
        lines += ["", "| figure, per relayed chunk | " + " | ".join(shas) + " |",
                  "|---|" + "---|" * len(shas)]
        for fig, cells in chunk_table.items():
            fmt = "{:,.0f}" if "instructions" in fig else "{:,.2f}" if "CPU" not in fig \
                else "{:,.1f}"
            lines.append(f"| {fig} | " + " | ".join(fmt.format(cells[s]) if s in cells else "-"
                                                     for s in shas) + " |")
    for sha in shas:
        if sha in tops:
            lines.append(f"\n{sha}: instructions per request, inclusive, named functions\n")
            lines += [f"    {ir:>10,.0f}  {name}" for ir, name in tops[sha]]
        if sha in chunk_tops:
            lines.append(f"\n{sha}: instructions per relayed chunk, inclusive, named functions\n")
            lines += [f"    {ir:>10,.0f}  {name}" for ir, name in chunk_tops[sha]]
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# bench/cost.py {' '.join(args.refs + args.binary)}\n\n"
                    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.uname().nodename}"
                    f" ({os.cpu_count()} CPUs); medians of {args.rounds} interleaved wrk runs of"
                    f" {args.seconds} s per build and connection count,"
                    f" {args.requests} requests under callgrind. Counts are per request"
                    f" completed; CPU is timed (noisy). See bench/README.md.\n\n" + report)
        log(f"wrote {args.out}")

if __name__ == "__main__":
    main()
