/*
 * test_config.c — the pipeline configuration: defaults, the embedded default,
 * the example, dump round trips, and every class of error with its exact
 * message (path and line:column).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "shm/ringset.h"
#include "supervisor/config.h"

static struct tpo_config cfg, cfg2;
static struct tpo_config_errors errs;
static char dump[65536];

static int parse(const char *js)
{
	return tpo_config_parse(&cfg, js, strlen(js), "t.json", &errs);
}

static void expect_ok(const char *js)
{
	int r = parse(js);

	cr_assert_eq(r, 0, "parse failed (%d errors), first: %s", errs.n, errs.n ? errs.msg[0] : "");
	cr_assert_eq(errs.n, 0);
}

static void expect_one(const char *js, const char *msg)
{
	int r = parse(js);

	cr_assert_eq(r, -EINVAL, "parse of %s returned %d", js, r);
	cr_assert_eq(errs.n, 1, "%d errors for %s; first: %s", errs.n, js,
		     errs.n ? errs.msg[0] : "(none)");
	cr_assert_str_eq(errs.msg[0], msg);
}

static int has_error(const char *msg)
{
	for (int i = 0; i < errs.n; i++)
		if (!strcmp(errs.msg[i], msg))
			return 1;
	return 0;
}

static void roundtrip(const struct tpo_config *c)
{
	int n = tpo_config_dump(c, dump, sizeof(dump));

	cr_assert_gt(n, 0);
	cr_assert_eq((size_t)n, strlen(dump));
	cr_assert_eq(tpo_config_parse(&cfg2, dump, (size_t)n, "dump", &errs), 0,
		     "dump does not re-parse: %s\n%s", errs.n ? errs.msg[0] : "", dump);
	cr_assert(memcmp(c, &cfg2, sizeof(*c)) == 0, "dump round trip differs:\n%s", dump);
}

/* examples/pipeline.json from the repository root: the cwd, or a parent of the binary. */
static const char *example_path(void)
{
	static char path[4096];
	char exe[2048];
	ssize_t n;
	char *slash;

	if (access("examples/pipeline.json", R_OK) == 0)
		return "examples/pipeline.json";
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return "examples/pipeline.json";
	exe[n] = '\0';
	while ((slash = strrchr(exe, '/')) != NULL) {
		*slash = '\0';
		snprintf(path, sizeof(path), "%s/examples/pipeline.json", exe);
		if (access(path, R_OK) == 0)
			return path;
	}
	return "examples/pipeline.json";
}

/* ---- good configurations --------------------------------------------- */

Test(config, defaults)
{
	cr_assert_eq(tpo_config_defaults(&cfg), 0);
	cr_assert_str_eq(cfg.name, "default");
	cr_assert_str_eq(cfg.listen, "127.0.0.1:8080");
	cr_assert_str_eq(cfg.listen_host, "127.0.0.1");
	cr_assert_eq(cfg.listen_port, 8080);
	cr_assert_eq(cfg.lanes.mode, TPO_LANES_AUTO);
	cr_assert_eq(cfg.spin_ns, TPO_CONFIG_SPIN_AUTO);
	cr_assert_eq(cfg.sched, TPO_SCHED_BATCH);
	cr_assert_eq(cfg.drain_timeout_ms, 10000);
	cr_assert_eq(cfg.log_level, LOG_INFO);
	cr_assert_eq(cfg.nmodels, 1);
	cr_assert_str_eq(cfg.models[0], "tpo-mock");
	cr_assert_eq(cfg.rings.capacity, 1048576);
	cr_assert_eq(cfg.rings.max_record, 65536);
	cr_assert_eq(cfg.admission.policy, TPO_POLICY_REJECT_NEW);
	cr_assert_eq(cfg.admission.max_inflight_per_lane, 256);
	cr_assert_eq(cfg.admission.max_connections, 10000);
	cr_assert_eq(cfg.auth_api_keys_env[0], '\0');
	cr_assert_eq(cfg.restart.fsm.base_ms, 100);
	cr_assert_eq(cfg.restart.fsm.cap_ms, 30000);
	cr_assert_eq(cfg.restart.fsm.open_max_ms, 300000);
	cr_assert_eq(cfg.restart.quarantine_after, 2);
	cr_assert_str_eq(cfg.stages.assemble.template, "{context}{messages}");
	cr_assert_eq(cfg.stages.infer.worker, TPO_WORKER_MOCK);
	cr_assert_eq(cfg.stages.infer.processes, 1);
	cr_assert_eq(cfg.stages.infer.mock.tokens_per_second, 50);
	cr_assert_eq(cfg.stages.infer.timeouts.idle_ms, 30000);
	cr_assert_eq(cfg.stages.infer.nendpoints, 0);
	cr_assert_eq(cfg.stages.post.max_tokens, 4096);
	cr_assert_eq(cfg.stages.post.nstop, 0);
	cr_assert_eq(tpo_config_ring_capacity(&cfg, TPO_ST_INFER), 1048576);
}

Test(config, empty_object_is_defaults)
{
	struct tpo_config d;

	expect_ok("{}");
	tpo_config_defaults(&d);
	cr_assert(memcmp(&d, &cfg, sizeof(d)) == 0);
}

