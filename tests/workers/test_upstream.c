/*
 * test_upstream.c — the HTTP model workers end to end: the real supervisor
 * with worker openai / llamacpp / tgi / anthropic pointed at
 * tests/workers/badserver.js, a loopback server that misbehaves on command.
 * Golden streams (tests/workers/golden/) are sent a few bytes at a time.
 *
 * Endpoints are http://127.0.0.1:PORT, served by tpo's own HTTP/1.1 client
 * (workers/h1.h); test_upstream_curl.c includes this file with UP_HOST
 * "localhost", a host name, which libcurl serves: every test runs through
 * both clients.
 */
#include "tests/integration/harness.h"
#include "tests/lib/proc.h"

#ifndef UP_HOST
#define UP_HOST "127.0.0.1"
#define UP_VIA_CURL 0
#endif

#define CFG \
	"{\"lanes\": 1, \"restart\": {\"base_ms\": 10, \"cap_ms\": 50}," \
	" \"stages\": {\"infer\": {\"worker\": \"%s\"," \
	"  \"endpoints\": [{\"url\": \"http://" UP_HOST ":%d%s\"%s}]," \
	"  \"timeouts\": {\"connect_ms\": 1000, \"first_token_ms\": %d, \"idle_ms\": %d," \
	"                \"total_ms\": 20000}," \
	"  \"retries\": {\"max_attempts\": 2, \"base_ms\": 1, \"cap_ms\": 5}," \
	"  \"breaker\": {\"failures\": %d, \"open_ms\": %d}}%s}}"

static struct h_inst in;
/* first_token_ms and idle_ms; a test whose point is not a timeout raises
 * them, so a loaded machine cannot turn its cancel into a timeout. */
static int tmo_ms = 1500;
/* More of "stages" after infer (", \"post\": {..}"), for one test. */
static const char *stages_more = "";
/* breaker.open_ms; a test of the half-open state shortens it so that it
 * need not wait long for the interval to pass. */
static int open_ms = 60000;
static pid_t srv_pid;
static int srv_port;

static void srv_stop(void)
{
	if (srv_pid > 0) {
		kill(srv_pid, SIGTERM);
		waitpid(srv_pid, NULL, 0);
		srv_pid = 0;
	}
	h_cleanup();
}

TestSuite(upstream, .fini = srv_stop, .timeout = 120);

