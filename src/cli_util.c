/* cli_util.c: option parsing and notices shared by the tollgate subcommands. */
#include "cli_util.h"

#include <stdio.h>
#include <string.h>

#include "tollgate/ledger.h"

const char *tg_cli_option_value(int argc, char **argv, int *i, const char *name, bool *missing)
{
    size_t n = strlen(name);
    const char *arg = argv[*i];
    if (strncmp(arg, name, n) != 0)
        return NULL;
    if (arg[n] == '=')
        return arg + n + 1;
    if (arg[n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = true;
        return NULL;
    }
    return argv[++*i];
}

void tg_cli_warn_unreplayed(const char *path)
{
    if (tg_ledger_journal_unreplayed(path))
        fprintf(stderr, "tollgate: warning: %s-tgj0/1 hold ledger operations that are not in %s"
                " yet (the daemon stopped without emptying its journal, e.g. killed); start"
                " `tollgate serve` on this ledger once to write them\n", path, path);
}