Test(config, embedded_default_parses)
{
	struct tpo_config d;

	cr_assert_eq(tpo_config_parse(&cfg, tpo_default_config, strlen(tpo_default_config),
				      "(default)", &errs), 0, "%s", errs.msg[0]);
	tpo_config_defaults(&d);
	cr_assert(memcmp(&d, &cfg, sizeof(d)) == 0, "embedded default differs from defaults");
	cr_assert_eq(cfg.stages.infer.worker, TPO_WORKER_MOCK);
	cr_assert_eq(cfg.lanes.mode, TPO_LANES_AUTO);
}

Test(config, example_parses)
{
	const char *p = example_path();
	int r = tpo_config_load(&cfg, p, &errs);

	cr_assert_eq(r, 0, "%s: %s", p, errs.n ? errs.msg[0] : "");
	cr_assert_str_eq(cfg.name, "demo");
	cr_assert_eq(cfg.nmodels, 2);
	cr_assert_eq(cfg.stages.infer.nendpoints, 2);
	cr_assert_str_eq(cfg.stages.infer.endpoints[1].api_key_env, "OPENAI_API_KEY");
	cr_assert_eq(cfg.stages.infer.endpoints[0].weight, 2);
	cr_assert_eq(cfg.stages.post.nstop, 1);
	cr_assert_str_eq(cfg.stages.post.stop[0], "\n\nUser:");
	roundtrip(&cfg);
}

Test(config, dump_roundtrip_defaults)
{
	tpo_config_defaults(&cfg);
	roundtrip(&cfg);
}

Test(config, dump_roundtrip_everything_set)
{
	struct tpo_config c;

	expect_ok("{\"name\":\"x-1_y\",\"listen\":\"[::1]:9000\",\"lanes\":[1,0,3],"
		  "\"spin_ns\":5000,\"sched\":\"normal\",\"log_level\":\"debug\",\"models\":[\"a\\\"b\",\"c\\\\d\"],"
		  "\"auth\":{\"api_keys_env\":\"TPO_KEYS\"},"
		  "\"admission\":{\"policy\":\"drop_oldest\"},"
		  "\"stages\":{\"rag\":{\"context_file\":\"/tmp/ctx\\ttab\"},"
		  "\"infer\":{\"worker\":\"plugin\",\"plugin\":{\"path\":\"p.so\",\"options\":\"k=v\"},"
		  "\"mock\":{\"seed\":-9223372036854775808},\"balance\":\"session_hash\","
		  "\"endpoints\":[{\"url\":\"http://h:1\"}]},"
		  "\"post\":{\"stop\":[\"\\u0001\"],\"redact\":[\"secret\"],\"ring_capacity\":262144}}}");
	cr_assert_str_eq(cfg.listen_host, "::1");
	cr_assert_eq(cfg.listen_port, 9000);
	cr_assert_eq(cfg.sched, TPO_SCHED_NORMAL);
	cr_assert_eq(cfg.lanes.mode, TPO_LANES_LIST);
	cr_assert_eq(cfg.lanes.ncpus, 3);
	cr_assert_eq(cfg.lanes.cpus[2], 3);
	cr_assert_eq(cfg.stages.infer.mock.seed, INT64_MIN);
	cr_assert_eq(cfg.stages.infer.endpoints[0].weight, 1);
	cr_assert_eq(tpo_config_ring_capacity(&cfg, TPO_ST_POST), 262144);
	cr_assert_eq(tpo_config_ring_capacity(&cfg, TPO_ST_RAG), 1048576);
	c = cfg;
	roundtrip(&c);
}

Test(config, dump_too_small)
{
	char small[64];

	tpo_config_defaults(&cfg);
	cr_assert_eq(tpo_config_dump(&cfg, small, sizeof(small)), -ENOSPC);
}

Test(config, lanes_forms)
{
	expect_ok("{\"lanes\":\"auto\"}");
	cr_assert_eq(cfg.lanes.mode, TPO_LANES_AUTO);
	expect_ok("{\"lanes\":4}");
	cr_assert_eq(cfg.lanes.mode, TPO_LANES_COUNT);
	cr_assert_eq(cfg.lanes.count, 4);
	expect_ok("{\"lanes\":[0,1023]}");
	cr_assert_eq(cfg.lanes.mode, TPO_LANES_LIST);
	cr_assert_eq(cfg.lanes.ncpus, 2);
	cr_assert_eq(cfg.lanes.cpus[1], 1023);
}

Test(config, listen_forms)
{
	expect_ok("{\"listen\":\"localhost:1\"}");
	cr_assert_str_eq(cfg.listen_host, "localhost");
	cr_assert_eq(cfg.listen_port, 1);
	expect_ok("{\"listen\":\"0.0.0.0:65535\"}");
	cr_assert_eq(cfg.listen_port, 65535);
	expect_ok("{\"listen\":\"[::]:80\"}");
	cr_assert_str_eq(cfg.listen_host, "::");
}

