/*
 * tpo-supervisor — start, stop, inspect and check a tpo instance.
 *
 * Exit codes: 0 ok, 64 usage, 78 configuration, 111 system.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shm/seg.h"
#include "supervisor/config.h"
#include "supervisor/sup.h"

static const char usage_text[] =
"usage: tpo-supervisor COMMAND [OPTIONS]\n"
"\n"
"commands:\n"
"  start  [-c FILE] [--name NAME] [--listen HOST:PORT]\n"
"         run an instance in the foreground (logs to stderr); without -c,\n"
"         the embedded default pipeline with the built-in mock model\n"
"  stop   [--name NAME] [--timeout MS]\n"
"         drain and stop a running instance\n"
"  status [--name NAME]\n"
"         print every stage x lane: pid, state, restarts\n"
"  reset  [--name NAME]\n"
"         restart units that failed (exit 78) or whose circuit is open\n"
"  reload [--name NAME]\n"
"         re-read the configuration file (same as SIGHUP)\n"
"  check  -c FILE [--dump]\n"
"         validate a configuration, print every problem (or, with --dump,\n"
"         the effective configuration)\n"
"\n"
"exit codes: 0 ok, 64 usage, 78 configuration error, 111 system error\n";

static int usage(int rc)
{
	fputs(usage_text, rc ? stderr : stdout);
	return rc;
}

static int load(struct tpo_config *c, const char *path)
{
	struct tpo_config_errors errs;
	int err;

	if (path)
		err = tpo_config_load(c, path, &errs);
	else
		err = tpo_config_parse(c, tpo_default_config, strlen(tpo_default_config),
				       "<embedded default>", &errs);
	if (err < 0) {
		tpo_config_errors_print(&errs, stderr, "tpo-supervisor");
		fprintf(stderr, "tpo-supervisor: fatal: %s: configuration has errors\n",
			path ? path : "<embedded default>");
		return TPO_EX_CONFIG;
	}
	/* Valid JSON the code cannot honour yet is refused, never ignored. */
	if (c->stages.infer.processes > 1) {
		fprintf(stderr, "tpo-supervisor: config: %s: stages.infer.processes: more than one "
			"infer process per lane is not supported yet (use max_inflight)\n",
			path ? path : "<embedded default>");
		return TPO_EX_CONFIG;
	}
	return 0;
}

/* Applies --listen HOST:PORT by re-parsing a one-key override. */
static int override_listen(struct tpo_config *c, const char *listen)
{
	struct tpo_config tmp;
	struct tpo_config_errors errs;
	char json[512];

	snprintf(json, sizeof(json), "{\"listen\": \"%s\"}", listen);
	if (strchr(listen, '"') || strchr(listen, '\\') ||
	    tpo_config_parse(&tmp, json, strlen(json), "--listen", &errs) < 0) {
		fprintf(stderr, "tpo-supervisor: --listen %s: expected HOST:PORT\n", listen);
		return TPO_EX_USAGE;
	}
	memcpy(c->listen, tmp.listen, sizeof(c->listen));
	memcpy(c->listen_host, tmp.listen_host, sizeof(c->listen_host));
	c->listen_port = tmp.listen_port;
	c->listen_cli = 1;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "name", required_argument, NULL, 'n' },
		{ "listen", required_argument, NULL, 'l' },
		{ "timeout", required_argument, NULL, 't' },
		{ "dump", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static struct tpo_config cfg;
	const char *cmd, *path = NULL, *name = NULL, *listen = NULL;
	int c, dump = 0, timeout_ms = 0, rc;

	if (argc < 2)
		return usage(TPO_EX_USAGE);
	cmd = argv[1];
	if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help"))
		return usage(0);
	optind = 2;
	while ((c = getopt_long(argc, argv, "c:n:l:t:dh", opts, NULL)) != -1) {
		switch (c) {
		case 'c': path = optarg; break;
		case 'n': name = optarg; break;
		case 'l': listen = optarg; break;
		case 't': {
			char *e;
			long v = strtol(optarg, &e, 10);
			if (e == optarg || *e || v < 1 || v > 86400000) {
				fprintf(stderr, "tpo-supervisor: --timeout %s: expected milliseconds, "
					"1 to 86400000\n", optarg);
				return TPO_EX_USAGE;
			}
			timeout_ms = (int)v;
			break;
		}
		case 'd': dump = 1; break;
		case 'h': return usage(0);
		default: return usage(TPO_EX_USAGE);
		}
	}
	if (optind != argc) {
		fprintf(stderr, "tpo-supervisor: unexpected argument '%s'\n", argv[optind]);
		return usage(TPO_EX_USAGE);
	}
	if (name && tpo_seg_name_ok(name) < 0) {
		fprintf(stderr, "tpo-supervisor: --name %s: %s\n", name, tpo_seg_strerror(-EINVAL));
		return TPO_EX_USAGE;
	}

	if (!strcmp(cmd, "start")) {
		if ((rc = load(&cfg, path)))
			return rc;
		if (name)
			snprintf(cfg.name, sizeof(cfg.name), "%s", name);
		if (listen && (rc = override_listen(&cfg, listen)))
			return rc;
		return tpo_sup_run(&cfg, path);
	}
	if (!strcmp(cmd, "check")) {
		if (!path) {
			fprintf(stderr, "tpo-supervisor: check needs -c FILE\n");
			return usage(TPO_EX_USAGE);
		}
		if ((rc = load(&cfg, path)))
			return rc;
		if (dump) {
			static char buf[TPO_CONFIG_DUMP_MAX];
			if (tpo_config_dump(&cfg, buf, sizeof(buf)) < 0)
				return TPO_EX_SYSTEM;
			puts(buf);
		} else {
			printf("%s: ok\n", path);
		}
		return 0;
	}
	if (!strcmp(cmd, "stop") || !strcmp(cmd, "status") || !strcmp(cmd, "reset") ||
	    !strcmp(cmd, "reload")) {
		if (!name) {
			static char found[TPO_CONFIG_NAME_LEN];

			if ((rc = load(&cfg, path))) {
				if (!path || tpo_config_name_of(path, found, sizeof(found)) < 0)
					return rc;
				fprintf(stderr, "tpo-supervisor: %s: acting on instance '%s' (the "
					"file's name) all the same\n", path, found);
				name = found;
			} else {
				name = cfg.name;
			}
		}
		if (!strcmp(cmd, "stop"))
			return tpo_sup_stop(name, timeout_ms);
		if (!strcmp(cmd, "reset"))
			return tpo_sup_signal(name, SIGUSR1);
		if (!strcmp(cmd, "reload"))
			return tpo_sup_signal(name, SIGHUP);
		return tpo_sup_status(name);
	}
	fprintf(stderr, "tpo-supervisor: unknown command '%s'\n", cmd);
	return usage(TPO_EX_USAGE);
}
