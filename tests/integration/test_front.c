/*
 * test_front.c — the HTTP front end to end (issue 4): a real supervisor,
 * real stage processes and rings, real HTTP on 127.0.0.1.
 */
#include "tests/integration/harness.h"
#include "tests/lib/proc.h"

#define FAST_CFG \
	"{\"lanes\": 2, \"restart\": {\"base_ms\": 10}," \
	" \"stages\": {\"infer\": {\"mock\": {\"tokens_per_second\": 0, \"max_tokens\": 16}}}}"

static struct h_inst in;

TestSuite(front, .fini = h_cleanup, .timeout = 120);

/* POST a chat body; response fully read into c. */
static void chat(struct h_conn *c, const char *content, int stream, const char *more,
		 const char *headers)
{
	char body[4096];

	h_chat_body(body, sizeof(body), content, stream, more);
	h_http(c, in.port, "POST", "/v1/chat/completions", headers, body);
}

/* Non-streaming chat: 200, valid response; content and finish out. */
static int64_t chat_text(const char *content, const char *more, char *text, size_t cap,
			 char *finish, size_t fcap)
{
	struct h_conn c;
	struct h_json j;
	char obj[64];
	int64_t ct;

	chat(&c, content, 0, more, NULL);
	cr_assert_eq(c.status, 200, "status %d: %s", c.status, c.body);
	cr_assert_eq(h_json_parse(&j, c.body), 0, "not JSON: %s", c.body);
	cr_assert_gt(h_json_str(&j, "object", obj, sizeof(obj)), 0);
	cr_assert_str_eq(obj, "chat.completion");
	cr_assert_gt(h_json_str(&j, "choices.0.message.role", obj, sizeof(obj)), 0);
	cr_assert_str_eq(obj, "assistant");
	cr_assert_geq(h_json_str(&j, "choices.0.message.content", text, cap), 0, "%s", c.body);
	cr_assert_gt(h_json_str(&j, "choices.0.finish_reason", finish, fcap), 0, "%s", c.body);
	ct = h_json_int(&j, "usage.completion_tokens");
	cr_assert_eq(h_json_int(&j, "usage.total_tokens"),
		     ct + h_json_int(&j, "usage.prompt_tokens"));
	h_json_free(&j);
	h_conn_free(&c);
	return ct;
}