static void srv_start(void)
{
	int pfd[2];
	char buf[64] = { 0 };
	size_t n = 0;

	cr_assert_eq(pipe(pfd), 0);
	srv_pid = fork();
	cr_assert_geq(srv_pid, 0);
	if (srv_pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		dup2(pfd[1], 1);
		close(pfd[0]);
		execlp("node", "node", "tests/workers/badserver.js", (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	while (n < sizeof(buf) - 1 && !strchr(buf, '\n')) {
		ssize_t r = read(pfd[0], buf + n, sizeof(buf) - 1 - n);
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	close(pfd[0]);
	cr_assert(sscanf(buf, "PORT %d", &srv_port) == 1, "badserver did not start: '%s'", buf);
}

static void start_url(const char *tag, const char *worker, const char *url_tail,
		      const char *ep_more, int failures, const char *env)
{
	static char cfg[2048];

	srv_start();
	snprintf(cfg, sizeof(cfg), CFG, worker, srv_port, url_tail, ep_more ? ep_more : "",
		 tmo_ms, tmo_ms, failures, open_ms, stages_more);
	h_start_ex(&in, tag, cfg, env, 1);
	h_register(&in);
}

static void start(const char *tag, const char *worker, const char *ep_more, int failures,
		  const char *env)
{
	start_url(tag, worker, "", ep_more, failures, env);
}

static void copy_str(char *dst, size_t cap, const char *src)
{
	size_t n = strlen(src);

	if (n >= cap)
		n = cap - 1;
	memcpy(dst, src, n);
	dst[n] = 0;
}

/* A streamed chat request; content into text, returns content chunks. */
static int chat_stream(const char *content, char *text, size_t cap, char *finish)
{
	struct h_conn c;
	char body[1024];
	int64_t usage;
	int n;

	h_chat_body(body, sizeof(body), content, 1, NULL);
	h_open(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	cr_assert_eq(c.status, 200, "status %d", c.status);
	n = h_read_stream(&c, 1, text, cap, finish, 32, &usage);
	h_conn_free(&c);
	return n;
}

/* A non-streamed chat request: status, body in out. */
static int chat_once(const char *content, char *out, size_t cap)
{
	struct h_conn c;
	char body[1024];
	int status;

	h_chat_body(body, sizeof(body), content, 0, NULL);
	h_http(&c, in.port, "POST", "/v1/chat/completions", NULL, body);
	status = c.status;
	copy_str(out, cap, c.body);
	h_conn_free(&c);
	return status;
}

/* A streamed request that fails after tokens: content events and errors. */
static void chat_broken(const char *content, int *ncontent, int *errors, char *last_err,
			size_t cap)
{
	struct h_conn c;
	char body[1024], ev[1 << 16];
	int r;

	*ncontent = *errors = 0;
	h_chat_body(body, sizeof(body), content, 1, NULL);
	h_open(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	if (c.status != 200) {
		/* Failed before streaming began: a plain HTTP error. */
		cr_assert_eq(h_read_body(&c), 0);
		h_assert_oai_error(c.body, NULL);
		copy_str(last_err, cap, c.body);
		*errors = 1;
		h_conn_free(&c);
		return;
	}
	while ((r = h_sse_next(&c, ev, sizeof(ev))) == 1) {
		cr_assert_eq(*errors, 0, "event after the error: %s", ev);
		cr_assert_str_neq(ev, "[DONE]", "[DONE] after a failure");
		if (strstr(ev, "\"error\"")) {
			h_assert_oai_error(ev, NULL);
			copy_str(last_err, cap, ev);
			(*errors)++;
		} else if (strstr(ev, "\"content\"")) {
			(*ncontent)++;
		}
	}
	cr_assert_eq(r, 0, "stream did not end cleanly");
	h_conn_free(&c);
}

/* GET /WHAT?key=KEY of the scripted server: its {"WHAT":N}. */
static int srv_int(const char *what, const char *key)
{
	struct h_conn c;
	char path[128], fmt[64];
	int n;

	snprintf(path, sizeof(path), "/%s?key=%s", what, key);
	snprintf(fmt, sizeof(fmt), "{\"%s\":%%d}", what);
	h_http(&c, srv_port, "GET", path, NULL, NULL);
	cr_assert(sscanf(c.body, fmt, &n) == 1, "%s", c.body);
	h_conn_free(&c);
	return n;
}

static int srv_count(const char *key)
{
	return srv_int("count", key);
}

static void srv_last(char *out, size_t cap)
{
	struct h_conn c;

	h_http(&c, srv_port, "GET", "/last", NULL, NULL);
	copy_str(out, cap, c.body);
	h_conn_free(&c);
}

/*
 * The last request the upstream saw (into out) was a non-streamed one
 * holding word, with the API key and JSON headers and no streaming Accept.
 */
static void assert_sent_plain(char *out, size_t cap, const char *word, const char *key)
{
	char auth[96];

	srv_last(out, cap);
	snprintf(auth, sizeof(auth), "\"authorization\":\"Bearer %s\"", key);
	cr_assert(strstr(out, word), "%s", out);
	cr_assert(strstr(out, "\"stream\":false"), "%s", out);
	cr_assert_null(strstr(out, "event-stream"), "the old Accept header was sent: %s", out);
	cr_assert(strstr(out, auth), "%s", out);
	cr_assert(strstr(out, "\"content-type\":\"application/json\""), "%s", out);
}

/* The endpoint slot of lane 0, endpoint 0. */
/* The snapshot of lane 0's first endpoint. Its slot appears once the infer
 * process has loaded libcurl and made its worker: wait for it. */
/* The snapshot of lane 0's endpoint i (its slot appears with the worker). */
static void ep_snap_i(const struct tpo_stats *st, int i, struct tpo_ep_snapshot *e)
{
	uint64_t end = h_now_ms() + H_HANG_MS;

	do {
		for (int k = 0; k < TPO_MAX_ENDPOINTS; k++)
			if (tpo_stats_read_ep(st, k, e) == 0 && e->lane == 0 &&
			    e->index == (uint32_t)i)
				return;
		h_sleep_ms(1);
	} while (h_now_ms() < end);
	cr_assert_fail("no endpoint slot %d for lane 0", i);
}

static void ep_snap(const struct tpo_stats *st, struct tpo_ep_snapshot *e)
{
	ep_snap_i(st, 0, e);
}

/*
 * Opens the breaker (breaker.failures 2: one request whose two attempts get
 * HTTP 500) and waits until its open interval has passed. The endpoint
 * turns half-open only when a request asks for it, so what is waited for is
 * the infer stage's clock (CLOCK_MONOTONIC, as tpo_now_ns) passing the
 * moment it opened plus open_ms. The snapshot of the open state into e.
 */
static void breaker_open_and_wait(const struct tpo_stats *st, struct tpo_ep_snapshot *e)
{
	char out[8192];
	uint64_t end = h_now_ms() + H_HANG_MS;

	cr_assert_eq(chat_once("[[srv:status=500]]", out, sizeof(out)), 502, "%s", out);
	ep_snap(st, e);
	cr_assert_eq(e->state, TPO_EP_OPEN, "two failures did not open the breaker");
	while (tpo_now_ns() <= e->state_since_ns + (uint64_t)open_ms * 1000000ull &&
	       h_now_ms() < end)
		h_sleep_ms(10);
}

static void srv_release(const char *key)
{
	struct h_conn c;
	char path[128];

	snprintf(path, sizeof(path), "/release?key=%s", key);
	h_http(&c, srv_port, "GET", path, NULL, NULL);
	cr_assert_eq(c.status, 200);
	h_conn_free(&c);
}

Test(upstream, openai_golden_split_and_nonstream_and_auth)
{
	char text[4096], finish[32], out[8192];
	int n;

	start("oa", "openai", ", \"api_key_env\": \"TPO_TEST_KEY\", \"model\": \"up-model\"",
	      100, "TPO_TEST_KEY=sk-test-123");
	n = chat_stream("a [[srv:golden=openai_chat.sse]] [[srv:chunk=1]]", text, sizeof(text),
			finish);
	cr_assert_str_eq(text, "Hello wor\xc3\xa9ld!");
	cr_assert_eq(n, 3);
	cr_assert_str_eq(finish, "stop");
	srv_last(out, sizeof(out));
	cr_assert(strstr(out, "\"authorization\":\"Bearer sk-test-123\""), "%s", out);
	cr_assert(strstr(out, "\"model\":\"up-model\""), "%s", out);
	cr_assert(strstr(out, "\"stream\":true"), "%s", out);
	cr_assert(strstr(out, "\"path\":\"/v1/chat/completions\""), "%s", out);

	cr_assert_eq(chat_once("plain", out, sizeof(out)), 200, "%s", out);
	cr_assert(strstr(out, "\"content\":\"tok0 tok1 tok2\""), "%s", out);
	srv_last(out, sizeof(out));
	cr_assert(strstr(out, "\"stream\":false"), "%s", out);
	h_stop(&in);
}

/*
 * Chunks of one shape (the same bytes but for the token's text) skip the
 * JSON parser (tpo_up_shape_token): escapes, raw UTF-8, an empty text, a
 * changed suffix and the finish all come out as the parser gives them; a
 * text that would make the chunk invalid JSON (a bare quote, bad UTF-8, a
 * control character, a closing quote escaped) is still an error.
 */
Test(upstream, openai_same_shape_chunks)
{
	static const char *const bad[] = { "quote", "utf8", "ctrl", "escape" };
	char text[4096], finish[32], err[8192], prompt[96];
	int n, content, errors;

	start("os", "openai", NULL, 100, NULL);
	n = chat_stream("[[srv:golden=openai_same_shape.sse]]", text, sizeof(text), finish);
	cr_assert_str_eq(text, "Hello w\xc3\xb6rld, \"q\"\n\xc3\xa9x!");
	cr_assert_eq(n, 6);
	cr_assert_str_eq(finish, "stop");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(prompt, sizeof(prompt), "[[srv:golden=openai_shape_%s.sse]]", bad[i]);
		chat_broken(prompt, &content, &errors, err, sizeof(err));
		cr_assert_eq(content, 2, "%s: %d tokens", bad[i], content);
		cr_assert_eq(errors, 1, "%s", bad[i]);
		cr_assert(strstr(err, "invalid JSON"), "%s: %s", bad[i], err);
	}
	h_stop(&in);
}

/*
 * A server slicing UTF-16 text (JavaScript's, say) may split a surrogate
 * pair between two chunks, each half an escape of its own. The halves are
 * joined, in the same-shape path and the parsed one alike; a half never
 * completed becomes U+FFFD, as an unpaired one does, at once or when the
 * answer ends: no text around them is lost (it was, when an unpaired
 * escape made the whole string unreadable).
 */
Test(upstream, openai_surrogate_pair_split_between_chunks)
{
	char text[4096], finish[32], out[8192];

	start("sp", "openai", NULL, 100, NULL);
	chat_stream("[[srv:golden=openai_split_surrogates.sse]]", text, sizeof(text), finish);
	cr_assert_str_eq(text, "a\xf0\x9f\x98\x80" "b\xf0\x9f\x98\x81" "x\xef\xbf\xbd" "y"
			 "\xef\xbf\xbd" "z\xef\xbf\xbd", "%s", text);
	cr_assert_str_eq(finish, "stop");
	cr_assert_eq(chat_once("[[srv:json=openai_lone_surrogate.json]]", out, sizeof(out)), 200);
	cr_assert(strstr(out, "\"content\":\"hi \xef\xbf\xbd\""), "%s", out);
	h_stop(&in);
}

Test(upstream, openai_completions_golden_length)
{
	struct h_conn c;
	char text[4096], finish[32];
	const char *body = "{\"model\":\"m\",\"stream\":true,"
			   "\"stream_options\":{\"include_usage\":true},\"prompt\":"
			   "\"[[srv:golden=openai_completion.sse]] [[srv:chunk=2]]\"}";
	int64_t usage;

	start("oc", "openai", NULL, 100, NULL);
	h_open(&c, in.port, "POST", "/v1/completions", NULL, body, strlen(body));
	cr_assert_eq(c.status, 200);
	h_read_stream(&c, 0, text, sizeof(text), finish, sizeof(finish), &usage);
	cr_assert_str_eq(text, "Once upon a time");
	cr_assert_str_eq(finish, "length");
	h_conn_free(&c);
	h_stop(&in);
}

/* A 200 whose body is no completion (vLLM's {"object":"error"}, a
 * framework's {"detail":..}, {}) is an error naming what it said, never an
 * empty answer; a completion with "error": null is a completion. */
Test(upstream, openai_200_without_a_completion)
{
	char out[8192];

	start("nc", "openai", NULL, 100, NULL);
	cr_assert_eq(chat_once("[[srv:json=openai_error_object.json]]", out, sizeof(out)), 502,
		     "%s", out);
	h_assert_oai_error(out, "still loading");
	cr_assert_eq(chat_once("[[srv:json=openai_detail.json]]", out, sizeof(out)), 502, "%s", out);
	h_assert_oai_error(out, "Not Found");
	cr_assert_eq(chat_once("[[srv:json=openai_empty_object.json]]", out, sizeof(out)), 502,
		     "%s", out);
	h_assert_oai_error(out, "no choices");
	cr_assert_eq(chat_once("[[srv:json=openai_error_null.json]]", out, sizeof(out)), 200,
		     "%s", out);
	cr_assert(strstr(out, "\"content\":\"fine\""), "%s", out);
	h_stop(&in);
}

/* A non-streamed "plain" chat with more (NULL: nothing) in its body,
 * answered 200; out gets the request the upstream received for it. */
static void sent_upstream(const char *more, char *out, size_t cap)
{
	char body[1024];
	struct h_conn c;

	h_chat_body(body, sizeof(body), "plain", 0, more);
	h_http(&c, in.port, "POST", "/v1/chat/completions", NULL, body);
	cr_assert_eq(c.status, 200, "%s", c.body);
	h_conn_free(&c);
	srv_last(out, cap);
}

/* post's max_tokens caps what the model is asked for: a model that answers
 * whole is one record to post, which cannot count its tokens. */
Test(upstream, post_cap_reaches_the_model)
{
	char out[8192];

	stages_more = ", \"post\": {\"max_tokens\": 2}";
	start("pc", "openai", NULL, 100, NULL);
	stages_more = "";
	sent_upstream(NULL, out, sizeof(out));
	cr_assert(strstr(out, "\"max_tokens\":2"), "no cap sent: %s", out);
	sent_upstream("\"max_tokens\":1", out, sizeof(out));
	cr_assert(strstr(out, "\"max_tokens\":1"), "the smaller ask not sent: %s", out);
	sent_upstream("\"max_tokens\":50", out, sizeof(out));
	cr_assert(strstr(out, "\"max_tokens\":2"), "over the cap sent: %s", out);
	h_stop(&in);
}

Test(upstream, openai_failures)
{
	char out[8192], err[8192];
	int content, errors;
	struct tpo_stats st;
	struct tpo_ep_snapshot e;

	start("of", "openai", NULL, 100, NULL);
	h_stats_attach(&in, &st);

	/* 4xx passes through with its status and message, no retry. */
	cr_assert_eq(chat_once("[[srv:status=404]]", out, sizeof(out)), 404, "%s", out);
	h_assert_oai_error(out, "injected status 404");

	/* 5xx: retried, then 502 naming the upstream failure. */
	cr_assert_eq(chat_once("[[srv:status=500]]", out, sizeof(out)), 502, "%s", out);
	h_assert_oai_error(out, "HTTP 500");
	cr_assert(strstr(out, "2 attempts"), "%s", out);

	/* 429 with Retry-After, then success: the retry is invisible. */
	cr_assert_eq(chat_once("[[srv:flaky=1:429:k1]]", out, sizeof(out)), 200, "%s", out);
	cr_assert_eq(srv_count("k1"), 2);
	cr_assert_eq(chat_once("[[srv:flaky=1:503:k2]]", out, sizeof(out)), 200, "%s", out);
	cr_assert_eq(srv_count("k2"), 2);

	/* No first token in time: 504. So for headers that come too late. */
	cr_assert_eq(chat_once("[[srv:stall]]", out, sizeof(out)), 504, "%s", out);
	h_assert_oai_error(out, "first_token_ms");
	cr_assert_eq(chat_once("[[srv:slow_headers=1500]]", out, sizeof(out)), 504, "%s", out);

	/* Garbage and enormous lines before any token: retried, then 502. */
	cr_assert_eq(chat_once("x [[srv:garbage]]", out, sizeof(out)), 200, "%s", out);
	chat_broken("[[srv:garbage]]", &content, &errors, err, sizeof(err));
	cr_assert_eq(content, 1);
	cr_assert_eq(errors, 1);
	cr_assert(strstr(err, "invalid JSON"), "%s", err);
	chat_broken("[[srv:huge]]", &content, &errors, err, sizeof(err));
	cr_assert_eq(content, 0);
	cr_assert_eq(errors, 1, "%s", err);

	/* Failures after tokens: one error event, nothing after it. */
	chat_broken("[[srv:reset_after=2]]", &content, &errors, err, sizeof(err));
	cr_assert_eq(content, 2);
	cr_assert_eq(errors, 1);
	cr_assert(strstr(err, "after 2 tokens"), "%s", err);
	chat_broken("[[srv:stall_after=3]]", &content, &errors, err, sizeof(err));
	cr_assert_eq(content, 3);
	cr_assert_eq(errors, 1);
	cr_assert(strstr(err, "idle_ms"), "%s", err);

	ep_snap(&st, &e);
	cr_assert_eq(e.state, TPO_EP_CLOSED);
	cr_assert_eq(e.in_flight, 0);
	cr_assert_geq(e.requests, 10);
	cr_assert_geq(e.errors, 5);
	tpo_stats_close(&st);
	h_stop(&in);
}

Test(upstream, breaker_opens_and_client_disconnect_aborts)
{
	char out[8192], body[512];
	struct tpo_stats st;
	struct tpo_ep_snapshot e;
	struct h_conn c;
	uint64_t end;

	tmo_ms = 60000;
	start("ob", "openai", NULL, 2, NULL);
	h_stats_attach(&in, &st);

	/* A client that leaves while upstream stalls: the transfer is aborted. */
	h_chat_body(body, sizeof(body), "[[srv:stall_after=1]]", 1, NULL);
	h_open(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	ep_snap(&st, &e);
	for (end = h_now_ms() + H_HANG_MS; e.in_flight != 1 && h_now_ms() < end; h_sleep_ms(5))
		ep_snap(&st, &e);
	cr_assert_eq(e.in_flight, 1);
	h_conn_free(&c);
	for (end = h_now_ms() + H_HANG_MS; e.in_flight != 0 && h_now_ms() < end; h_sleep_ms(5))
		ep_snap(&st, &e);
	cr_assert_eq(e.in_flight, 0, "upstream transfer still in flight");
	cr_assert_eq(e.errors, 0, "a cancel is not an endpoint failure");

	/* Two consecutive failures open the breaker; then requests fail fast. */
	cr_assert_eq(chat_once("[[srv:status=500]]", out, sizeof(out)), 502, "%s", out);
	ep_snap(&st, &e);
	cr_assert_eq(e.state, TPO_EP_OPEN);
	cr_assert_eq(chat_once("[[srv:flaky=0:500:k9]]", out, sizeof(out)), 503, "%s", out);
	h_assert_oai_error(out, "circuit breaker");
	cr_assert_eq(srv_count("k9"), 0, "an open breaker let a request through");
	tpo_stats_close(&st);
	h_stop(&in);
}

Test(upstream, llamacpp_golden_slot_and_cache)
{
	char text[4096], finish[32], out[8192];

	start_url("lc", "llamacpp", "#slots=4", ", \"api_key_env\": \"TPO_TEST_KEY\"", 100,
		  "TPO_TEST_KEY=sk-lc");
	chat_stream("[[srv:golden=llamacpp.sse]] [[srv:chunk=5]]", text, sizeof(text), finish);
	cr_assert_str_eq(text, "Hello from llama");
	cr_assert_str_eq(finish, "stop");
	srv_last(out, sizeof(out));
	cr_assert(strstr(out, "\"path\":\"/completion\""), "%s", out);
	cr_assert(strstr(out, "\"cache_prompt\":true"), "%s", out);
	cr_assert(strstr(out, "\"authorization\":\"Bearer sk-lc\""), "%s", out);
	cr_assert(strstr(out, "\"id_slot\":"), "%s", out);
	cr_assert_null(strstr(out, "\"id_slot\":-1"), "%s", out);
	chat_stream("plain", text, sizeof(text), finish);
	cr_assert_str_eq(text, "tok0 tok1 tok2 tok3 tok4");
	cr_assert_eq(chat_once("plain", out, sizeof(out)), 200, "%s", out);
	cr_assert(strstr(out, "\"content\":\"tok0 tok1 tok2\""), "%s", out);
	h_stop(&in);
}

Test(upstream, tgi_golden_and_error_event)
{
	char text[4096], finish[32], err[8192];
	int content, errors;

	start("tg", "tgi", ", \"api_key_env\": \"TPO_TEST_KEY\"", 100, "TPO_TEST_KEY=sk-tg");
	chat_stream("[[srv:golden=tgi.sse]] [[srv:chunk=4]]", text, sizeof(text), finish);
	cr_assert_str_eq(text, "Deep learning rocks");
	cr_assert_str_eq(finish, "stop");
	srv_last(err, sizeof(err));
	cr_assert(strstr(err, "\"authorization\":\"Bearer sk-tg\""), "%s", err);
	chat_stream("plain", text, sizeof(text), finish);
	cr_assert_str_eq(text, "tok0 tok1 tok2 tok3 tok4");
	chat_broken("[[srv:golden=tgi_error.sse]]", &content, &errors, err, sizeof(err));
	cr_assert_eq(content, 1);
	cr_assert_eq(errors, 1);
	cr_assert(strstr(err, "CUDA out of memory"), "%s", err);
	/* Regression: a whole answer that is an array without an object made
	 * the parser read before its buffer; now it is a clean 502. */
	{
		char out[8192];
		cr_assert_eq(chat_once("[[srv:json=tgi_array_no_object.json]]", out, sizeof(out)), 502,
			     "%s", out);
		h_assert_oai_error(out, "without an object");
		cr_assert_eq(chat_once("plain", out, sizeof(out)), 200, "%s", out);
	}
	/* Regression: a whole answer longer than a ring record was cut to one
	 * record's length; now it is split and arrives complete. */
	{
		static char out[400000];
		const char *p;
		size_t n = 0;
		cr_assert_eq(chat_once("[[srv:big=150000]]", out, sizeof(out)), 200, "%.200s", out);
		p = strstr(out, "\"content\":\"");
		cr_assert(p, "%.200s", out);
		for (p += 11; *p == 'x'; p++)
			n++;
		cr_assert_eq(n, 150000, "answer cut to %zu bytes", n);
	}
	h_stop(&in);
}

Test(upstream, anthropic_golden_headers_and_error_event)
{
	char text[4096], finish[32], out[8192];
	int content, errors;

	start("an", "anthropic", ", \"api_key_env\": \"TPO_TEST_AKEY\"", 100,
	      "TPO_TEST_AKEY=ak-456");
	chat_stream("[[srv:golden=anthropic.sse]] [[srv:chunk=3]]", text, sizeof(text), finish);
	cr_assert_str_eq(text, "Hello!\n\"Claude\"");
	cr_assert_str_eq(finish, "length");
	srv_last(out, sizeof(out));
	cr_assert(strstr(out, "\"x-api-key\":\"ak-456\""), "%s", out);
	cr_assert(strstr(out, "\"anthropic-version\":\"2023-06-01\""), "%s", out);
	cr_assert(strstr(out, "\"max_tokens\":"), "%s", out);
	chat_stream("plain", text, sizeof(text), finish);
	cr_assert_str_eq(text, "tok0 tok1 tok2 tok3 tok4");
	chat_broken("[[srv:golden=anthropic_error.sse]]", &content, &errors, out, sizeof(out));
	cr_assert_eq(content, 0);
	cr_assert_eq(errors, 1);
	cr_assert(strstr(out, "Overloaded"), "%s", out);
	/* Deltas of one shape skip the parser; one whose text breaks the
	 * JSON (a bare quote) is still an error. */
	chat_broken("[[srv:golden=anthropic_shape_quote.sse]]", &content, &errors, out, sizeof(out));
	cr_assert_eq(content, 2);
	cr_assert_eq(errors, 1);
	cr_assert(strstr(out, "invalid JSON"), "%s", out);
	h_stop(&in);
}

/*
 * Half-open admits exactly one probe. Several requests arrive together
 * after the open interval; the server holds what reaches it until told, so
 * the probe is certainly in flight while the others are decided: they fail
 * at once with 503, and the server saw one request. The probe's success
 * closes the breaker; a probe that fails (after a token: not retried, so
 * nothing else can reach the server) opens it again.
 */
Test(upstream, breaker_half_open_admits_one_probe)
{
	enum { N = 4 };
	struct tpo_stats st;
	struct tpo_ep_snapshot e;
	struct h_conn cs[N];
	int done[N] = { 0 }, ndone = 0, probe = -1, content, errors;
	char body[512], out[8192];
	uint64_t opened;

	tmo_ms = 60000;          /* the held probe must not time out */
	open_ms = 300;
	start("bh", "openai", NULL, 2, NULL);
	h_stats_attach(&in, &st);

	breaker_open_and_wait(&st, &e);
	h_chat_body(body, sizeof(body), "[[srv:key=kh]] [[srv:hold=kh]]", 0, NULL);
	for (int i = 0; i < N; i++)
		h_begin(&cs[i], in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	for (uint64_t end = h_now_ms() + H_HANG_MS; ndone < N - 1;) {
		struct pollfd pf[N];
		int r;
		for (int i = 0; i < N; i++) {
			pf[i].fd = done[i] ? -1 : cs[i].fd;
			pf[i].events = POLLIN;
			pf[i].revents = 0;
		}
		/* Not a deadline: a second request held at the server fails the
		 * test at once instead of after the hang detector. */
		r = poll(pf, N, 20);
		cr_assert_geq(r, 0);
		cr_assert_leq(srv_count("kh"), 1, "half-open let more than one request through");
		cr_assert_lt(h_now_ms(), end, "%d of %d requests still waiting while the probe "
			     "is held", N - ndone, N);
		for (int i = 0; i < N; i++) {
			if (done[i] || !pf[i].revents)
				continue;
			cr_assert_eq(h_read_head(&cs[i]), 0);
			cr_assert_eq(h_read_body(&cs[i]), 0);
			cr_assert_eq(cs[i].status, 503, "status %d while half-open: %s",
				     cs[i].status, cs[i].body ? cs[i].body : "");
			h_assert_oai_error(cs[i].body, "circuit breaker");
			done[i] = 1;
			ndone++;
		}
	}
	for (int i = 0; i < N; i++)
		if (!done[i])
			probe = i;
	cr_assert_eq(srv_count("kh"), 1, "half-open let more than one request through");
	ep_snap(&st, &e);
	cr_assert_eq(e.state, TPO_EP_HALF_OPEN);
	cr_assert_eq(e.in_flight, 1);

	/* The probe succeeds: closed, and requests reach the server again. */
	srv_release("kh");
	cr_assert_eq(h_read_head(&cs[probe]), 0);
	cr_assert_eq(h_read_body(&cs[probe]), 0);
	cr_assert_eq(cs[probe].status, 200, "probe: %s", cs[probe].body ? cs[probe].body : "");
	cr_assert(strstr(cs[probe].body, "tok0 tok1 tok2"), "%s", cs[probe].body);
	for (int i = 0; i < N; i++)
		h_conn_free(&cs[i]);
	ep_snap(&st, &e);
	cr_assert_eq(e.state, TPO_EP_CLOSED, "a successful probe did not close the breaker");
	cr_assert_eq(srv_count("kh"), 1);
	cr_assert_eq(chat_once("[[srv:key=kc]]", out, sizeof(out)), 200, "%s", out);
	cr_assert_eq(chat_once("[[srv:key=kc]]", out, sizeof(out)), 200, "%s", out);
	cr_assert_eq(srv_count("kc"), 2);

	/* The probe fails: open again (a new opening, not the old one). */
	breaker_open_and_wait(&st, &e);
	opened = e.state_since_ns;
	chat_broken("[[srv:key=kf]] [[srv:reset_after=1]]", &content, &errors, out, sizeof(out));
	cr_assert_eq(content, 1);
	cr_assert_eq(errors, 1, "%s", out);
	cr_assert_eq(srv_count("kf"), 1);
	ep_snap(&st, &e);
	cr_assert_eq(e.state, TPO_EP_OPEN, "a failed probe left the breaker %s",
		     tpo_ep_state_name((int)e.state));
	cr_assert_gt(e.state_since_ns, opened, "the breaker was not half-open in between");
	cr_assert_eq(e.in_flight, 0);
	tpo_stats_close(&st);
	h_stop(&in);
}

/*
 * Retries only before the first token was forwarded: a stream that breaks
 * after 2 tokens ends with one error and the server saw it once; one that
 * breaks before any token is tried again.
 */
Test(upstream, no_retry_after_first_token)
{
	struct tpo_stats st;
	struct tpo_ep_snapshot e;
	char err[8192];
	int content, errors;
	uint64_t requests;

	start("nr", "openai", NULL, 100, NULL);
	h_stats_attach(&in, &st);

	ep_snap(&st, &e);
	requests = e.requests;
	chat_broken("[[srv:key=k2]] [[srv:reset_after=2]]", &content, &errors, err, sizeof(err));
	cr_assert_eq(content, 2);
	cr_assert_eq(errors, 1);
	cr_assert(strstr(err, "after 2 tokens"), "%s", err);
	cr_assert_eq(srv_count("k2"), 1, "a stream that had forwarded tokens was retried");
	ep_snap(&st, &e);
	cr_assert_eq(e.requests - requests, 1);
	cr_assert_eq(e.in_flight, 0);

	chat_broken("[[srv:key=k0]] [[srv:reset_after=0]]", &content, &errors, err, sizeof(err));
	cr_assert_eq(content, 0);
	cr_assert_eq(errors, 1);
	cr_assert(strstr(err, "2 attempts"), "%s", err);
	cr_assert_eq(srv_count("k0"), 2, "a failure before any token was not retried");
	tpo_stats_close(&st);
	h_stop(&in);
}

static int srv_conns(void)
{
	struct h_conn c;
	int n;

	h_http(&c, srv_port, "GET", "/conns", NULL, NULL);
	cr_assert(sscanf(c.body, "{\"count\":%d}", &n) == 1, "%s", c.body);
	h_conn_free(&c);
	return n;
}

/*
 * Keep-alive: sequential requests share one upstream connection. The
 * badserver ends each stream (chunked terminator) 20 ms after [DONE]: the
 * worker answers at [DONE] and must let curl read the terminator instead of
 * dropping the transfer, which closes the connection (a new TCP connection
 * per streamed answer: 9 here).
 */
Test(upstream, keepalive_connection_reused)
{
	char text[4096], finish[32], out[8192];
	int conns;

	start("ka", "openai", NULL, 100, NULL);
	cr_assert_eq(chat_once("first", out, sizeof(out)), 200, "%s", out);
	cr_assert_eq(srv_conns(), 1);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(chat_once("again", out, sizeof(out)), 200, "%s", out);
	cr_assert_eq(srv_conns(), 1, "non-streamed answers did not reuse the connection");
	for (int i = 0; i < 8; i++) {
		cr_assert_eq(chat_stream("[[srv:end_delay=20]]", text, sizeof(text), finish), 5);
		cr_assert_str_eq(text, "tok0 tok1 tok2 tok3 tok4");
		/* Past the terminator: a request sent while the last one still
		 * drains opens a second connection, legitimately. */
		h_sleep_ms(60);
	}
	conns = srv_conns();
	cr_assert_leq(conns, 4, "%d connections for 13 sequential requests", conns);
	h_stop(&in);
}

/*
 * Easy handles are pooled: one that served a failed call carries nothing
 * into the next (headers, body, timeouts). The first call is streamed, has a
 * 300 ms deadline and stalls (the stage ends it with 504); the next, on the
 * same handle, is not streamed and waits 700 ms for its answer.
 */
Test(upstream, reused_handle_carries_no_state)
{
	struct h_conn c;
	char body[1024], out[8192];

	start("rh", "openai", ", \"api_key_env\": \"TPO_TEST_KEY\"", 100,
	      "TPO_TEST_KEY=sk-rh");
	h_chat_body(body, sizeof(body), "[[srv:stall]]", 1, NULL);
	h_open(&c, in.port, "POST", "/v1/chat/completions", "X-Request-Timeout: 300\r\n", body,
	       strlen(body));
	cr_assert_eq(c.status, 504);
	h_conn_free(&c);

	cr_assert_eq(chat_once("[[srv:slow_headers=700]] second", out, sizeof(out)), 200, "%s",
		     out);
	cr_assert(strstr(out, "\"content\":\"tok0 tok1 tok2\""), "%s", out);
	assert_sent_plain(out, sizeof(out), "second", "sk-rh");
	cr_assert_null(strstr(out, "stall"), "the old body was sent: %s", out);
	cr_assert_null(strstr(out, "\"expect\""), "%s", out);

	/* After an HTTP error too. */
	cr_assert_eq(chat_once("[[srv:status=500]]", out, sizeof(out)), 502, "%s", out);
	cr_assert_eq(chat_once("[[srv:slow_headers=700]] third", out, sizeof(out)), 200, "%s",
		     out);
	srv_last(out, sizeof(out));
	cr_assert(strstr(out, "third"), "%s", out);
	h_stop(&in);
}

/*
 * A handle whose call succeeded keeps its options (only the body, timeout,
 * URL and header list are set per attempt): what differs between calls
 * must still change. Calls alternate streamed / not, chat / completion,
 * and a short deadline is followed by a slow answer that needs a longer
 * one. Sequential calls on one lane reuse the pooled handle.
 */
Test(upstream, reused_handle_after_success_switches_kind)
{
	struct h_conn c;
	char body[1024], text[4096], finish[32], out[8192];
	const char *cbody = "{\"model\":\"m\",\"stream\":false,\"prompt\":\"compl\"}";
	int64_t usage;

	tmo_ms = 5000;
	start("rs", "openai", ", \"api_key_env\": \"TPO_TEST_KEY\"", 100, "TPO_TEST_KEY=sk-rs");
	/* A streamed call with a 400 ms deadline that succeeds at once. */
	h_chat_body(body, sizeof(body), "first", 1, NULL);
	h_open(&c, in.port, "POST", "/v1/chat/completions", "X-Request-Timeout: 400\r\n", body,
	       strlen(body));
	cr_assert_eq(c.status, 200);
	cr_assert_eq(h_read_stream(&c, 1, text, sizeof(text), finish, sizeof(finish), &usage), 5);
	h_conn_free(&c);
	srv_last(out, sizeof(out));
	cr_assert(strstr(out, "\"accept\":\"text/event-stream\""), "%s", out);
	h_sleep_ms(60);   /* past the drain: the handle is back in the pool */

	/* Not streamed, 700 ms to the status line: the old deadline is gone. */
	cr_assert_eq(chat_once("[[srv:slow_headers=700]] second", out, sizeof(out)), 200, "%s",
		     out);
	cr_assert(strstr(out, "\"content\":\"tok0 tok1 tok2\""), "%s", out);
	assert_sent_plain(out, sizeof(out), "second", "sk-rs");
	cr_assert(strstr(out, "\"path\":\"/v1/chat/completions\""), "%s", out);

	/* A completion: another path on the same handle. */
	h_http(&c, in.port, "POST", "/v1/completions", NULL, cbody);
	cr_assert_eq(c.status, 200, "%s", c.body);
	h_conn_free(&c);
	srv_last(out, sizeof(out));
	cr_assert(strstr(out, "\"path\":\"/v1/completions\""), "%s", out);
	cr_assert(strstr(out, "compl"), "%s", out);
	cr_assert(strstr(out, "\"authorization\":\"Bearer sk-rs\""), "%s", out);

	/* Streamed again: the Accept header is back. */
	chat_stream("third", text, sizeof(text), finish);
	cr_assert_str_eq(text, "tok0 tok1 tok2 tok3 tok4");
	srv_last(out, sizeof(out));
	cr_assert(strstr(out, "third"), "%s", out);
	cr_assert(strstr(out, "\"stream\":true"), "%s", out);
	cr_assert(strstr(out, "\"accept\":\"text/event-stream\""), "%s", out);
	cr_assert(strstr(out, "\"path\":\"/v1/chat/completions\""), "%s", out);
	cr_assert_eq(srv_conns(), 1, "the calls did not share one connection");
	h_stop(&in);
}

/*
 * After a load, an idle infer process sleeps between its heartbeats (100
 * ms) with its kept-alive upstream connections open, and again after the
 * upstream closed them (a keep-alive timeout): a loop that polls without
 * sleeping goes to sleep almost never; one that a closed connection keeps
 * waking, far more than 40 times in 2 s. A request after the close is
 * answered (over a new connection).
 */
Test(upstream, idle_after_load_sleeps)
{
	pid_t pids[TPO_NSTAGES * TPO_MAX_LANES], pid;
	char text[4096], finish[32], out[8192];
	struct h_conn c;
	long a, b;

	start("idl", "openai", NULL, 100, NULL);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(chat_once("load", out, sizeof(out)), 200, "%s", out);
	cr_assert_eq(chat_stream("[[srv:end_delay=20]]", text, sizeof(text), finish), 5);
	h_sleep_ms(100);         /* past the stream's drain */
	cr_assert_gt(h_stage_pids(&in, pids), 0);
	pid = pids[TPO_STAGE_INFER * TPO_MAX_LANES];
	for (int round = 0; round < 2; round++) {
		a = sleeps_of(pid);
		h_sleep_ms(2000);
		b = sleeps_of(pid);
		cr_assert(a >= 0 && b >= 0, "no /proc/%d/status", (int)pid);
		cr_assert_leq(b - a, 40, "round %d: the idle infer process woke %ld times in 2 s",
			      round, b - a);
		cr_assert_geq(b - a, 5, "round %d: the idle infer process slept %ld times in 2 s: "
			      "it spins", round, b - a);
		if (round == 0) {
			h_http(&c, srv_port, "GET", "/drop", NULL, NULL);
			cr_assert_eq(c.status, 200);
			cr_assert(strstr(c.body, "\"dropped\":1"), "%s", c.body);
			h_conn_free(&c);
			h_sleep_ms(100);
		}
	}
	cr_assert_eq(chat_once("after the close", out, sizeof(out)), 200, "%s", out);
	h_stop(&in);
}

/* Whether process pid maps a file whose path contains what. */
static int maps_contain(pid_t pid, const char *what)
{
	char path[64], line[1024];
	FILE *f;
	int found = 0;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "r");
	cr_assert(f, "no %s", path);
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, what) != NULL;
	fclose(f);
	return found;
}

static int srv_held(const char *key)
{
	return srv_int("held", key);
}


/*
 * Endpoints of both clients in one infer process: the first at UP_HOST, the
 * second named "localhost" (libcurl's). A request held at the server keeps
 * one endpoint busy, so the next goes to the other (least_inflight); both
 * are answered once released, and the process maps libcurl.
 */
Test(upstream, both_clients_in_one_process)
{
	static char cfg[2048], more[128];
	pid_t pids[TPO_NSTAGES * TPO_MAX_LANES];
	struct tpo_stats st;
	struct tpo_ep_snapshot e;
	struct h_conn cs[2];
	char body[512];

	tmo_ms = 60000;          /* the held requests must not time out */
	srv_start();
	snprintf(more, sizeof(more), "}, {\"url\": \"http://localhost:%d\"", srv_port);
	snprintf(cfg, sizeof(cfg), CFG, "openai", srv_port, "", more, tmo_ms, tmo_ms, 100,
		 open_ms, "");
	h_start_ex(&in, "mix", cfg, NULL, 1);
	h_register(&in);
	h_stats_attach(&in, &st);
	h_chat_body(body, sizeof(body), "[[srv:key=km]] [[srv:hold=km]]", 0, NULL);
	for (int i = 0; i < 2; i++) {
		uint64_t end = h_now_ms() + H_HANG_MS;
		h_begin(&cs[i], in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
		while (srv_held("km") < i + 1) {
			cr_assert_lt(h_now_ms(), end, "request %d never reached the server", i);
			h_sleep_ms(5);
		}
	}
	srv_release("km");
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(h_read_head(&cs[i]), 0);
		cr_assert_eq(h_read_body(&cs[i]), 0);
		cr_assert_eq(cs[i].status, 200, "%s", cs[i].body ? cs[i].body : "");
		cr_assert(strstr(cs[i].body, "tok0 tok1 tok2"), "%s", cs[i].body);
		h_conn_free(&cs[i]);
	}
	for (int i = 0; i < 2; i++) {
		ep_snap_i(&st, i, &e);
		cr_assert_eq(e.requests, 1, "endpoint %d (%s) served %llu requests", i, e.url,
			     (unsigned long long)e.requests);
		cr_assert_eq(e.errors, 0);
	}
	cr_assert_gt(h_stage_pids(&in, pids), 0);
	cr_assert(maps_contain(pids[TPO_STAGE_INFER * TPO_MAX_LANES], "libcurl"));
	h_stop(&in);
}


/*
 * libcurl is loaded by the first HTTP worker that needs it
 * (workers/curl_dl.h): an infer process with the mock maps none of it; one
 * with the openai worker maps it only when an endpoint is libcurl's (a host
 * name here), and answers either way.
 */
Test(upstream, libcurl_mapped_only_by_http_workers)
{
	pid_t pids[TPO_NSTAGES * TPO_MAX_LANES], pid;
	char out[256];

	h_start(&in, "nocurl", "{\"lanes\": 1}");
	cr_assert_gt(h_stage_pids(&in, pids), 0);
	pid = pids[TPO_STAGE_INFER * TPO_MAX_LANES];
	cr_assert_gt(pid, 0);
	cr_assert_not(maps_contain(pid, "libcurl"), "the mock's infer process maps libcurl");
	h_stop(&in);

	start("curl", "openai", NULL, 3, NULL);
	cr_assert_eq(chat_once("hello", out, sizeof(out)), 200);
	cr_assert_gt(h_stage_pids(&in, pids), 0);
	pid = pids[TPO_STAGE_INFER * TPO_MAX_LANES];
	cr_assert_gt(pid, 0);
	if (UP_VIA_CURL)
		cr_assert(maps_contain(pid, "libcurl"), "the infer process has no libcurl");
	else
		cr_assert_not(maps_contain(pid, "libcurl"),
			      "the infer process maps libcurl for an http:// endpoint at an address");
	h_stop(&in);
}

/*
 * With a proxy variable set, curl's own proxy handling stays (the worker
 * skips curl's environment lookups only when none is set): the endpoint's
 * port has no listener, the proxy (badserver, which takes absolute-form
 * targets) answers, and sees the endpoint as the request's Host.
 */
Test(upstream, proxy_variable_still_routes_through_the_proxy)
{
	static char cfg[2048], env[64];
	char out[8192], last[4096];
	int dead_port;

	/* A no_proxy of the machine's would exempt 127.0.0.1 (the test runs
	 * in a process of its own: the change ends with it). */
	unsetenv("no_proxy");
	unsetenv("NO_PROXY");
	srv_start();
	dead_port = h_free_port();
	snprintf(env, sizeof(env), "http_proxy=http://127.0.0.1:%d", srv_port);
	snprintf(cfg, sizeof(cfg), CFG, "openai", dead_port, "", "", tmo_ms, tmo_ms, 100,
		 open_ms, "");
	h_start_ex(&in, "prx", cfg, env, 1);
	h_register(&in);
	cr_assert_eq(chat_once("through the proxy", out, sizeof(out)), 200, "%s", out);
	cr_assert_eq(srv_conns(), 1, "the proxy saw no request");
	srv_last(last, sizeof(last));
	{
		char host[64];
		snprintf(host, sizeof(host), "\"host\":\"" UP_HOST ":%d\"", dead_port);
		cr_assert(strstr(last, host), "the proxy was not asked for the endpoint: %s", last);
	}
	h_stop(&in);
}
