/* cli_util.h: option parsing shared by the tollgate subcommands. Private to libtollgate. */
#ifndef TOLLGATE_CLI_UTIL_H
#define TOLLGATE_CLI_UTIL_H

#include <stdbool.h>

/* "--name VALUE" or "--name=VALUE". Returns the value (borrowed from argv), advancing *i
 * past a separate value; NULL if argv[*i] is not this option. *missing is set when it is
 * but has no value. */
const char *tg_cli_option_value(int argc, char **argv, int *i, const char *name, bool *missing);

#endif