Test(config, escapes_in_strings)
{
	expect_ok("{\"models\":[\"caf\\u00e9\",\"\\ud83d\\ude00\",\"a\\/b\"],"
		  "\"stages\":{\"assemble\":{\"template\":\"{context}\\n\\\"{messages}\\\"\\\\\"}}}");
	cr_assert_str_eq(cfg.models[0], "caf\xc3\xa9");
	cr_assert_str_eq(cfg.models[1], "\xf0\x9f\x98\x80");
	cr_assert_str_eq(cfg.models[2], "a/b");
	cr_assert_str_eq(cfg.stages.assemble.template, "{context}\n\"{messages}\"\\");
	/* Keys may be escaped too. */
	expect_ok("{\"na\\u006de\":\"esc\"}");
	cr_assert_str_eq(cfg.name, "esc");
}

Test(config, nulls_clear_strings)
{
	expect_ok("{\"auth\":{\"api_keys_env\":null},\"stages\":{\"rag\":{\"context_file\":null}}}");
	cr_assert_eq(cfg.auth_api_keys_env[0], '\0');
	cr_assert_eq(cfg.stages.rag.context_file[0], '\0');
}

/* ---- syntax and shape ------------------------------------------------ */

Test(config, syntax_error_position)
{
	expect_one("{\n  \"name\": \"x\",\n  \"lanes\": 2\n  \"spin_ns\": 5\n}",
		   "t.json: invalid JSON: unexpected '\"', expected ',' or '}' at 4:3");
	expect_one("{\"name\": \"x\",}",
		   "t.json: invalid JSON: trailing comma before '}' at 1:14");
	expect_one("{\n\"log_level\": info\n}",
		   "t.json: invalid JSON: invalid value 'info' (strings need double quotes) at 2:14");
	expect_one("{\"name\": \"abc",
		   "t.json: invalid JSON: unterminated string at 1:10");
	expect_one("{\"lanes\": [1, 2}",
		   "t.json: invalid JSON: unexpected '}', expected ',' or ']' at 1:16");
	expect_one("{\"name\": \"x\"",
		   "t.json: invalid JSON: unexpected end of input, expected ',' or '}' at 1:13");
	expect_one("{} {}",
		   "t.json: invalid JSON: unexpected data after the JSON value at 1:4");
	expect_one("{\"a\": 01}", "t.json: invalid JSON: invalid number at 1:7");
	expect_one("{\"a\": \"\\x\"}", "t.json: invalid JSON: invalid escape in string at 1:8");
	expect_one("{\"a\": \"\xff\"}", "t.json: invalid JSON: invalid UTF-8 in string at 1:8");
	/* Columns count characters, not bytes. */
	expect_one("{\"models\": [\"\xc3\xa9\xc3\xa9\" 1]}",
		   "t.json: invalid JSON: unexpected '1', expected ',' or ']' at 1:18");
}

Test(config, nul_byte_is_a_syntax_error)
{
	static const char js[] = "{\"name\": \"x\"}\0junk";
	int r = tpo_config_parse(&cfg, js, sizeof(js) - 1, "t.json", &errs);

	cr_assert_eq(r, -EINVAL);
	cr_assert_eq(errs.n, 1);
	cr_assert_str_eq(errs.msg[0], "t.json: invalid JSON: unexpected data after the JSON value at 1:14");
}

Test(config, not_an_object)
{
	expect_one("[1, 2]", "t.json: expected a JSON object, found an array at 1:1");
	expect_one("\n  \"x\"", "t.json: expected a JSON object, found a string at 2:3");
	expect_one("42", "t.json: expected a JSON object, found a number at 1:1");
	expect_one("null", "t.json: expected a JSON object, found null at 1:1");
}

Test(config, empty_file)
{
	expect_one("", "t.json: empty file, expected a JSON object at 1:1");
	expect_one("  \n\n", "t.json: empty file, expected a JSON object at 3:1");
}

/* ---- key errors ------------------------------------------------------ */

Test(config, unknown_key_top)
{
	expect_one("{\n  \"nmae\": \"x\"\n}", "t.json: nmae: unknown key at 2:3");
}

Test(config, unknown_key_nested)
{
	expect_one("{\n  \"stages\": {\n    \"infer\": {\n      \"timeouts\": {\"idel_ms\": 5}\n    }\n  }\n}",
		   "t.json: stages.infer.timeouts.idel_ms: unknown key at 4:20");
	expect_one("{\"stages\": {\"infer\": {\"endpoints\": [{\"url\": \"http://a\", \"wieght\": 2}]}}}",
		   "t.json: stages.infer.endpoints[0].wieght: unknown key at 1:57");
}

Test(config, duplicate_key)
{
	expect_one("{\"name\": \"a\",\n \"name\": \"b\"}",
		   "t.json: name: duplicate key (first at 1:2) at 2:2");
	expect_one("{\"rings\": {\"capacity\": 262144, \"capacity\": 524288}}",
		   "t.json: rings.capacity: duplicate key (first at 1:12) at 1:32");
	/* The first value stands. */
	cr_assert_eq(cfg.rings.capacity, 262144);
	/* Same key after escaping. */
	expect_one("{\"name\": \"a\", \"n\\u0061me\": \"b\"}",
		   "t.json: n\\u0061me: duplicate key (first at 1:2) at 1:15");
}

Test(config, missing_required_endpoint_url)
{
	expect_one("{\"stages\": {\"infer\": {\"endpoints\": [{\"url\": \"http://a\"},\n"
		   "  {\"model\": \"m\"}]}}}",
		   "t.json: stages.infer.endpoints[1]: missing required key \"url\" at 2:3");
}

/* ---- value errors ---------------------------------------------------- */

