/*
 * test_sse.c — the SSE parser: recorded streams split at every offset (and
 * at every pair of offsets) give the same events; CRLF, lone CR, comments,
 * multi-line data, event names, limits.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers/sse.h"

struct rec {
	char out[8192];
	size_t len;
	int n;
	int stop_at;           /* return -1 at this event (0: never) */
};

static int on_ev(void *arg, const char *event, const char *data, size_t len)
{
	struct rec *r = arg;

	r->n++;
	r->len += (size_t)snprintf(r->out + r->len, sizeof(r->out) - r->len, "[%s|%.*s]",
				   event, (int)len, data);
	cr_assert_eq(data[len], 0, "data is NUL-terminated");
	return r->stop_at && r->n == r->stop_at ? -1 : 0;
}

static void parse_split(const char *s, size_t n, size_t a, size_t b, struct rec *r)
{
	struct tpo_sse p;

	memset(r, 0, sizeof(*r));
	tpo_sse_init(&p, on_ev, r);
	cr_assert_eq(tpo_sse_feed(&p, s, a), 0);
	cr_assert_eq(tpo_sse_feed(&p, s + a, b - a), 0);
	cr_assert_eq(tpo_sse_feed(&p, s + b, n - b), 0);
	tpo_sse_fini(&p);
}

static char *slurp(const char *name, size_t *n)
{
	char path[256];
	FILE *f;
	static char buf[65536];

	snprintf(path, sizeof(path), "tests/workers/golden/%s", name);
	f = fopen(path, "rb");
	cr_assert_not_null(f, "open %s", path);
	*n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	return buf;
}

Test(sse, golden_openai_every_split)
{
	size_t n;
	const char *s = slurp("openai_chat.sse", &n);
	struct rec whole, r;

	parse_split(s, n, n, n, &whole);
	cr_assert_eq(whole.n, 5, "%d events: %s", whole.n, whole.out);
	cr_assert(strstr(whole.out, "\"content\":\"Hello\""));
	/* two data lines joined with \n */
	cr_assert(strstr(whole.out, "\"chat.completion.chunk\",\n\"choices\""), "%s", whole.out);
	cr_assert(strstr(whole.out, "[message|[DONE]]"));
	cr_assert_null(strstr(whole.out, "keep-alive"));
	for (size_t a = 0; a <= n; a++) {
		parse_split(s, n, a, a, &r);
		cr_assert_str_eq(r.out, whole.out, "split at %zu", a);
	}
	for (size_t a = 0; a <= n; a += 7)
		for (size_t b = a; b <= n; b++) {
			parse_split(s, n, a, b, &r);
			cr_assert_str_eq(r.out, whole.out, "split at %zu and %zu", a, b);
		}
}

Test(sse, golden_anthropic_event_names_every_split)
{
	size_t n;
	const char *s = slurp("anthropic.sse", &n);
	struct rec whole, r;

	parse_split(s, n, n, n, &whole);
	cr_assert_eq(whole.n, 8, "%s", whole.out);
	cr_assert(strstr(whole.out, "[content_block_delta|{"));
	cr_assert(strstr(whole.out, "[message_stop|{\"type\":\"message_stop\"}]"));
	for (size_t a = 0; a <= n; a++) {
		parse_split(s, n, a, a, &r);
		cr_assert_str_eq(r.out, whole.out, "split at %zu", a);
	}
}

Test(sse, byte_at_a_time_crlf_and_cr)
{
	const char s[] = "data: a\r\n\r\ndata:b\r\rdata:  c\n\nevent:x\ndata\n\n:c\n\ndata: d";
	struct tpo_sse p;
	struct rec r;

	memset(&r, 0, sizeof(r));
	tpo_sse_init(&p, on_ev, &r);
	for (size_t i = 0; i < sizeof(s) - 1; i++)
		cr_assert_eq(tpo_sse_feed(&p, s + i, 1), 0);
	tpo_sse_fini(&p);
	/* "data:  c" keeps the second space; a bare "data" is an empty line of
	 * data; the partial last event is dropped. */
	cr_assert_str_eq(r.out, "[message|a][message|b][message| c][x|]");
}

Test(sse, event_without_data_is_not_dispatched)
{
	const char s[] = "event: ping\n\nid: 3\n\n";
	struct tpo_sse p;
	struct rec r;

	memset(&r, 0, sizeof(r));
	tpo_sse_init(&p, on_ev, &r);
	cr_assert_eq(tpo_sse_feed(&p, s, sizeof(s) - 1), 0);
	cr_assert_eq(r.n, 0);
	tpo_sse_fini(&p);
}

Test(sse, callback_error_stops_feed)
{
	const char s[] = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
	struct tpo_sse p;
	struct rec r;

	memset(&r, 0, sizeof(r));
	r.stop_at = 2;
	tpo_sse_init(&p, on_ev, &r);
	cr_assert_eq(tpo_sse_feed(&p, s, sizeof(s) - 1), -1);
	cr_assert_eq(r.n, 2);
	tpo_sse_fini(&p);
}

Test(sse, enormous_line_is_refused)
{
	size_t n = TPO_SSE_LINE_MAX + 16;
	char *big = malloc(n);
	struct tpo_sse p;
	struct rec r;
	int rc = 0;

	cr_assert_not_null(big);
	memset(big, 'x', n);
	memcpy(big, "data: ", 6);
	memset(&r, 0, sizeof(r));
	tpo_sse_init(&p, on_ev, &r);
	for (size_t off = 0; off < n && rc == 0; off += 65536)
		rc = tpo_sse_feed(&p, big + off, n - off < 65536 ? n - off : 65536);
	cr_assert_eq(rc, -E2BIG);
	tpo_sse_fini(&p);
	free(big);
}
