/*
 * fuzz_config — libFuzzer target for tpo_config_parse, the reader of the
 * one configuration file.
 *
 * Contract checked: 0, or -EINVAL with at least one message, each naming
 * the file and the place ("f: ... at ..."); a configuration that parses
 * dumps to JSON (what the supervisor hands the stages through the rings
 * segment) that parses back to the same configuration.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "supervisor/config.h"

#define check(c) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); __builtin_trap(); } } while (0)

static struct tpo_config cfg, again;
static struct tpo_config_errors errs;
static char dump[TPO_CONFIG_DUMP_MAX];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int r = tpo_config_parse(&cfg, (const char *)data, size, "f", &errs), n;

	check(r == 0 || (r == -EINVAL && errs.n >= 1));
	for (int i = 0; i < errs.n; i++)
		check(strncmp(errs.msg[i], "f: ", 3) == 0 && strstr(errs.msg[i], " at "));
	if (r < 0)
		return 0;
	n = tpo_config_dump(&cfg, dump, sizeof(dump));
	check(n > 0 && (size_t)n == strlen(dump));
	check(tpo_config_parse(&again, dump, (size_t)n, "dump", &errs) == 0);
	check(memcmp(&cfg, &again, sizeof(cfg)) == 0);
	tpo_config_free(&cfg);
	tpo_config_free(&again);
	return 0;
}