Test(config, issue_example_message)
{
	static const char js[] =
		"{\n"                                   /* 1 */
		"  \"name\": \"demo\",\n"               /* 2 */
		"  \"lanes\": 2,\n"                     /* 3 */
		"  \"spin_ns\": \"auto\",\n"            /* 4 */
		"  \"drain_timeout_ms\": 10000,\n"      /* 5 */
		"  \"stages\": {\n"                     /* 6 */
		"    \"infer\": {\n"                    /* 7 */
		"      \"worker\": \"mock\",\n"         /* 8 */
		"      \"processes\": 1,\n"             /* 9 */
		"      \"max_inflight\": 64,\n"         /* 10 */
		"      \"timeouts\": {\n"               /* 11 */
		"           \"connect_ms\": 5000,\n"    /* 12 */
		"           \"first_token_ms\": 30000,\n" /* 13 */
		"           \"idle_ms\": \"30s\",\n"    /* 14: the value is at column 23 */
		"           \"total_ms\": 300000\n"
		"      }\n"
		"    }\n"
		"  }\n"
		"}\n";
	int r = tpo_config_parse(&cfg, js, strlen(js), "pipeline.json", &errs);

	cr_assert_eq(r, -EINVAL);
	cr_assert_eq(errs.n, 1);
	cr_assert_str_eq(errs.msg[0],
			 "pipeline.json: stages.infer.timeouts.idle_ms: expected a positive integer at 14:23");
	/* Zero and negatives get the same words. */
	expect_one("{\"stages\":{\"infer\":{\"timeouts\":{\"idle_ms\":0}}}}",
		   "t.json: stages.infer.timeouts.idle_ms: expected a positive integer at 1:43");
	expect_one("{\"stages\":{\"infer\":{\"timeouts\":{\"idle_ms\":-1}}}}",
		   "t.json: stages.infer.timeouts.idle_ms: expected a positive integer at 1:43");
}

Test(config, wrong_type)
{
	expect_one("{\"drain_timeout_ms\": \"10s\"}",
		   "t.json: drain_timeout_ms: expected a positive integer at 1:22");
	expect_one("{\"drain_timeout_ms\": 1.5}",
		   "t.json: drain_timeout_ms: expected a positive integer at 1:22");
	expect_one("{\"drain_timeout_ms\": 1e3}",
		   "t.json: drain_timeout_ms: expected a positive integer at 1:22");
	expect_one("{\"drain_timeout_ms\": true}",
		   "t.json: drain_timeout_ms: expected a positive integer at 1:22");
	expect_one("{\"name\": 5}", "t.json: name: expected a string at 1:10");
	expect_one("{\"rings\": []}", "t.json: rings: expected an object at 1:11");
	expect_one("{\"models\": \"m\"}", "t.json: models: expected an array of 1..8 strings at 1:12");
	expect_one("{\"models\": [\"a\", 3]}", "t.json: models[1]: expected a string at 1:18");
	expect_one("{\"stages\": {\"rag\": {\"context_file\": 1}}}",
		   "t.json: stages.rag.context_file: expected a string or null at 1:37");
	expect_one("{\"auth\": {\"api_keys_env\": \"1BAD\"}}",
		   "t.json: auth.api_keys_env: expected an environment variable name "
		   "([A-Za-z_][A-Za-z0-9_]*) or null at 1:27");
	expect_one("{\"stages\": {\"infer\": {\"mock\": {\"seed\": \"x\"}}}}",
		   "t.json: stages.infer.mock.seed: expected an integer at 1:40");
	cr_assert_eq(parse("{\"jitter\": 1, \"restart\": {\"jitter_pct\": \"5\"}}"), -EINVAL);
	cr_assert_eq(errs.n, 2);
	cr_assert_str_eq(errs.msg[0], "t.json: jitter: unknown key at 1:2");
	cr_assert_str_eq(errs.msg[1], "t.json: restart.jitter_pct: expected a non-negative integer at 1:41");
}

