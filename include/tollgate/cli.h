/* cli.h: tollgate's subcommands. main() dispatches "tollgate NAME ARGS..." to the matching
 * function with argv[0] == NAME (ignored) and the options after it. Each returns the
 * process exit code: 0 ok, 1 error, 2 usage. */
#ifndef TOLLGATE_CLI_H
#define TOLLGATE_CLI_H

/* tollgate serve --config FILE [--listen HOST:PORT] [--ledger PATH] [--port-file FILE]
 *                [--log-level L] */
int tg_cli_serve(int argc, char **argv);

/* tollgate bill [--ledger PATH] [--from DATE] [--to DATE] [--by key|provider|model|day ...]
 *               [--key ID] [--format table|csv|json] [--json] [--csv] [--help]
 * Reads the ledger file directly (default "tollgate.db"); never creates one. Writes the bill
 * to stdout, errors to stderr. */
int tg_cli_bill(int argc, char **argv);

/* tollgate ledger verify [--ledger PATH] [--json]
 * tollgate ledger export [--ledger PATH] [--format csv|jsonl] [--from D] [--to D] [--key ID]
 * Reads the ledger file directly (default "tollgate.db"); never creates or changes one.
 * verify exits 0 when the chain is intact, 1 when it names the first tampered row (or the
 * file cannot be read), 2 on usage errors. */
int tg_cli_ledger(int argc, char **argv);

/* tollgate ledger verify [--ledger PATH] [--json] */
int tg_cli_ledger(int argc, char **argv);

/* tollgate keys create|list|revoke|rotate ... [--ledger PATH] */
int tg_cli_keys(int argc, char **argv);

#endif