/* Streaming chat: validated stream; content chunks returned. */
static int chat_stream(const char *content, const char *more, char *text, size_t cap,
		       char *finish, size_t fcap, int64_t *usage)
{
	struct h_conn c;
	char body[4096], v[128];
	int n;

	h_chat_body(body, sizeof(body), content, 1, more);
	h_open(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	cr_assert_eq(c.status, 200);
	cr_assert(h_header(&c, "content-type", v, sizeof(v)));
	cr_assert(strstr(v, "text/event-stream"), "content-type %s", v);
	cr_assert(h_header(&c, "x-request-id", v, sizeof(v)));
	cr_assert_geq(h_lane(&c), 0);
	n = h_read_stream(&c, 1, text, cap, finish, fcap, usage);
	h_conn_free(&c);
	return n;
}

Test(front, chat_streaming_and_not)
{
	char t1[8192], t2[8192], f1[32], f2[32];
	int64_t usage, ct;
	int n;

	h_start(&in, "chat", FAST_CFG);
	n = chat_stream("hello there [[tpo:tokens=7]]", NULL, t1, sizeof(t1), f1, sizeof(f1), &usage);
	cr_assert_eq(n, 7);
	cr_assert_eq(usage, 7);
	cr_assert_str_eq(f1, "stop");
	ct = chat_text("hello there [[tpo:tokens=7]]", NULL, t2, sizeof(t2), f2, sizeof(f2));
	cr_assert_eq(ct, 7);
	cr_assert_str_eq(f2, "stop");
	/* The mock is deterministic: same prompt, same answer, either way. */
	cr_assert_str_eq(t1, t2);
	cr_assert_gt(strlen(t1), 0);
	h_stop(&in);
}

Test(front, completions_streaming_and_not)
{
	struct h_conn c;
	struct h_json j;
	char text[8192], stext[8192], fin[32], obj[64];
	int64_t usage;
	const char *body = "{\"model\":\"tpo-mock\",\"prompt\":\"once upon [[tpo:tokens=5]]\"}";
	const char *sbody = "{\"model\":\"tpo-mock\",\"prompt\":\"once upon [[tpo:tokens=5]]\",\"stream\":true,"
			    "\"stream_options\":{\"include_usage\":true}}";
	/* Without stream_options.include_usage: no usage chunk (OpenAI's
	 * behaviour; clients read choices[0] of every chunk). */
	const char *nbody = "{\"model\":\"tpo-mock\",\"prompt\":\"once upon [[tpo:tokens=5]]\",\"stream\":true}";
	char ev[8192];
	int events = 0, done = 0, r;

	h_start(&in, "compl", FAST_CFG);
	h_http(&c, in.port, "POST", "/v1/completions", NULL, body);
	cr_assert_eq(c.status, 200, "%d %s", c.status, c.body);
	cr_assert_eq(h_json_parse(&j, c.body), 0);
	cr_assert_gt(h_json_str(&j, "object", obj, sizeof(obj)), 0);
	cr_assert_str_eq(obj, "text_completion");
	cr_assert_gt(h_json_str(&j, "choices.0.text", text, sizeof(text)), 0);
	cr_assert_gt(h_json_str(&j, "choices.0.finish_reason", fin, sizeof(fin)), 0);
	cr_assert_str_eq(fin, "stop");
	cr_assert_eq(h_json_int(&j, "usage.completion_tokens"), 5);
	h_json_free(&j);
	h_conn_free(&c);

	h_open(&c, in.port, "POST", "/v1/completions", NULL, sbody, strlen(sbody));
	cr_assert_eq(c.status, 200);
	cr_assert_eq(h_read_stream(&c, 0, stext, sizeof(stext), fin, sizeof(fin), &usage), 5);
	cr_assert_eq(usage, 5);
	cr_assert_str_eq(fin, "stop");
	cr_assert_str_eq(stext, text);
	h_conn_free(&c);

	h_open(&c, in.port, "POST", "/v1/completions", NULL, nbody, strlen(nbody));
	cr_assert_eq(c.status, 200);
	while ((r = h_sse_next(&c, ev, sizeof(ev))) == 1) {
		cr_assert_not(done, "event after [DONE]: %s", ev);
		if (!strcmp(ev, "[DONE]")) {
			done = 1;
			continue;
		}
		cr_assert_eq(h_json_parse(&j, ev), 0, "%s", ev);
		cr_assert_eq(h_json_size(&j, "choices"), 1, "a chunk without its choice: %s", ev);
		cr_assert(h_json_at(&j, "usage") < 0 || h_json_null(&j, "usage"),
			  "usage nobody asked for: %s", ev);
		h_json_free(&j);
		events++;
	}
	cr_assert_eq(r, 0);
	cr_assert(done);
	cr_assert_eq(events, 6, "5 tokens and the finish chunk, got %d events", events);
	h_conn_free(&c);
	h_stop(&in);
}

Test(front, concurrent_streams_200)
{
	enum { N = 200, TOK = 12 };
	static struct h_conn cs[N];
	char body[512], text[8192], fin[32];
	int64_t usage;

	h_start(&in, "conc",
		"{\"lanes\": 2, \"stages\": {\"infer\": {\"mock\": {\"tokens_per_second\": 100}}}}");
	/* Every request is sent before any response is read: all 200 are in
	 * flight in the pipeline together. */
	for (int i = 0; i < N; i++) {
		char content[64];

		snprintf(content, sizeof(content), "request %d [[tpo:tokens=%d]]", i, TOK);
		h_chat_body(body, sizeof(body), content, 1, NULL);
		memset(&cs[i], 0, sizeof(cs[i]));
		cs[i].fd = h_connect(in.port);
		{
			char req[1024];
			int n = snprintf(req, sizeof(req), "POST /v1/chat/completions HTTP/1.1\r\n"
					 "Host: x\r\nContent-Type: application/json\r\n"
					 "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
			cr_assert_eq(h_send_all(cs[i].fd, req, (size_t)n), 0);
		}
	}
	for (int i = 0; i < N; i++) {
		cr_assert_eq(h_read_head(&cs[i]), 0, "stream %d: no head", i);
		cr_assert_eq(cs[i].status, 200, "stream %d: status %d", i, cs[i].status);
		cr_assert_eq(h_read_stream(&cs[i], 1, text, sizeof(text), fin, sizeof(fin), &usage),
			     TOK, "stream %d: wrong chunk count", i);
		cr_assert_eq(usage, TOK);
		cr_assert_str_eq(fin, "stop");
		h_conn_free(&cs[i]);
	}
	h_stop(&in);
}

Test(front, session_affinity)
{
	struct h_conn c;
	int lane = -1, lanes_seen = 0;
	char hdr[128];

	h_start(&in, "aff", FAST_CFG);
	for (int s = 0; s < 6; s++) {
		int first = -1;
		snprintf(hdr, sizeof(hdr), "X-Session-Id: conversation-%d\r\n", s);
		for (int i = 0; i < 4; i++) {
			chat(&c, "hi [[tpo:tokens=2]]", 0, NULL, hdr);
			cr_assert_eq(c.status, 200);
			lane = h_lane(&c);
			cr_assert_geq(lane, 0);
			cr_assert_lt(lane, 2);
			if (first < 0)
				first = lane;
			cr_assert_eq(lane, first, "session %d moved from lane %d to %d", s, first, lane);
			h_conn_free(&c);
		}
		lanes_seen |= 1 << first;
	}
	/* The "user" field is a session too. */
	{
		int first = -1;
		for (int i = 0; i < 3; i++) {
			chat(&c, "hi [[tpo:tokens=2]]", 0, "\"user\":\"alice\"", NULL);
			cr_assert_eq(c.status, 200);
			if (first < 0)
				first = h_lane(&c);
			cr_assert_eq(h_lane(&c), first);
			h_conn_free(&c);
		}
	}
	cr_log_info("lanes used by 6 sessions: mask %d", lanes_seen);
	h_stop(&in);
}

Test(front, info_routes)
{
	struct h_conn c;
	struct h_json j;
	char s[64];

	h_start(&in, "info", FAST_CFG);
	h_http(&c, in.port, "GET", "/v1/models", NULL, NULL);
	cr_assert_eq(c.status, 200);
	cr_assert_eq(h_json_parse(&j, c.body), 0);
	cr_assert_gt(h_json_str(&j, "object", s, sizeof(s)), 0);
	cr_assert_str_eq(s, "list");
	cr_assert_gt(h_json_str(&j, "data.0.id", s, sizeof(s)), 0);
	cr_assert_str_eq(s, "tpo-mock");
	h_json_free(&j);
	h_conn_free(&c);

	h_http(&c, in.port, "GET", "/healthz", NULL, NULL);
	cr_assert_eq(c.status, 200);
	h_conn_free(&c);
	h_http(&c, in.port, "GET", "/readyz", NULL, NULL);
	cr_assert_eq(c.status, 200);
	h_conn_free(&c);

	chat(&c, "count me [[tpo:tokens=1]]", 0, NULL, NULL);
	cr_assert_eq(c.status, 200);
	h_conn_free(&c);
	h_http(&c, in.port, "GET", "/metrics", NULL, NULL);
	cr_assert_eq(c.status, 200);
	cr_assert(strstr(c.body, "tpo_http_responses_total"), "metrics lack "
		  "tpo_http_responses_total:\n%.2000s", c.body);
	h_conn_free(&c);
	h_stop(&in);
}

Test(front, bearer_auth)
{
	struct h_conn c;
	char body[512];

	h_start_ex(&in, "auth",
		   "{\"lanes\": 1, \"auth\": {\"api_keys_env\": \"TPO_IT_KEYS\"},"
		   " \"stages\": {\"infer\": {\"mock\": {\"tokens_per_second\": 0}}}}",
		   "TPO_IT_KEYS=key-one,key-two", 1);
	h_chat_body(body, sizeof(body), "auth [[tpo:tokens=2]]", 0, NULL);

	h_http(&c, in.port, "POST", "/v1/chat/completions", NULL, body);
	cr_assert_eq(c.status, 401);
	h_assert_oai_error(c.body, NULL);
	h_conn_free(&c);
	h_http(&c, in.port, "POST", "/v1/chat/completions", "Authorization: Bearer key-three\r\n", body);
	cr_assert_eq(c.status, 401);
	h_assert_oai_error(c.body, NULL);
	h_conn_free(&c);
	h_http(&c, in.port, "POST", "/v1/chat/completions", "Authorization: Bearer key-on\r\n", body);
	cr_assert_eq(c.status, 401);
	h_conn_free(&c);
	h_http(&c, in.port, "GET", "/v1/models", NULL, NULL);
	cr_assert_eq(c.status, 401);
	h_conn_free(&c);

	h_http(&c, in.port, "POST", "/v1/chat/completions", "Authorization: Bearer key-two\r\n", body);
	cr_assert_eq(c.status, 200, "%d %s", c.status, c.body);
	h_conn_free(&c);
	h_http(&c, in.port, "POST", "/v1/chat/completions", "Authorization: Bearer key-one\r\n", body);
	cr_assert_eq(c.status, 200);
	h_conn_free(&c);
	/* Probes need no key. */
	h_http(&c, in.port, "GET", "/healthz", NULL, NULL);
	cr_assert_eq(c.status, 200);
	h_conn_free(&c);
	h_stop(&in);
}

/* Opens a slow stream and waits for its first content event. */
static void slow_stream(struct h_conn *c, const char *content)
{
	char body[512], ev[8192];

	h_chat_body(body, sizeof(body), content, 1, NULL);
	h_open(c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	cr_assert_eq(c->status, 200);
	cr_assert_eq(h_sse_next(c, ev, sizeof(ev)), 1);
	cr_assert(strstr(ev, "chat.completion.chunk"), "%s", ev);
}

Test(front, shed_reject_new)
{
	struct h_conn a, b;
	char v[32], body[512];

	h_start(&in, "rej",
		"{\"lanes\": 1, \"admission\": {\"max_inflight_per_lane\": 1, "
		"\"policy\": \"reject_new\", \"retry_after_s\": 7}}");
	slow_stream(&a, "first [[tpo:tps=5]] [[tpo:tokens=50]]");
	h_chat_body(body, sizeof(body), "second [[tpo:tokens=2]]", 0, NULL);
	h_http(&b, in.port, "POST", "/v1/chat/completions", NULL, body);
	cr_assert_eq(b.status, 429, "status %d", b.status);
	cr_assert(h_header(&b, "retry-after", v, sizeof(v)), "no Retry-After");
	cr_assert_str_eq(v, "7");
	h_assert_oai_error(b.body, NULL);
	h_conn_free(&b);
	h_conn_free(&a);       /* client gone: the slot frees */
	{
		uint64_t end = h_now_ms() + H_HANG_MS;
		for (;;) {
			h_http(&b, in.port, "POST", "/v1/chat/completions", NULL, body);
			if (b.status == 200 || h_now_ms() > end)
				break;
			cr_assert_eq(b.status, 429);
			h_conn_free(&b);
			h_sleep_ms(20);
		}
		cr_assert_eq(b.status, 200, "lane never freed after the client left");
		h_conn_free(&b);
	}
	h_stop(&in);
}

/*
 * drop_oldest with a one-slot lane of budget 2 whose slot A holds: B is
 * admitted and waits for inference; C finds the lane full, and B (the
 * oldest request not in inference) is shed with 503, C admitted.
 */
static void admit_b_then_shed_it(struct tpo_stats *st, struct h_conn *b, struct h_conn *c)
{
	char body[512];

	h_chat_body(body, sizeof(body), "B [[tpo:tokens=2]]", 0, NULL);
	h_begin(b, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	cr_assert_eq(h_wait_in_flight(st, TPO_STAGE_STREAM, 0, 2), 2, "B was not admitted");
	h_chat_body(body, sizeof(body), "C [[tpo:tokens=3]]", 0, NULL);
	h_begin(c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	cr_assert_eq(h_read_head(b), 0);
	cr_assert_eq(b->status, 503, "B: status %d", b->status);
}

Test(front, shed_drop_oldest)
{
	struct h_conn a, b, c;
	struct tpo_stats st;
	struct tpo_proc_snapshot p;

	h_start(&in, "drop",
		"{\"lanes\": 1, \"admission\": {\"max_inflight_per_lane\": 2, "
		"\"policy\": \"drop_oldest\"}, \"stages\": {\"infer\": {\"max_inflight\": 1}}}");
	h_stats_attach(&in, &st);
	/* A: in inference (it streams). */
	slow_stream(&a, "A [[tpo:tps=10]] [[tpo:tokens=20]]");
	admit_b_then_shed_it(&st, &b, &c);
	cr_assert_eq(h_read_body(&b), 0);
	h_assert_oai_error(b.body, NULL);
	/* A was in inference: untouched (its first chunk was read already). */
	{
		int content, errors, done;
		h_drain_stream(&a, &content, &errors, &done);
		cr_assert_eq(content, 19);
		cr_assert_eq(errors, 0);
		cr_assert_eq(done, 1);
	}
	h_conn_free(&a);
	h_await_answer(&c, "C", 3);
	h_proc(&st, TPO_STAGE_STREAM, 0, &p);
	cr_assert_eq(p.shed_drop_oldest, 1);
	h_conn_free(&a);
	h_conn_free(&b);
	h_conn_free(&c);
	tpo_stats_close(&st);
	h_stop(&in);
}

/*
 * drop_oldest ends the oldest queued request only for a new one that is
 * admitted: C, too large for the lane's records, gets its 413 and B, queued
 * behind A, is not shed for it.
 */
Test(front, drop_oldest_sheds_nothing_for_a_refused_request)
{
	struct h_conn a, b, c;
	struct tpo_stats st;
	struct tpo_proc_snapshot p;
	static char big[100 * 1024], body[120 * 1024];
	char sb[512];

	h_start(&in, "dropref",
		"{\"lanes\": 1, \"admission\": {\"max_inflight_per_lane\": 2, "
		"\"policy\": \"drop_oldest\"}, \"stages\": {\"infer\": {\"max_inflight\": 1}}}");
	h_stats_attach(&in, &st);
	slow_stream(&a, "A [[tpo:tps=10]] [[tpo:tokens=20]]");
	h_chat_body(sb, sizeof(sb), "B [[tpo:tokens=2]]", 0, NULL);
	h_begin(&b, in.port, "POST", "/v1/chat/completions", NULL, sb, strlen(sb));
	cr_assert_eq(h_wait_in_flight(&st, TPO_STAGE_STREAM, 0, 2), 2, "B was not admitted");
	memset(big, 'x', sizeof(big) - 1);
	h_chat_body(body, sizeof(body), big, 0, NULL);
	h_http(&c, in.port, "POST", "/v1/chat/completions", NULL, body);
	cr_assert_eq(c.status, 413, "C: status %d", c.status);
	h_conn_free(&c);
	h_proc(&st, TPO_STAGE_STREAM, 0, &p);
	cr_assert_eq(p.shed_drop_oldest, 0, "B was shed for a request that was refused");
	cr_assert_eq(p.in_flight, 2);
	h_conn_free(&a);                /* A leaves: B gets the slot and its answer */
	h_await_answer(&b, "B", 2);
	h_conn_free(&b);
	tpo_stats_close(&st);
	h_stop(&in);
}

/*
 * A request in inference that has not said a word yet (tpo-infer publishes
 * its BEGIN without waking post, and pays that wake-up within 1 ms) must
 * still reach the front as "in inference": drop_oldest sheds the queued one.
 */
Test(front, drop_oldest_spares_a_silent_inference)
{
	struct h_conn a, b, c;
	struct tpo_stats st;
	struct tpo_proc_snapshot p;
	char body[512];
	uint64_t end;

	h_start(&in, "dropsil",
		"{\"lanes\": 1, \"admission\": {\"max_inflight_per_lane\": 2, "
		"\"policy\": \"drop_oldest\"}, \"stages\": {\"infer\": {\"max_inflight\": 1}}}");
	h_stats_attach(&in, &st);
	/* A: in inference, silent (the mock never answers it). */
	h_chat_body(body, sizeof(body), "A [[tpo:stall]]", 0, NULL);
	h_begin(&a, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	/* The front records its queue wait when A's BEGIN reaches it. */
	end = h_now_ms() + H_HANG_MS;
	while (tpo_hist_count(tpo_stats_hist(&st, TPO_STAGE_STREAM, 0, TPO_STATS_QUEUE_WAIT)) < 1 &&
	       h_now_ms() < end)
		h_sleep_ms(5);
	cr_assert_eq(tpo_hist_count(tpo_stats_hist(&st, TPO_STAGE_STREAM, 0, TPO_STATS_QUEUE_WAIT)), 1,
		     "A's BEGIN never reached the front");
	admit_b_then_shed_it(&st, &b, &c);
	/* A leaves: its slot goes to C. */
	h_conn_free(&a);
	cr_assert_eq(h_read_head(&c), 0);
	cr_assert_eq(c.status, 200, "C: status %d", c.status);
	h_proc(&st, TPO_STAGE_STREAM, 0, &p);
	cr_assert_eq(p.shed_drop_oldest, 1);
	h_conn_free(&b);
	h_conn_free(&c);
	tpo_stats_close(&st);
	h_stop(&in);
}

Test(front, deadline_before_and_during_streaming)
{
	struct h_conn c;
	char body[512], ev[8192];
	int content = 0, errors = 0, done = 0, r;

	h_start(&in, "ddl", FAST_CFG);
	h_chat_body(body, sizeof(body), "stall [[tpo:stall]]", 0, NULL);
	h_http(&c, in.port, "POST", "/v1/chat/completions", "X-Request-Timeout: 300\r\n", body);
	cr_assert_eq(c.status, 504, "status %d", c.status);
	h_assert_oai_error(c.body, NULL);
	h_conn_free(&c);

	/* Streaming, but nothing streamed yet: an HTTP 504, not an event. */
	h_chat_body(body, sizeof(body), "stall [[tpo:stall]]", 1, NULL);
	h_http(&c, in.port, "POST", "/v1/chat/completions", "X-Request-Timeout: 200ms\r\n", body);
	cr_assert_eq(c.status, 504, "status %d", c.status);
	h_assert_oai_error(c.body, NULL);
	h_conn_free(&c);

	/* Bad header values: 400. Not a number, NaN (it passed every range
	 * check and meant no deadline), infinity, or over a day in seconds. */
	{
		static const char *badv[] = { "soon", "nan", "NaN", "inf", "86400000s", "1e300",
					      "-5", "0", "5 h" };
		char hv[64];

		for (size_t i = 0; i < sizeof(badv) / sizeof(badv[0]); i++) {
			snprintf(hv, sizeof(hv), "X-Request-Timeout: %s\r\n", badv[i]);
			h_http(&c, in.port, "POST", "/v1/chat/completions", hv, body);
			cr_assert_eq(c.status, 400, "X-Request-Timeout: %s gave %d", badv[i], c.status);
			h_assert_oai_error(c.body, "X-Request-Timeout");
			h_conn_free(&c);
		}
	}

	h_chat_body(body, sizeof(body), "slow [[tpo:tps=20]] [[tpo:tokens=200]]", 1, NULL);
	h_open(&c, in.port, "POST", "/v1/chat/completions", "X-Request-Timeout: 1s\r\n",
	       body, strlen(body));
	cr_assert_eq(c.status, 200);
	while ((r = h_sse_next(&c, ev, sizeof(ev))) == 1) {
		cr_assert_eq(errors, 0, "event after the error event: %s", ev);
		if (!strcmp(ev, "[DONE]")) {
			done = 1;
			continue;
		}
		if (strstr(ev, "\"error\"")) {
			h_assert_oai_error(ev, NULL);
			errors++;
		} else {
			content++;
		}
	}
	cr_assert_eq(r, 0, "the stream did not end cleanly");
	cr_assert_eq(errors, 1);
	cr_assert_not(done);
	cr_assert_gt(content, 0);
	cr_assert_lt(content, 200);
	h_conn_free(&c);
	h_stop(&in);
}

/*
 * An idle front sleeps until its next heartbeat (100 ms): its timer is armed
 * for the earliest request deadline or the heartbeat, not a fixed 20 ms tick
 * (~100 wake-ups in 2 s before). It still wakes for the heartbeat. With a
 * long deadline in flight, a request with a short X-Request-Timeout still
 * ends with 504 and the long one runs to its end. (That the short one ends
 * at its deadline rather than at the next tick is a timing, not asserted
 * here: by hand, 30 ms -> 504 after 31 ms.)
 */
Test(front, idle_front_sleeps_deadlines_still_fire)
{
	pid_t pids[TPO_NSTAGES * TPO_MAX_LANES], front;
	struct h_conn slow, c;
	char body[512];
	long a, b;

	h_start(&in, "idl", FAST_CFG);
	h_wait_all_up(&in);
	h_stage_pids(&in, pids);
	front = pids[TPO_ST_STREAM * TPO_MAX_LANES];
	cr_assert_gt(front, 0);
	h_sleep_ms(300);
	a = sleeps_of(front);
	h_sleep_ms(2000);
	b = sleeps_of(front);
	cr_assert(a >= 0 && b >= 0, "no /proc/%d/status", (int)front);
	cr_assert_leq(b - a, 40, "the idle front woke %ld times in 2 s", b - a);
	cr_assert_geq(b - a, 5, "the idle front woke %ld times in 2 s: no heartbeat?", b - a);

	/* A long deadline in flight, then a short one: the short one ends. */
	h_chat_body(body, sizeof(body), "slow [[tpo:tps=20]] [[tpo:tokens=40]]", 1, NULL);
	h_open(&slow, in.port, "POST", "/v1/chat/completions", "X-Request-Timeout: 60s\r\n",
	       body, strlen(body));
	cr_assert_eq(slow.status, 200);
	h_chat_body(body, sizeof(body), "stall [[tpo:stall]]", 0, NULL);
	h_http(&c, in.port, "POST", "/v1/chat/completions", "X-Request-Timeout: 20ms\r\n", body);
	cr_assert_eq(c.status, 504, "status %d", c.status);
	h_assert_oai_error(c.body, NULL);
	h_conn_free(&c);
	{
		char text[4096], finish[32];
		int64_t usage;
		int n = h_read_stream(&slow, 1, text, sizeof(text), finish, sizeof(finish), &usage);
		cr_assert_eq(n, 40, "the long-deadline stream got %d tokens", n);
	}
	h_conn_free(&slow);
	h_stop(&in);
}

Test(front, client_disconnect_cancels_inference)
{
	struct h_conn c;
	struct tpo_stats st;
	struct tpo_proc_snapshot p;
	char body[512], ev[8192];
	int lane;

	h_start(&in, "disc", FAST_CFG);
	h_stats_attach(&in, &st);
	h_chat_body(body, sizeof(body), "forever [[tpo:tps=20]] [[tpo:tokens=100000]]", 1, NULL);
	h_open(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	cr_assert_eq(c.status, 200);
	lane = h_lane(&c);
	cr_assert_geq(lane, 0);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(h_sse_next(&c, ev, sizeof(ev)), 1);
	h_proc(&st, TPO_STAGE_INFER, lane, &p);
	cr_assert_eq(p.in_flight, 1);
	/* Abrupt close: RST, not a polite FIN. */
	{
		struct linger lg = { 1, 0 };
		setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	h_conn_free(&c);
	cr_assert_eq(h_wait_in_flight(&st, TPO_STAGE_INFER, lane, 0), 0, "infer still runs the abandoned request");
	h_proc(&st, TPO_STAGE_STREAM, 0, &p);
	cr_assert_eq(p.in_flight, 0);
	tpo_stats_close(&st);
	h_stop(&in);
}

/*
 * A client whose request waits (a silent inference) with 16 KiB or more of
 * a next, pipelined request behind it fills the connection's input buffer;
 * the front then reads no more, and its EOF waits behind those bytes. Its
 * close must still cancel the request (not hold the lane until the
 * deadline, a minute here).
 */
Test(front, disconnect_behind_a_full_input_buffer_cancels)
{
	struct tpo_stats st;
	struct tpo_proc_snapshot p;
	static char req[64 * 1024], next[20000];
	char body[512];
	int fd, n;

	h_start(&in, "discfull", "{\"lanes\": 1}");
	h_stats_attach(&in, &st);
	h_chat_body(body, sizeof(body), "A [[tpo:stall]]", 0, NULL);
	memset(next, 'y', sizeof(next));
	n = snprintf(req, sizeof(req), "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
		     "Content-Type: application/json\r\nX-Request-Timeout: 60s\r\n"
		     "Content-Length: %zu\r\n\r\n%s"
		     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
		     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
		     strlen(body), body, sizeof(next));
	memcpy(req + n, next, sizeof(next));
	n += (int)sizeof(next);
	fd = h_connect(in.port);
	cr_assert_eq(h_send_all(fd, req, (size_t)n), 0);
	cr_assert_eq(h_wait_in_flight(&st, TPO_STAGE_INFER, 0, 1), 1, "A never reached infer");
	close(fd);                      /* a plain FIN */
	cr_assert_eq(h_wait_in_flight(&st, TPO_STAGE_INFER, 0, 0), 0,
		     "infer still runs the abandoned request");
	h_proc(&st, TPO_STAGE_STREAM, 0, &p);
	cr_assert_eq(p.in_flight, 0);
	tpo_stats_close(&st);
	h_stop(&in);
}

/* One bad request: its status, an OpenAI error body, and the front still
 * serves a good one afterwards. */
static void bad(int want, const char *raw, size_t n, const char *msg)
{
	struct h_conn c;

	memset(&c, 0, sizeof(c));
	c.fd = h_connect(in.port);
	cr_assert_eq(h_send_all(c.fd, raw, n), 0);
	cr_assert_eq(h_read_head(&c), 0, "no response to: %.200s", raw);
	cr_assert_eq(c.status, want, "status %d, want %d, for: %.200s", c.status, want, raw);
	cr_assert_eq(h_read_body(&c), 0);
	h_assert_oai_error(c.body, msg);
	h_conn_free(&c);
}

static void bad_body(int want, const char *path, const char *body, size_t blen,
		     const char *msg)
{
	static char raw[1 << 16];
	int n;

	if (!blen)
		blen = strlen(body);
	n = snprintf(raw, sizeof(raw), "POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
			 "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n", path, blen);

	cr_assert_lt((size_t)n + blen, sizeof(raw));
	memcpy(raw + n, body, blen);
	bad(want, raw, (size_t)n + blen, msg);
}

static void still_serves(void)
{
	char t[4096], f[32];

	cr_assert_eq(chat_text("still there? [[tpo:tokens=3]]", NULL, t, sizeof(t), f, sizeof(f)), 3);
}

Test(front, bad_inputs)
{
	static char big[8192], raw[8192];
	const char *chat = "/v1/chat/completions";
	int n;

	h_start(&in, "bad",
		"{\"lanes\": 1, \"admission\": {\"max_body_bytes\": 4096, \"max_headers\": 16, "
		"\"header_timeout_ms\": 200}, "
		"\"stages\": {\"infer\": {\"mock\": {\"tokens_per_second\": 0}}}}");

	bad_body(400, chat, "{\"messages\": [", 0, "JSON");
	still_serves();
	bad_body(400, chat, "{\"messages\": \"hi\"}", 0, "messages");
	bad_body(400, chat, "{\"messages\": [{\"role\": \"user\", \"content\": 7}]}", 0, "content");
	bad_body(400, chat, "{\"model\": \"tpo-mock\", \"stream\": \"yes\", \"messages\": []}", 0, "stream");
	bad_body(400, chat, "{\"model\": \"tpo-mock\"}", 0, "messages");
	bad_body(400, chat, "[1, 2]", 0, "object");
	bad_body(400, "/v1/completions", "{\"model\": \"tpo-mock\"}", 0, "prompt");
	still_serves();
	bad_body(400, chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"caf\xc3\"}]}", 0, "UTF-8");
	bad_body(400, chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}", 0, "UTF-8");
	still_serves();

	memset(big, 'x', sizeof(big));
	n = snprintf(big, sizeof(big), "{\"messages\": [{\"role\": \"user\", \"content\": \"");
	big[n] = 'x';
	memcpy(big + sizeof(big) - 4, "\"}]}", 4);
	bad_body(413, chat, big, sizeof(big), NULL);
	still_serves();

	n = snprintf(raw, sizeof(raw), "GET /healthz HTTP/1.1\r\nHost: x\r\n");
	for (int i = 0; i < 40; i++)
		n += snprintf(raw + n, sizeof(raw) - (size_t)n, "X-Filler-%d: %d\r\n", i, i);
	n += snprintf(raw + n, sizeof(raw) - (size_t)n, "\r\n");
	bad(431, raw, (size_t)n, NULL);
	still_serves();

	bad(404, "GET /v2/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 56, "unknown path");
	bad(405, "GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 66, "method");
	bad(405, "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 73, "method");
	still_serves();

	/* Slow headers: half a request head, then nothing. */
	{
		struct h_conn c;
		const char *half = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n";
		memset(&c, 0, sizeof(c));
		c.fd = h_connect(in.port);
		cr_assert_eq(h_send_all(c.fd, half, strlen(half)), 0);
		cr_assert_eq(h_read_head(&c), 0, "no 408 for a stalled head");
		cr_assert_eq(c.status, 408);
		cr_assert_eq(h_read_body(&c), 0);
		h_assert_oai_error(c.body, NULL);
		h_conn_free(&c);
	}
	still_serves();
	h_stop(&in);
}

Test(front, stop_sequence_across_tokens)
{
	static char toks[64][256];
	char prompt[128], more[256], text[8192], full[8192], fin[32], stop[8];
	int64_t usage;
	int n, found = 0;
	size_t cut = 0;

	h_start(&in, "stop", FAST_CFG);
	/* Find a deterministic answer whose 3rd and 4th tokens are long enough
	 * and whose stop string first occurs exactly there. */
	for (int p = 0; p < 40 && !found; p++) {
		struct h_conn c;
		char body[512], ev[8192];
		int k = 0;
		snprintf(prompt, sizeof(prompt), "stop probe %d [[tpo:tokens=8]]", p);
		h_chat_body(body, sizeof(body), prompt, 1, NULL);
		h_open(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
		cr_assert_eq(c.status, 200);
		while (h_sse_next(&c, ev, sizeof(ev)) == 1 && k < 64) {
			struct h_json j;
			if (!strcmp(ev, "[DONE]") || h_json_parse(&j, ev) < 0)
				continue;
			if (h_json_str(&j, "choices.0.delta.content", toks[k], sizeof(toks[k])) >= 0 &&
			    h_json_null(&j, "choices.0.finish_reason"))
				k++;
			h_json_free(&j);
		}
		h_conn_free(&c);
		cr_assert_eq(k, 8);
		if (strlen(toks[2]) < 3 || strlen(toks[3]) < 3)
			continue;
		full[0] = 0;
		for (int i = 0; i < 8; i++)
			strcat(full, toks[i]);
		snprintf(stop, sizeof(stop), "%s%.2s", toks[2] + strlen(toks[2]) - 2, toks[3]);
		cut = strlen(toks[0]) + strlen(toks[1]) + strlen(toks[2]) - 2;
		if (strstr(full, stop) == full + cut)
			found = 1;
	}
	cr_assert(found, "no suitable mock answer found");
	snprintf(more, sizeof(more), "\"stop\":[\"zzzz\",\"%s\"]", stop);
	chat_text(prompt, more, text, sizeof(text), fin, sizeof(fin));
	cr_assert_eq(strlen(text), cut, "stop \"%s\" in \"%s\": got \"%s\"", stop, full, text);
	cr_assert_eq(strncmp(text, full, cut), 0);
	cr_assert_str_eq(fin, "stop");
	n = chat_stream(prompt, more, text, sizeof(text), fin, sizeof(fin), &usage);
	cr_assert_gt(n, 0);
	cr_assert_eq(strlen(text), cut, "streamed: \"%s\"", text);
	cr_assert_eq(strncmp(text, full, cut), 0);
	cr_assert_str_eq(fin, "stop");
	h_stop(&in);
}

Test(front, max_tokens_length)
{
	char text[8192], fin[32];
	int64_t ct, usage;

	h_start(&in, "maxt", FAST_CFG);
	ct = chat_text("limit me", "\"max_tokens\":3", text, sizeof(text), fin, sizeof(fin));
	cr_assert_eq(ct, 3);
	cr_assert_str_eq(fin, "length");
	cr_assert_eq(chat_stream("limit me", "\"max_tokens\":3", text, sizeof(text), fin,
				 sizeof(fin), &usage), 3);
	cr_assert_eq(usage, 3);
	cr_assert_str_eq(fin, "length");
	/* A marker asking for more than max_tokens is cut too. */
	ct = chat_text("limit me [[tpo:tokens=10]]", "\"max_completion_tokens\":4", text,
		       sizeof(text), fin, sizeof(fin));
	cr_assert_eq(ct, 4);
	cr_assert_str_eq(fin, "length");
	h_stop(&in);
}

/*
 * An answer that ends at the max_tokens the model was asked for ends there
 * by itself: post's END is not "early", and the front sends no CANCEL down
 * the lane for it (three wake-ups saved per length-limited answer).
 */
static int ring_from(struct tpo_stats *st, int stage, struct tpo_ring_snapshot *out)
{
	for (int i = 0; i < TPO_MAX_RINGS; i++)
		if (tpo_stats_read_ring(st, i, out) == 0 && (int)out->from_stage == stage)
			return i;
	return -1;
}

Test(front, length_at_asked_max_sends_no_cancel)
{
	struct tpo_stats st;
	struct tpo_ring_snapshot r;
	char text[8192], fin[32];
	int64_t usage;
	uint64_t end;

	h_start(&in, "nocan",
		"{\"lanes\": 1, \"stages\": {\"infer\": {\"mock\": {\"tokens_per_second\": 0}}}}");
	h_stats_attach(&in, &st);
	cr_assert_eq(chat_stream("limit me [[tpo:tokens=10]]", "\"max_tokens\":3", text,
				 sizeof(text), fin, sizeof(fin), &usage), 3);
	cr_assert_str_eq(fin, "length");
	cr_assert_eq(chat_text("then this [[tpo:tokens=2]]", NULL, text, sizeof(text), fin,
			       sizeof(fin)), 2);
	/* rag publishes its input ring's counters every ~50 ms of activity. */
	end = h_now_ms() + H_HANG_MS;
	do {
		cr_assert_geq(ring_from(&st, TPO_STAGE_STREAM, &r), 0);
		if (r.dequeued >= 2 && r.enqueued == r.dequeued)
			break;
		h_sleep_ms(20);
	} while (h_now_ms() < end);
	cr_assert_eq(r.enqueued, 2, "records sent down the lane for two requests: %llu",
		     (unsigned long long)r.enqueued);
	tpo_stats_close(&st);
	h_stop(&in);
}

Test(front, utf8_split_tokens)
{
	char text[8192], fin[32];
	const char *want = " caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x9a\x80"
			   " caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x9a\x80";
	int64_t usage;

	h_start(&in, "utf8", FAST_CFG);
	chat_text("unicode [[tpo:utf8]] [[tpo:tokens=4]]", NULL, text, sizeof(text), fin, sizeof(fin));
	cr_assert(tpo_utf8_valid(text, strlen(text)));
	cr_assert_str_eq(text, want);
	/* Streamed, every chunk is valid UTF-8 on its own (h_read_stream). */
	chat_stream("unicode [[tpo:utf8]] [[tpo:tokens=4]]", NULL, text, sizeof(text), fin,
		    sizeof(fin), &usage);
	cr_assert_str_eq(text, want);
	h_stop(&in);
}

Test(front, injected_error_before_streaming)
{
	struct h_conn c;
	char body[512];

	h_start(&in, "err", FAST_CFG);
	h_chat_body(body, sizeof(body), "fail [[tpo:error=503]]", 1, NULL);
	h_http(&c, in.port, "POST", "/v1/chat/completions", NULL, body);
	cr_assert_eq(c.status, 503, "status %d", c.status);
	h_assert_oai_error(c.body, "injected");
	h_conn_free(&c);
	h_chat_body(body, sizeof(body), "fail [[tpo:error=429]]", 0, NULL);
	h_http(&c, in.port, "POST", "/v1/chat/completions", NULL, body);
	cr_assert_eq(c.status, 429);
	h_assert_oai_error(c.body, NULL);
	h_conn_free(&c);
	still_serves();
	h_stop(&in);
}

/* Reads one response (head + body) from a kept-alive connection. */
static void next_response(struct h_conn *c)
{
	char *rest = NULL;
	size_t rest_len = 0, rest_cap = 0;

	/* Bytes after the previous response belong to this one. */
	if (c->raw_len)
		h_buf_add(&rest, &rest_len, &rest_cap, c->raw, c->raw_len);
	free(c->body);
	free(c->raw);
	{
		int fd = c->fd;
		memset(c, 0, sizeof(*c));
		c->fd = fd;
	}
	if (rest_len)
		h_buf_add(&c->raw, &c->raw_len, &c->raw_cap, rest, rest_len);
	free(rest);
	cr_assert_eq(h_read_head(c), 0, "no response head");
	cr_assert_eq(h_read_body(c), 0, "incomplete body");
	if (!c->body)
		h_buf_add(&c->body, &c->body_len, &c->body_cap, "", 0);
}

Test(front, keep_alive_and_pipelining)
{
	struct h_conn c;
	char req[8192], b1[512], b2[512], b3[512], ev[8192];
	char text[3][4096], fin[32];
	int n;

	h_start(&in, "ka", FAST_CFG);
	h_chat_body(b1, sizeof(b1), "first [[tpo:tokens=3]]", 0, NULL);
	h_chat_body(b2, sizeof(b2), "second [[tpo:tps=50]] [[tpo:tokens=4]]", 1, NULL);
	h_chat_body(b3, sizeof(b3), "third [[tpo:tokens=2]]", 0, NULL);
	/* Three requests in one write: answers must come back in order. */
	n = snprintf(req, sizeof(req),
		     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s"
		     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s"
		     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s",
		     strlen(b1), b1, strlen(b2), b2, strlen(b3), b3);
	memset(&c, 0, sizeof(c));
	c.fd = h_connect(in.port);
	cr_assert_eq(h_send_all(c.fd, req, (size_t)n), 0);
	next_response(&c);
	cr_assert_eq(c.status, 200);
	cr_assert(strstr(c.body, "\"completion_tokens\":3"), "%s", c.body);
	next_response(&c);
	cr_assert_eq(c.status, 200);
	cr_assert(strstr(c.body, "data: [DONE]"), "%s", c.body);
	next_response(&c);
	cr_assert_eq(c.status, 200);
	cr_assert(strstr(c.body, "\"completion_tokens\":2"), "%s", c.body);

	/* Then one at a time on the same connection, streaming in between. */
	for (int i = 0; i < 3; i++) {
		const char *b = i == 1 ? b2 : i == 0 ? b1 : b3;
		n = snprintf(req, sizeof(req), "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
			     "Content-Length: %zu\r\n\r\n%s", strlen(b), b);
		cr_assert_eq(h_send_all(c.fd, req, (size_t)n), 0);
		next_response(&c);
		cr_assert_eq(c.status, 200);
		snprintf(text[i], sizeof(text[i]), "%s", c.body);
	}
	cr_assert(strstr(text[0], "\"completion_tokens\":3"));
	cr_assert(strstr(text[1], "data: [DONE]"));
	cr_assert(strstr(text[2], "\"completion_tokens\":2"));
	(void)ev;
	(void)fin;
	h_conn_free(&c);
	still_serves();
	h_stop(&in);
}

Test(front, rag_context_and_prompt_budget)
{
	char cfg[1024], ctx[160], text[8192], fin[32], big[1024];
	struct h_conn c;
	FILE *f;
	int64_t ct;

	snprintf(ctx, sizeof(ctx), "/tmp/tpo-it.ctx%d.txt", (int)getpid());
	f = fopen(ctx, "w");
	cr_assert_not_null(f);
	/* The marker in the retrieved context reaches the model. */
	fputs("Retrieved fact: [[tpo:tokens=3]] ", f);
	for (int i = 0; i < 100; i++)
		fputs("filler text of the context document. ", f);
	fclose(f);
	snprintf(cfg, sizeof(cfg),
		 "{\"lanes\": 1, \"stages\": {\"infer\": {\"mock\": {\"tokens_per_second\": 0}},"
		 " \"rag\": {\"context_file\": \"%s\"},"
		 " \"assemble\": {\"template\": \"Context: {context}\\nConversation: {messages}\","
		 " \"max_prompt_bytes\": 512}}}", ctx);
	h_start(&in, "rag", cfg);
	/* Context longer than the budget is trimmed, the request served. */
	ct = chat_text("what do you know?", NULL, text, sizeof(text), fin, sizeof(fin));
	cr_assert_eq(ct, 3, "the context's marker did not reach the model");
	/* Messages alone over the budget: 413. */
	memset(big, 'm', 600);
	big[600] = 0;
	{
		char body[2048];
		h_chat_body(body, sizeof(body), big, 0, NULL);
		h_http(&c, in.port, "POST", "/v1/chat/completions", NULL, body);
	}
	cr_assert_eq(c.status, 413, "status %d: %s", c.status, c.body);
	h_assert_oai_error(c.body, "prompt");
	h_conn_free(&c);
	still_serves();
	h_stop(&in);
	unlink(ctx);
}

Test(front, large_non_streaming_response)
{
	char text[1], fin[32];
	struct h_conn c;
	struct h_json j;
	static char content[1 << 20];
	int n;

	(void)text;
	h_start(&in, "large",
		"{\"lanes\": 1, \"stages\": {\"infer\": {\"mock\": {\"tokens_per_second\": 0}},"
		" \"post\": {\"max_tokens\": 100000}}}");
	/* ~40000 tokens: a body far larger than any fixed response buffer. */
	chat(&c, "a long answer [[tpo:tokens=40000]]", 0, NULL, NULL);
	cr_assert_eq(c.status, 200, "status %d: %.300s", c.status, c.body);
	cr_assert_eq(h_json_parse(&j, c.body), 0);
	n = h_json_str(&j, "choices.0.message.content", content, sizeof(content));
	cr_assert_gt(n, 200000, "content of %d bytes", n);
	cr_assert_eq(h_json_int(&j, "usage.completion_tokens"), 40000);
	cr_assert_gt(h_json_str(&j, "choices.0.finish_reason", fin, sizeof(fin)), 0);
	cr_assert_str_eq(fin, "stop");
	h_json_free(&j);
	h_conn_free(&c);
	h_stop(&in);
}

/*
 * A non-streamed answer larger than a response may carry (the HTTP layer's
 * 4 MiB output bound) is a clean 500 saying to stream, not a 200 cut short;
 * its inference is cancelled and the front serves the next request.
 */
Test(front, non_streamed_answer_over_the_bound_is_an_error)
{
	struct h_conn c;
	struct tpo_stats st;

	h_start(&in, "huge",
		"{\"lanes\": 1, \"stages\": {\"infer\": {\"mock\": {\"tokens_per_second\": 0}},"
		" \"post\": {\"max_tokens\": 1000000}}}");
	h_stats_attach(&in, &st);
	/* 10^6 mock tokens, ~5.5 bytes each on average: over 5 MiB of text. */
	chat(&c, "a huge answer [[tpo:tokens=1000000]]", 0, NULL, NULL);
	cr_assert_eq(c.status, 500, "status %d (%zu bytes)", c.status, c.body_len);
	h_assert_oai_error(c.body, "stream");
	h_conn_free(&c);
	cr_assert_eq(h_wait_in_flight(&st, TPO_STAGE_INFER, 0, 0), 0, "the answer still runs");
	chat(&c, "small [[tpo:tokens=3]]", 0, NULL, NULL);
	cr_assert_eq(c.status, 200);
	h_conn_free(&c);
	tpo_stats_close(&st);
	h_stop(&in);
}

/*
 * Cancellation must not wait behind queued work: with every inference slot
 * taken (max_inflight 1) and another request queued, the client of the
 * running request hangs up; its job must end so the queued one runs.
 *
 * Known to fail until stagebin/infer.c reads CANCEL records queued behind
 * PROMPTs it cannot take yet (it stops reading its input while full, so the
 * cancel waits for a job that never ends).
 */
Test(front, client_disconnect_cancels_when_infer_is_full)
{
	struct h_conn a, b;
	struct tpo_stats st;
	char body[512];

	h_start(&in, "discfull",
		"{\"lanes\": 1, \"stages\": {\"infer\": {\"max_inflight\": 1}}}");
	h_stats_attach(&in, &st);
	slow_stream(&a, "A [[tpo:tps=20]] [[tpo:tokens=100000]]");
	h_chat_body(body, sizeof(body), "B [[tpo:tokens=3]]", 0, NULL);
	/* B's deadline keeps a failure short (504 instead of a hang). */
	h_begin(&b, in.port, "POST", "/v1/chat/completions", "X-Request-Timeout: 5s\r\n", body,
		strlen(body));
	cr_assert_eq(h_wait_in_flight(&st, TPO_STAGE_STREAM, 0, 2), 2);
	h_conn_free(&a);
	cr_assert_eq(h_read_head(&b), 0);
	cr_assert_eq(h_read_body(&b), 0);
	in.busy_ok = b.status != 200;   /* A may still run in infer */
	cr_assert_eq(b.status, 200, "B behind a cancelled request: status %d %s", b.status,
		     b.body);
	h_conn_free(&b);
	tpo_stats_close(&st);
	h_stop(&in);
}

/* post ends an answer early (a stop sequence here: most of the mock's words
 * hold an "e"): the client gets the end at once, and the model stops
 * working. (post's max_tokens cap is sent to the model, which stops there
 * by itself.) */
Test(front, early_end_in_post_stops_inference)
{
	struct h_conn c;
	struct tpo_stats st;
	char body[512];
	int lane;

	h_start(&in, "early",
		"{\"lanes\": 1, \"stages\": {\"infer\": {\"mock\": {\"tokens_per_second\": 0}}}}");
	h_stats_attach(&in, &st);
	h_chat_body(body, sizeof(body), "long [[tpo:tps=20]] [[tpo:tokens=100000]]", 0,
		    "\"stop\":\"e\"");
	h_http(&c, in.port, "POST", "/v1/chat/completions", NULL, body);
	cr_assert_eq(c.status, 200, "%s", c.body ? c.body : "");
	cr_assert(strstr(c.body, "\"finish_reason\":\"stop\""), "%s", c.body);
	lane = h_lane(&c);
	h_conn_free(&c);
	cr_assert_eq(h_wait_in_flight(&st, TPO_STAGE_INFER, lane, 0), 0, "infer still generates an answer post has ended");
	tpo_stats_close(&st);
	h_stop(&in);
}

/*
 * A token longer than one SSE chunk can carry (the echo plugin answers a
 * 40,001-byte word as one token) is streamed as several chunks, each cut
 * between UTF-8 characters and valid on its own, and together the word
 * arrives whole and once.
 */
Test(front, long_token_streams_in_pieces)
{
	enum { CHARS = 20000 };
	static char cfg[1024], ev[1 << 17], s[1 << 16], text[1 << 17];
	char build[512], *word, *body;
	size_t wl = 1 + 2 * CHARS, tl = 0, biggest = 0;
	int chunks = 0, done = 0, r;
	struct h_conn c;

	if (!realpath(h_build(), build))
		cr_assert_fail("no build dir %s", h_build());
	snprintf(cfg, sizeof(cfg),
		 "{\"lanes\": 1, \"stages\": {\"assemble\": {\"max_prompt_bytes\": 60000},"
		 " \"infer\": {\"worker\": \"plugin\", \"plugin\": {\"path\": \"%s/plugins/echo.so\","
		 " \"options\": \"tokens=4\"}}}}", build);
	h_start(&in, "longtok", cfg);
	/* "a" then 20000 two-byte characters: a cut at an even byte offset
	 * would fall inside a character. */
	word = malloc(wl + 1);
	body = malloc(wl + 256);
	cr_assert(word && body);
	word[0] = 'a';
	for (size_t i = 0; i < CHARS; i++)
		memcpy(word + 1 + 2 * i, "\xc3\xa9", 2);
	word[wl] = 0;
	h_chat_body(body, wl + 256, word, 1, NULL);
	h_open(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	cr_assert_eq(c.status, 200, "status %d", c.status);
	while ((r = h_sse_next(&c, ev, sizeof(ev))) == 1) {
		struct h_json j;
		int n;

		if (!strcmp(ev, "[DONE]")) {
			done = 1;
			continue;
		}
		cr_assert_eq(h_json_parse(&j, ev), 0, "event is not JSON: %.200s", ev);
		cr_assert_lt(h_json_at(&j, "error"), 0, "error event: %.300s", ev);
		if (h_json_size(&j, "choices") == 1 &&
		    h_json_null(&j, "choices.0.finish_reason")) {
			n = h_json_str(&j, "choices.0.delta.content", s, sizeof(s));
			cr_assert_geq(n, 0, "no content in %.200s", ev);
			cr_assert(tpo_utf8_valid(s, (size_t)n), "chunk %d is not valid UTF-8 alone", chunks);
			cr_assert_lt(tl + (size_t)n, sizeof(text));
			memcpy(text + tl, s, (size_t)n);
			tl += (size_t)n;
			if ((size_t)n > biggest)
				biggest = (size_t)n;
			chunks++;
		}
		h_json_free(&j);
	}
	text[tl] = 0;
	cr_assert_eq(r, 0, "stream broke off");
	cr_assert(done, "no [DONE]");
	cr_assert_lt(biggest, wl, "the word came in one chunk of %zu bytes", biggest);
	cr_assert_geq(chunks, 3, "%d chunks", chunks);
	cr_assert(strstr(text, word), "the word did not arrive whole (%zu bytes of text)", tl);
	cr_assert_null(strstr(strstr(text, word) + 1, word), "the word arrived twice");
	free(word);
	free(body);
	h_conn_free(&c);
	h_stop(&in);
}