Test(config, out_of_range)
{
	expect_one("{\"drain_timeout_ms\": 600001}",
		   "t.json: drain_timeout_ms: expected an integer in 1..600000 at 1:22");
	expect_one("{\"restart\": {\"jitter_pct\": 101}}",
		   "t.json: restart.jitter_pct: expected an integer in 0..100 at 1:28");
	expect_one("{\"restart\": {\"jitter_pct\": -1}}",
		   "t.json: restart.jitter_pct: expected a non-negative integer at 1:28");
	expect_one("{\"admission\": {\"max_body_bytes\": 1023}}",
		   "t.json: admission.max_body_bytes: expected an integer in 1024..67108864 at 1:34");
	expect_one("{\"admission\": {\"max_body_bytes\": 99999999999999999999999}}",
		   "t.json: admission.max_body_bytes: expected an integer in 1024..67108864 at 1:34");
	expect_one("{\"stages\": {\"infer\": {\"processes\": 9}}}",
		   "t.json: stages.infer.processes: expected an integer in 1..8 at 1:36");
	expect_one("{\"rings\": {\"capacity\": 200000}}",
		   "t.json: rings.capacity: expected a power of two in 131072..1073741824 at 1:24");
	expect_one("{\"stages\": {\"post\": {\"ring_capacity\": 1000}}}",
		   "t.json: stages.post.ring_capacity: expected 0 (use rings.capacity) or a power "
		   "of two in 131072..1073741824 at 1:39");
	expect_one("{\"spin_ns\": 10000001}",
		   "t.json: spin_ns: expected \"auto\" or an integer in 0..10000000 at 1:13");
	expect_one("{\"name\": \"a.b\"}",
		   "t.json: name: expected 1..32 characters from [A-Za-z0-9_-] at 1:10");
	expect_one("{\"name\": \"\"}", "t.json: name: expected a non-empty string at 1:10");
	expect_one("{\"name\": \"abcdefghijabcdefghijabcdefghijabc\"}",
		   "t.json: name: expected a string of at most 32 bytes at 1:10");
	expect_one("{\"models\": []}", "t.json: models: expected an array of 1..8 strings at 1:12");
	expect_one("{\"models\": [\"a\", \"b\", \"a\"]}",
		   "t.json: models[2]: duplicate of item 0 at 1:23");
	expect_one("{\"stages\": {\"post\": {\"stop\": [\"\"]}}}",
		   "t.json: stages.post.stop[0]: expected a non-empty string at 1:31");
	expect_one("{\"stages\": {\"post\": {\"stop\": [\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"]}}}",
		   "t.json: stages.post.stop: expected an array of at most 8 strings at 1:30");
	expect_one("{\"stages\": {\"infer\": {\"endpoints\": [{\"url\": \"http://a\", \"weight\": 0}]}}}",
		   "t.json: stages.infer.endpoints[0].weight: expected a positive integer at 1:67");
}

Test(config, bad_strings)
{
	expect_one("{\"name\": \"a\\u0000b\"}",
		   "t.json: name: expected a string without NUL characters at 1:10");
	expect_one("{\"models\": [\"\\ud800\"]}",
		   "t.json: models[0]: invalid string escape (unpaired UTF-16 surrogate) at 1:13");
	expect_one("{\"stages\": {\"infer\": {\"endpoints\": [{\"url\": \"ftp://a\"}]}}}",
		   "t.json: stages.infer.endpoints[0].url: expected an http:// or https:// URL at 1:45");
	expect_one("{\"stages\": {\"assemble\": {\"template\": \"{context}\"}}}",
		   "t.json: stages.assemble.template: expected a template containing {messages} at 1:38");
	expect_one("{\"stages\": {\"assemble\": {\"template\": \"{messages}{contxt}\"}}}",
		   "t.json: stages.assemble.template: unknown placeholder {contxt} "
		   "(known: {context}, {messages}) at 1:38");
}

Test(config, bad_enum)
{
	expect_one("{\"admission\": {\"policy\": \"drop_newest\"}}",
		   "t.json: admission.policy: expected one of \"reject_new\", \"drop_oldest\" at 1:26");
	expect_one("{\"sched\": \"fifo\"}",
		   "t.json: sched: expected one of \"batch\", \"normal\" at 1:11");
	expect_one("{\"log_level\": \"warn\"}",
		   "t.json: log_level: expected one of \"debug\", \"info\", \"notice\", \"warning\", "
		   "\"error\" at 1:15");
	expect_one("{\"stages\": {\"infer\": {\"worker\": 1}}}",
		   "t.json: stages.infer.worker: expected one of \"mock\", \"openai\", \"llamacpp\", "
		   "\"tgi\", \"anthropic\", \"plugin\" at 1:33");
}

Test(config, bad_lanes)
{
	static const char *const bad[] = {
		"{\"lanes\": \"all\"}", "{\"lanes\": 0}", "{\"lanes\": 17}", "{\"lanes\": []}",
		"{\"lanes\": true}", "{\"lanes\": {}}", "{\"lanes\": 1.5}",
		"{\"lanes\": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_one(bad[i], "t.json: lanes: expected \"auto\", a lane count in 1..16 "
			   "or an array of 1..16 CPU numbers at 1:11");
	expect_one("{\"lanes\": [0, 0]}", "t.json: lanes[1]: duplicate CPU 0 at 1:15");
	expect_one("{\"lanes\": [0, 1024]}", "t.json: lanes[1]: expected an integer in 0..1023 at 1:15");
	expect_one("{\"lanes\": [\"1\"]}", "t.json: lanes[0]: expected a non-negative integer at 1:12");
	/* A bad list leaves the default in place. */
	cr_assert_eq(cfg.lanes.mode, TPO_LANES_AUTO);
}

Test(config, bad_listen)
{
	static const char *const bad[] = {
		"{\"listen\": \"127.0.0.1\"}", "{\"listen\": \"example.com:80\"}",
		"{\"listen\": \"1.2.3.4:0\"}", "{\"listen\": \":80\"}", "{\"listen\": \"1.2.3.4:65536\"}",
		"{\"listen\": \"::1:80\"}", "{\"listen\": \"[::1]:\"}", "{\"listen\": \"1.2.3.4:8x\"}",
		"{\"listen\": \"[zz]:80\"}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_one(bad[i], "t.json: listen: expected \"HOST:PORT\" with HOST an IPv4 address, "
			   "\"localhost\" or \"[IPv6 address]\" and PORT in 1..65535 at 1:12");
}

/* ---- cross-field ----------------------------------------------------- */

