"""Helpers shared by test_keys, test_budget and test_crash: tollgate keys made with the real
CLI (`tollgate keys ...`), ledger rows read on a read-only SQLite connection, USD strings,
and a gateway restart on the same ledger file. Standard library only; builds on harness."""

import contextlib
import os
import re
import sqlite3
import subprocess
import time

import harness as H

KEY_RE = re.compile(r"^tg-([0-9a-f]{12})-([0-9a-f]{40})$")


def run_keys(env, ledger, *args, timeout=30):
    """`tollgate keys <args> --ledger <ledger>` -> CompletedProcess (text)."""
    return subprocess.run([env.tg_bin, "keys"] + list(args) + ["--ledger", ledger],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, text=True)


def create_key(env, ledger, name, *extra):
    """A new key (its full token) made by `tollgate keys create`; extra CLI options as is."""
    p = run_keys(env, ledger, "create", "--name", name, *extra)
    if p.returncode != 0:
        raise AssertionError("tollgate keys create %s failed (%d): %s" %
                             (" ".join(extra), p.returncode, p.stderr))
    return p.stdout.strip()


def wait_known(port, token, timeout=2.0):
    """Wait until the daemon knows a key just made with the CLI (it re-reads the keys table
    within about a second). Probes with a body that fails validation after authentication,
    so nothing is routed, billed or written to the ledger. Returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        r = H.post_json(port, "/v1/chat/completions", {"model": H.MODEL}, headers=bearer(token))
        if r.status != 401:
            if r.status != 400:
                raise AssertionError("probe of a new key got %r, not 400" % (r,))
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError("the daemon still refuses key %s after %.1f s: %r" %
                                 (token[:16], timeout, r))
        time.sleep(0.02)


def key_id(token):
    m = KEY_RE.match(token)
    if not m:
        raise AssertionError("%r is not a tg-<12 hex>-<40 hex> key" % token)
    return m.group(1)


def bearer(token):
    return {"Authorization": "Bearer " + token}


def nano_to_usd(nano):
    """nano-USD -> a decimal USD string with 9 decimals, as --budget-usd takes it."""
    return "%d.%09d" % divmod(int(nano), H.NANO_PER_USD)


@contextlib.contextmanager
def open_ro(path):
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=5)
    db.row_factory = sqlite3.Row
    try:
        yield db
    finally:
        db.close()


def rows(ledger, where="", args=()):
    with open_ro(ledger) as db:
        return [dict(r) for r in db.execute(
            "SELECT * FROM requests " + where + " ORDER BY id", args)]


def rows_for(ledger, request_id):
    return rows(ledger, "WHERE request_id = ?", (request_id,))


def wait_rows(ledger, pred, timeout=5.0, where="", args=()):
    """Poll the ledger until pred(rows) is true; returns the last rows read."""
    deadline = time.monotonic() + timeout
    while True:
        rs = rows(ledger, where, args)
        if pred(rs) or time.monotonic() >= deadline:
            return rs
        time.sleep(0.05)


def settled_row(ledger, request_id, timeout=5.0):
    """The last attempt's row of request_id once it is no longer reserved (or None)."""
    rs = wait_rows(ledger, lambda rs: rs and rs[-1]["status"] != "reserved", timeout,
                   "WHERE request_id = ?", (request_id,))
    if rs and rs[-1]["status"] != "reserved":
        return max(rs, key=lambda r: r["attempt"])
    return None


def key_spent(ledger, kid):
    """What the key has spent: settled rows' cost plus interrupted rows' reservations (the
    same rule as the daemon's budget), total period."""
    total = 0
    for r in rows(ledger, "WHERE key_id = ?", (kid,)):
        if r["status"] in ("billed", "failed"):
            total += r["cost_nano"] or 0
        elif r["status"] == "interrupted":
            total += r["reserved_nano"] or 0
    return total


def restart_gateway(env, gw, tag="restart"):
    """Start the daemon again with the same argv (config, ledger file) and environment as
    gw's process, on a new port. The caller must have stopped or killed gw first."""
    old = gw.proc
    name = env._name("tollgate-" + tag)
    pf = os.path.join(env.dir, name + ".port")
    argv = list(old.argv)
    i = argv.index("--port-file")
    argv[i + 1] = pf
    p = H.Proc(name, argv, env.dir, pf, env=old.env)
    env.procs.append(p)
    p.start()
    ngw = H.Gateway(p, gw.config_path, gw.ledger_path, gw.config, gw.api_key)
    ngw.env_args = getattr(gw, "env_args", (None, ()))
    return ngw
