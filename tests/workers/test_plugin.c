/*
 * test_plugin.c — the native plugin worker with the shipped plugins
 * (build/plugins/echo.so, faulty.so): answers, injected errors, and the
 * infer stage's in-flight journal when the plugin segfaults: before the
 * first token the request is retried, after tokens it ends with one error
 * event, and a prompt that crashes twice is quarantined while the lane
 * keeps serving.
 */
#include "tests/integration/harness.h"

#define PCFG \
	"{\"lanes\": 1, \"restart\": {\"base_ms\": 10, \"cap_ms\": 50}," \
	" \"stages\": {\"infer\": {\"worker\": \"plugin\"," \
	"  \"plugin\": {\"path\": \"%s/plugins/%s.so\", \"options\": \"tokens=6\"}}}}"

static struct h_inst in;

TestSuite(plugin, .fini = h_cleanup, .timeout = 120);

static void start(const char *tag, const char *plugin)
{
	static char cfg[1024];
	char build[512];

	if (!realpath(h_build(), build))
		cr_assert_fail("no build dir %s", h_build());
	snprintf(cfg, sizeof(cfg), PCFG, build, plugin);
	h_start(&in, tag, cfg);
	h_register(&in);
}

static int once(const char *content, char *out, size_t cap)
{
	struct h_conn c;
	char body[512];
	int status;

	h_chat_body(body, sizeof(body), content, 0, NULL);
	h_http(&c, in.port, "POST", "/v1/chat/completions", NULL, body);
	status = c.status;
	snprintf(out, cap, "%.*s", (int)(cap - 1), c.body);
	h_conn_free(&c);
	return status;
}

Test(plugin, echo_answers)
{
	char out[4096];

	start("pe", "echo");
	cr_assert_eq(once("hello big world", out, sizeof(out)), 200, "%s", out);
	cr_assert(strstr(out, "\"content\":\"user: hello big world"), "%s", out);
	cr_assert(strstr(out, "\"completion_tokens\":4"), "%s", out);
	cr_assert_eq(once("a b c d e f g h i j", out, sizeof(out)), 200, "%s", out);
	cr_assert(strstr(out, "\"finish_reason\":\"stop\""), "%s", out);
	cr_assert(strstr(out, "\"completion_tokens\":6"), "options tokens=6: %s", out);
	h_stop(&in);
}

Test(plugin, faulty_journal)
{
	char out[4096], body[512], ev[8192];
	struct tpo_stats st;
	struct tpo_proc_snapshot p;
	struct h_conn c;
	int content = 0, errors = 0, r;
	uint32_t restarts;

	start("pf", "faulty");
	in.crashes_ok = 1;
	h_stats_attach(&in, &st);

	cr_assert_eq(once("fine", out, sizeof(out)), 200, "%s", out);
	cr_assert(strstr(out, "\"content\":\"tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7\""), "%s", out);

	/* An error the plugin reports: its status and message. */
	cr_assert_eq(once("[[plugin:fail]]", out, sizeof(out)), 503, "%s", out);
	h_assert_oai_error(out, "injected failure");

	/* Crash after 3 tokens: those 3, then exactly one error event. */
	h_chat_body(body, sizeof(body), "[[plugin:segv_after=3]]", 1, NULL);
	h_open(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	if (c.status != 200)
		h_read_body(&c);
	cr_assert_eq(c.status, 200, "%d %s", c.status, c.body ? c.body : "");
	while ((r = h_sse_next(&c, ev, sizeof(ev))) == 1) {
		cr_assert_eq(errors, 0, "event after the error: %s", ev);
		cr_assert_str_neq(ev, "[DONE]");
		if (strstr(ev, "\"error\"")) {
			h_assert_oai_error(ev, "crashed");
			errors++;
		} else if (strstr(ev, "\"content\":\"")) {
			content++;
		}
	}
	cr_assert_eq(r, 0);
	cr_assert_eq(errors, 1);
	cr_assert_eq(content, 3);
	h_conn_free(&c);
	h_proc(&st, TPO_STAGE_INFER, 0, &p);
	restarts = p.restarts;
	cr_assert_geq(restarts, 1);

	/* Crash before any token: retried once by the replacement, crashes
	 * again, quarantined with an error; the lane keeps serving. */
	cr_assert_eq(once("[[plugin:segv]]", out, sizeof(out)), 500, "%s", out);
	h_assert_oai_error(out, "quarantined");
	h_proc(&st, TPO_STAGE_INFER, 0, &p);
	cr_assert_geq(p.restarts, restarts + 2, "restarts %u -> %u", restarts, p.restarts);
	for (uint64_t end = h_now_ms() + H_HANG_MS;; h_sleep_ms(10)) {
		int s = once("fine again", out, sizeof(out));
		if (s != 503 || h_now_ms() > end) {
			cr_assert_eq(s, 200, "%s", out);
			break;
		}
	}
	cr_assert(strstr(out, "tok7"), "%s", out);
	tpo_stats_close(&st);
	h_stop(&in);
}