Test(config, cross_restart_order)
{
	expect_one("{\"restart\": {\"base_ms\": 500, \"cap_ms\": 400}}",
		   "t.json: restart.cap_ms: expected an integer >= restart.base_ms (500) at 1:40");
	expect_one("{\"restart\": {\"base_ms\": 40000}}",
		   "t.json: restart.base_ms: expected an integer <= restart.cap_ms (30000, its default) at 1:25");
	expect_one("{\"restart\": {\"open_ms\": 10, \"open_max_ms\": 9}}",
		   "t.json: restart.open_max_ms: expected an integer >= restart.open_ms (10) at 1:44");
	expect_one("{\"restart\": {\"probe_ok_ms\": 70000}}",
		   "t.json: restart.probe_ok_ms: expected an integer <= restart.stable_ms (60000, its default) at 1:29");
	expect_one("{\"stages\": {\"infer\": {\"retries\": {\"cap_ms\": 50}}}}",
		   "t.json: stages.infer.retries.cap_ms: expected an integer >= "
		   "stages.infer.retries.base_ms (100) at 1:45");
	/* An invalid base does not also make cap look wrong. */
	expect_one("{\"restart\": {\"base_ms\": 0, \"cap_ms\": 50}}",
		   "t.json: restart.base_ms: expected a positive integer at 1:25");
}

Test(config, cross_worker_needs_endpoint)
{
	expect_one("{\"stages\": {\"infer\": {\"worker\": \"openai\"}}}",
		   "t.json: stages.infer.worker: worker \"openai\" needs at least one entry in "
		   "stages.infer.endpoints at 1:33");
	expect_one("{\"stages\": {\"infer\": {\"worker\": \"tgi\", \"endpoints\": []}}}",
		   "t.json: stages.infer.endpoints: expected at least one endpoint for worker \"tgi\" at 1:53");
	expect_ok("{\"stages\": {\"infer\": {\"worker\": \"anthropic\", \"endpoints\": "
		  "[{\"url\": \"https://api.anthropic.com\", \"api_key_env\": \"ANTHROPIC_API_KEY\"}]}}}");
	cr_assert_eq(cfg.stages.infer.worker, TPO_WORKER_ANTHROPIC);
}

Test(config, cross_plugin_needs_path)
{
	expect_one("{\"stages\": {\"infer\": {\"worker\": \"plugin\"}}}",
		   "t.json: stages.infer.worker: worker \"plugin\" needs stages.infer.plugin.path at 1:33");
	expect_one("{\"stages\": {\"infer\": {\"worker\": \"plugin\", \"plugin\": {\"path\": null}}}}",
		   "t.json: stages.infer.plugin.path: expected the plugin's path (a string) for "
		   "worker \"plugin\" at 1:62");
}

/* stages.rag.enabled: "auto" (rag only with a context file), true, false. */
Test(config, rag_enabled)
{
	struct tpo_config c;

	expect_ok("{}");
	cr_assert_eq(cfg.stages.rag.enabled, TPO_RAG_AUTO);
	cr_assert_not(tpo_config_stage_runs(&cfg, TPO_ST_RAG));
	for (int s = 0; s < TPO_ST_COUNT; s++)
		cr_assert_eq(tpo_config_stage_runs(&cfg, s), s != TPO_ST_RAG);
	expect_ok("{\"stages\": {\"rag\": {\"context_file\": \"/srv/docs.txt\"}}}");
	cr_assert(tpo_config_stage_runs(&cfg, TPO_ST_RAG));
	expect_ok("{\"stages\": {\"rag\": {\"enabled\": true}}}");
	cr_assert_eq(cfg.stages.rag.enabled, TPO_RAG_ON);
	cr_assert(tpo_config_stage_runs(&cfg, TPO_ST_RAG));
	c = cfg;
	roundtrip(&c);
	expect_ok("{\"stages\": {\"rag\": {\"enabled\": false, \"context_file\": null}}}");
	cr_assert_eq(cfg.stages.rag.enabled, TPO_RAG_OFF);
	cr_assert_not(tpo_config_stage_runs(&cfg, TPO_ST_RAG));
	c = cfg;
	roundtrip(&c);
	expect_ok("{\"stages\": {\"rag\": {\"enabled\": \"auto\"}}}");
	cr_assert_eq(cfg.stages.rag.enabled, TPO_RAG_AUTO);

	expect_one("{\"stages\": {\"rag\": {\"enabled\": \"yes\"}}}",
		   "t.json: stages.rag.enabled: expected \"auto\", true or false at 1:32");
	expect_one("{\"stages\": {\"rag\": {\"enabled\": 1}}}",
		   "t.json: stages.rag.enabled: expected \"auto\", true or false at 1:32");
	expect_one("{\"stages\": {\"rag\": {\"enabled\": null}}}",
		   "t.json: stages.rag.enabled: expected \"auto\", true or false at 1:32");
	/* Retrieval configured but its stage switched off: which one is meant? */
	expect_one("{\"stages\": {\"rag\": {\"enabled\": false, \"context_file\": \"/srv/d\"}}}",
		   "t.json: stages.rag.enabled: expected true or \"auto\": stages.rag.context_file "
		   "is set, and retrieval runs in the rag stage at 1:32");
}

