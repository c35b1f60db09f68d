/*
 * default_config.c — the configuration tpo-supervisor runs when started
 * without -c: the built-in mock worker, one lane per core, the HTTP front on
 * 127.0.0.1:8080. Everything else takes the defaults of docs/config.md.
 */
#include "supervisor/config.h"

const char tpo_default_config[] =
	"{\n"
	"  \"name\": \"default\",\n"
	"  \"listen\": \"127.0.0.1:8080\",\n"
	"  \"lanes\": \"auto\",\n"
	"  \"models\": [\"tpo-mock\"],\n"
	"  \"stages\": {\n"
	"    \"infer\": {\n"
	"      \"worker\": \"mock\",\n"
	"      \"mock\": { \"tokens_per_second\": 50, \"max_tokens\": 64, \"seed\": 0 }\n"
	"    }\n"
	"  }\n"
	"}\n";
