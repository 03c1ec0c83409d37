/* cli_util.h: option parsing and notices shared by the tollgate subcommands. Private to
 * libtollgate. */
#ifndef TOLLGATE_CLI_UTIL_H
#define TOLLGATE_CLI_UTIL_H

#include <stdbool.h>

/* "--name VALUE" or "--name=VALUE". Returns the value (borrowed from argv), advancing *i
 * past a separate value; NULL if argv[*i] is not this option. *missing is set when it is
 * but has no value. */
const char *tg_cli_option_value(int argc, char **argv, int *i, const char *name, bool *missing);

/* On stderr: a crash left ledger operations in the journal of the ledger at path that the
 * SQLite file does not hold yet (for commands that read the file). */
void tg_cli_warn_unreplayed(const char *path);

#endif