Test(config, cross_ring_sizes)
{
	expect_one("{\"rings\": {\"capacity\": 131072, \"max_record\": 131072}}",
		   "t.json: rings.capacity: expected at least 2 * (rings.max_record + 64) = 262272 bytes at 1:24");
	expect_one("{\"rings\": {\"max_record\": 1048576}}",
		   "t.json: rings.max_record: expected at most rings.capacity / 2 - 64 = 524224 at 1:26");
	expect_one("{\"rings\": {\"capacity\": 4194304, \"max_record\": 1048576},"
		   " \"stages\": {\"rag\": {\"ring_capacity\": 1048576}}}",
		   "t.json: stages.rag.ring_capacity: expected at least 2 * (rings.max_record + 64) = "
		   "2097280 bytes at 1:93");
}

/* ---- several at once ------------------------------------------------- */

Test(config, many_errors_all_reported)
{
	static const char js[] =
		"{\n"
		"  \"nmae\": \"x\",\n"
		"  \"lanes\": 0,\n"
		"  \"admission\": {\"policy\": \"nope\", \"retry_after_s\": 0},\n"
		"  \"restart\": {\"base_ms\": 500, \"cap_ms\": 400},\n"
		"  \"stages\": {\"infer\": {\"worker\": \"openai\", \"timeouts\": {\"idle_ms\": \"x\"}}}\n"
		"}\n";
	int r = tpo_config_parse(&cfg, js, strlen(js), "p.json", &errs);

	cr_assert_eq(r, -EINVAL);
	for (int i = 0; i < errs.n; i++)
		cr_log_info("%s", errs.msg[i]);
	cr_assert_eq(errs.n, 7, "got %d errors", errs.n);
	cr_assert(has_error("p.json: nmae: unknown key at 2:3"));
	cr_assert(has_error("p.json: lanes: expected \"auto\", a lane count in 1..16 or an array "
			    "of 1..16 CPU numbers at 3:12"));
	cr_assert(has_error("p.json: admission.policy: expected one of \"reject_new\", "
			    "\"drop_oldest\" at 4:27"));
	cr_assert(has_error("p.json: admission.retry_after_s: expected a positive integer at 4:52"));
	cr_assert(has_error("p.json: restart.cap_ms: expected an integer >= restart.base_ms (500) at 5:41"));
	cr_assert(has_error("p.json: stages.infer.timeouts.idle_ms: expected a positive integer at 6:68"));
	cr_assert(has_error("p.json: stages.infer.worker: worker \"openai\" needs at least one entry "
			    "in stages.infer.endpoints at 6:34"));
}

Test(config, error_cap_and_print)
{
	char js[4096], *out = NULL;
	size_t n = 0, outlen = 0;
	FILE *f;

	n += (size_t)snprintf(js + n, sizeof(js) - n, "{");
	for (int i = 0; i < 40; i++)
		n += (size_t)snprintf(js + n, sizeof(js) - n, "%s\"k%d\": 1", i ? ", " : "", i);
	snprintf(js + n, sizeof(js) - n, "}");
	cr_assert_eq(parse(js), -EINVAL);
	cr_assert_eq(errs.n, TPO_CONFIG_ERRORS_MAX);
	cr_assert_eq(errs.dropped, 40 - TPO_CONFIG_ERRORS_MAX);
	cr_assert_str_eq(errs.msg[0], "t.json: k0: unknown key at 1:2");

	f = open_memstream(&out, &outlen);
	cr_assert_not_null(f);
	tpo_config_errors_print(&errs, f, "tpo-supervisor");
	fclose(f);
	cr_assert(strncmp(out, "tpo-supervisor: config: t.json: k0: unknown key at 1:2\n", 55) == 0, "%s", out);
	cr_assert_not_null(strstr(out, "tpo-supervisor: config: ... and 8 more errors\n"));
	free(out);
}

Test(config, load_missing_file)
{
	int r = tpo_config_load(&cfg, "/nonexistent/tpo.json", &errs);

	cr_assert_eq(r, -ENOENT);
	cr_assert_eq(errs.n, 1);
	cr_assert_str_eq(errs.msg[0], "/nonexistent/tpo.json: cannot read: No such file or directory");
}

Test(config, load_directory)
{
	int r = tpo_config_load(&cfg, "/", &errs);

	cr_assert_eq(r, -EISDIR);
	cr_assert_str_eq(errs.msg[0], "/: cannot read: Is a directory");
}

Test(config, load_reports_file_name)
{
	char path[] = "/tmp/tpo-cfg-XXXXXX";
	int fd = mkstemp(path);
	char want[256];

	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, "{\n \"lanes\": -3\n}\n", 17), 17);
	close(fd);
	cr_assert_eq(tpo_config_load(&cfg, path, &errs), -EINVAL);
	unlink(path);
	snprintf(want, sizeof(want), "%s: lanes: expected \"auto\", a lane count in 1..16 or an "
		 "array of 1..16 CPU numbers at 2:11", path);
	cr_assert_eq(errs.n, 1);
	cr_assert_str_eq(errs.msg[0], want);
}

/* The name of a file that does not load: the top-level "name" only. */
static int name_of(const char *json, char *name, size_t cap)
{
	char path[] = "/tmp/tpo-cfg-XXXXXX";
	int fd = mkstemp(path), r;

	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, json, strlen(json)), (ssize_t)strlen(json));
	close(fd);
	r = tpo_config_name_of(path, name, cap);
	unlink(path);
	return r;
}

