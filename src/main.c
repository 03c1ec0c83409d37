/* main.c: the tollgate command: dispatches to the serve and bill subcommands. */
#include <stdio.h>
#include <string.h>

#include "tollgate/cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "tollgate %s: an OpenAI-compatible inference gateway with one consolidated bill\n\n"
            "usage: tollgate <command> [options]\n\n"
            "commands:\n"
            "  serve    run the gateway (tollgate serve --help)\n"
            "  bill     print the bill from a ledger file (tollgate bill --help)\n"
            "  keys     create, list, revoke and rotate API keys (tollgate keys --help)\n"
            "  ledger   verify the ledger's hash chain, export rows (tollgate ledger --help)\n"

            "  version  print the version\n",
            TOLLGATE_VERSION);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return tg_cli_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "bill") == 0)
        return tg_cli_bill(argc - 1, argv + 1);
    if (strcmp(cmd, "keys") == 0)
        return tg_cli_keys(argc - 1, argv + 1);
    if (strcmp(cmd, "ledger") == 0)
        return tg_cli_ledger(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("tollgate %s\n", TOLLGATE_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "tollgate: unknown command \"%s\"\n\n", cmd);
    usage(stderr);
    return 2;
}
