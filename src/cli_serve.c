/* cli_serve.c: `tollgate serve`: load config and catalog, open the ledger, start the
 * upstream engine and the HTTP front end, then wait for SIGINT/SIGTERM and shut down in
 * the order that loses nothing: stop accepting, finish or abort upstream work, settle,
 * flush the ledger. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "engine.h"
#include "gateway.h"
#include "json_util.h"
#include "memtrim.h"
#include "server.h"
#include "worker.h"
#include "workpool.h"
#include "tollgate/cli.h"
#include "tollgate/keystore.h"
#include "tollgate/log.h"
#include "tollgate/provider.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tollgate serve [--config FILE] [--listen HOST:PORT] [--ledger PATH]\n"
            "                      [--port-file FILE] [--log-level debug|info|warn|error]\n"
            "  --config FILE      gateway config (default config/tollgate.json)\n"
            "  --listen HOST:PORT override the config's listen address (port 0: any free port)\n"
            "  --ledger PATH      override the SQLite ledger path\n"
            "  --port-file FILE   write the bound port to FILE once listening\n");
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int write_port_file(const char *path, unsigned port)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return TG_ERR_IO;
    fprintf(f, "%u\n", port);
    if (fclose(f) != 0 || rename(tmp, path) != 0)
        return TG_ERR_IO;
    return TG_OK;
}

static void log_providers(const struct tg_config *cfg)
{
    for (size_t i = 0; i < cfg->n_providers; i++) {
        const struct tg_provider_conf *pc = &cfg->providers[i];
        if (pc->usable)
            tg_info("provider %s: %s (adapter %s)", pc->name, pc->base_url, pc->impl->name);
        else
            tg_warn("provider %s: no API key%s%s%s; requests to it get 503 until one is set",
                    pc->name, pc->key_env[0] ? " (" : "", pc->key_env[0] ? pc->key_env : "",
                    pc->key_env[0] ? " is not set)" : "");
    }
}

int tg_cli_serve(int argc, char **argv)
{
    const char *config_path = "config/tollgate.json", *listen = NULL, *ledger = NULL;
    const char *port_file = NULL, *log_level = NULL;
    char err[512];
    int rc = 1;
    struct tg_gateway *gw = NULL;
    sigset_t sigs;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = strcmp(a, "--config") == 0      ? &config_path
                           : strcmp(a, "--listen") == 0    ? &listen
                           : strcmp(a, "--ledger") == 0    ? &ledger
                           : strcmp(a, "--port-file") == 0 ? &port_file
                           : strcmp(a, "--log-level") == 0 ? &log_level
                                                           : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (!dst || i + 1 >= argc) {
            fprintf(stderr, "tollgate serve: %s %s\n", dst ? "missing value for" : "unknown option", a);
            usage(stderr);
            return 2;
        }
        *dst = argv[++i];
    }

    tg_mem_tune();   /* before any allocation of note, and before any thread */
    gw = calloc(1, sizeof *gw);
    if (!gw)
        return 1;
    pthread_mutex_init(&gw->cat_mu, NULL);
    if (tg_config_load(&gw->cfg, config_path, err, sizeof err) != TG_OK) {
        fprintf(stderr, "tollgate: %s\n", err);
        goto out;
    }
    if (listen && tg_config_set_listen(&gw->cfg, listen, err, sizeof err) != TG_OK) {
        fprintf(stderr, "tollgate: --listen: %s\n", err);
        goto out;
    }
    if (ledger) {
        free(gw->cfg.ledger_path);
        gw->cfg.ledger_path = strdup(ledger);
    }
    enum tg_log_level lvl;
    if (tg_log_level_parse(log_level ? log_level : gw->cfg.log_level, &lvl) != TG_OK) {
        fprintf(stderr, "tollgate: --log-level must be debug, info, warn or error\n");
        goto out;
    }
    tg_log_set_level(lvl);
    if (tg_gateway_load_catalog(gw, err, sizeof err) != TG_OK) {
        fprintf(stderr, "tollgate: %s\n", err);
        goto out;
    }
    gw->health = tg_health_new(&gw->cfg.breaker);
    if (!gw->health) {
        fprintf(stderr, "tollgate: out of memory\n");
        goto out;
    }

    /* every thread started below inherits this mask; only sigwait sees the signals */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "tollgate: libcurl failed to initialize\n");
        goto out;
    }

    struct tg_ledger_options lopts = {.synchronous_full = gw->cfg.ledger_sync_full};
    gw->ledger = tg_ledger_open(gw->cfg.ledger_path, &lopts, err, sizeof err);
    if (!gw->ledger) {
        fprintf(stderr, "tollgate: ledger %s: %s\n", gw->cfg.ledger_path, err);
        goto out_curl;
    }
    if (gw->cfg.auth_enabled) {
        gw->keys = tg_keystore_open(gw->cfg.ledger_path, err, sizeof err);
        if (!gw->keys) {
            fprintf(stderr, "tollgate: %s\n", err);
            goto out_ledger;
        }
    } else {
        tg_warn("auth is OFF (config auth.enabled = false): anyone who can reach this address "
                "can spend through it; use only for local development");
    }
    gw->pool = tg_workpool_new(2, 1024);
    if (!gw->pool) {
        fprintf(stderr, "tollgate: cannot start the work pool\n");
        goto out_stop;
    }
    if (tg_workers_start(gw, err, sizeof err) != TG_OK) {
        fprintf(stderr, "tollgate: %s\n", err);
        goto out_stop;
    }
    if (tg_server_start(gw, err, sizeof err) != TG_OK) {
        fprintf(stderr, "tollgate: %s\n", err);
        goto out_stop;
    }
    log_providers(&gw->cfg);
    tg_info("tollgate listening on http://%s:%u (catalog %s: %zu models, price book %s; "
            "ledger %s)", gw->cfg.listen_host, gw->port, gw->cfg.catalog_path,
            gw->cat->cat.n_models, gw->cat->cat.version, gw->cfg.ledger_path);
    if (port_file && write_port_file(port_file, gw->port) != TG_OK)
        tg_warn("cannot write the port file %s", port_file);

    int sig = 0;
    const struct timespec tick = {.tv_sec = 1};
    for (;;) {
        sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig < 0) {
            if (errno != EAGAIN)
                continue;
            /* once a second: pick up key changes (revocations), off the request path */
            tg_keystore_refresh(gw->keys);
            /* and hand back heap pages a past burst freed (2 MiB or more) */
            if (tg_mem_trim_idle((size_t)2 << 20))
                tg_debug("returned free heap memory to the kernel");
            continue;
        }
        if (sig != SIGHUP)
            break;
        /* SIGHUP: reload the price book; requests in flight keep the one they started with */
        if (tg_gateway_load_catalog(gw, err, sizeof err) == TG_OK)
            tg_info("catalog reloaded from %s: price book %s", gw->cfg.catalog_path,
                    gw->cat->cat.version);
        else
            tg_error("catalog reload failed, keeping the current one: %s", err);
    }
    tg_info("signal %d: shutting down", sig);
    rc = 0;

    tg_server_quiesce(gw);
    atomic_store(&gw->stopping, true);
    /* let in-flight requests finish on their own for a moment */
    for (int i = 0; i < 100 && atomic_load(&gw->inflight) > 0; i++)
        usleep(50 * 1000);
out_stop:
    atomic_store(&gw->stopping, true);
    tg_workpool_free(gw->pool);   /* finishes queued image fetches first */
    gw->pool = NULL;
    tg_server_abort(gw);          /* aborts what still runs (slots given back); rows settle */
    tg_workers_stop(gw);          /* then the workers: nothing holds their slots any more */
    for (int i = 0; i < 100 && atomic_load(&gw->inflight) > 0; i++)
        usleep(20 * 1000);
    tg_server_stop(gw);
out_ledger:
    tg_keystore_free(gw->keys);
    tg_ledger_close(gw->ledger);
out_curl:
    curl_global_cleanup();
out:
    tg_catalog_snap_release(gw->cat);
    tg_health_free(gw->health);
    tg_config_cleanup(&gw->cfg);
    pthread_mutex_destroy(&gw->cat_mu);
    free(gw);
    return rc;
}