Test(config, name_of_a_file_that_does_not_load)
{
	char name[TPO_CONFIG_NAME_LEN];

	cr_assert_eq(name_of("{\"stages\": {\"infer\": {\"endpoints\": [{\"name\": \"ep\"}]}},"
			     " \"name\": \"prod\", \"lanes\": -3}", name, sizeof(name)), 0);
	cr_assert_str_eq(name, "prod");
	cr_assert_eq(name_of("{\"lanes\": \"many\"}", name, sizeof(name)), 0);
	cr_assert_str_eq(name, "default");
	cr_assert_eq(name_of("{\"name\": 7}", name, sizeof(name)), -EINVAL);
	cr_assert_eq(name_of("{\"name\": \"a/b\"}", name, sizeof(name)), -EINVAL);
	cr_assert_eq(name_of("{\"name\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}", name,
			     sizeof(name)), -EINVAL);
	cr_assert_eq(name_of("{ not json", name, sizeof(name)), -EINVAL);
	cr_assert_eq(name_of("[1]", name, sizeof(name)), -EINVAL);
	cr_assert_eq(tpo_config_name_of("/nonexistent/x.json", name, sizeof(name)), -ENOENT);
}

Test(config, null_errs_allowed)
{
	cr_assert_eq(tpo_config_parse(&cfg, "{\"x\":1}", 7, NULL, NULL), -EINVAL);
	cr_assert_eq(tpo_config_parse(&cfg, "{}", 2, NULL, NULL), 0);
}

/* Mutated input never crashes and always ends in 0 or reported errors. */
Test(config, mutations_never_crash)
{
	static const char seed[] =
		"{\"name\":\"a\",\"lanes\":[0,1],\"models\":[\"m\\u00e9\"],\"rings\":{\"capacity\":262144},"
		"\"stages\":{\"infer\":{\"worker\":\"openai\",\"endpoints\":[{\"url\":\"http://h\","
		"\"weight\":3}],\"timeouts\":{\"idle_ms\":5}},\"post\":{\"stop\":[\"\\n\"]}}}";
	static const char alphabet[] = "{}[]\",:\\u0123456789-.eEtrnulfa \n\x01\xc3\xa9";
	char buf[sizeof(seed) + 8];
	uint32_t rng = 12345;

	for (int it = 0; it < 3000; it++) {
		size_t len = sizeof(seed) - 1;
		int r;

		memcpy(buf, seed, len);
		for (int m = 0; m < 1 + it % 4; m++) {
			rng = rng * 1103515245u + 12345u;
			size_t pos = (rng >> 8) % len;
			rng = rng * 1103515245u + 12345u;
			char ch = alphabet[(rng >> 8) % (sizeof(alphabet) - 1)];
			if (it % 3 == 0 && len > 1)
				memmove(buf + pos, buf + pos + 1, --len - pos);   /* delete */
			else
				buf[pos] = ch;                                    /* replace */
		}
		r = tpo_config_parse(&cfg, buf, len, "fuzz", &errs);
		cr_assert(r == 0 || (r == -EINVAL && errs.n >= 1), "r=%d n=%d", r, errs.n);
		for (int i = 0; i < errs.n; i++)
			cr_assert(strncmp(errs.msg[i], "fuzz: ", 6) == 0 && strstr(errs.msg[i], " at "),
				  "%s", errs.msg[i]);
	}
}

/* Every string at its longest, every character escaped as \u00XX: still fits. */
Test(config, dump_max_fits)
{
	static struct tpo_config c;
	static char big[TPO_CONFIG_DUMP_MAX];
	struct tpo_config_infer *in = &c.stages.infer;
	int k;

#define FILL(a) memset((a), 1, sizeof(a) - 1)
	tpo_config_defaults(&c);
	FILL(c.name); FILL(c.listen); FILL(c.auth_api_keys_env);
	c.nmodels = TPO_CONFIG_MODELS_MAX;
	for (k = 0; k < TPO_CONFIG_MODELS_MAX; k++)
		FILL(c.models[k]);
	FILL(c.stages.rag.context_file); FILL(c.stages.assemble.template);
	FILL(in->plugin.path); FILL(in->plugin.options);
	in->nendpoints = TPO_CONFIG_ENDPOINTS_MAX;
	for (k = 0; k < TPO_CONFIG_ENDPOINTS_MAX; k++) {
		FILL(in->endpoints[k].url); FILL(in->endpoints[k].api_key_env);
		FILL(in->endpoints[k].model);
	}
	c.stages.post.nstop = TPO_CONFIG_STOP_MAX;
	for (k = 0; k < TPO_CONFIG_STOP_MAX; k++)
		FILL(c.stages.post.stop[k]);
	c.stages.post.nredact = TPO_CONFIG_REDACT_MAX;
	for (k = 0; k < TPO_CONFIG_REDACT_MAX; k++)
		FILL(c.stages.post.redact[k]);
	c.lanes.mode = TPO_LANES_LIST;
	c.lanes.ncpus = TPO_LANES_MAX;
#undef FILL
	cr_assert_gt(tpo_config_dump(&c, big, sizeof(big)), 60000);
}
