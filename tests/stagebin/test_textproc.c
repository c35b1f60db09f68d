#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "stagebin/textproc.h"

#define FFFD "\xef\xbf\xbd"

static int valid(const char *s)
{
	return tpo_utf8_valid(s, strlen(s));
}

Test(utf8, valid_sequences)
{
	cr_assert_eq(tpo_utf8_valid("", 0), 1);
	cr_assert_eq(valid("plain ascii text that is longer than eight bytes"), 1);
	cr_assert_eq(valid("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf"), 1);
	cr_assert_eq(valid("\xed\x9f\xbf \xee\x80\x80"), 1);  /* around the surrogates */
	cr_assert_eq(tpo_utf8_valid("a\0b", 3), 1);
}

Test(utf8, overlong_rejected)
{
	cr_assert_eq(valid("\xc0\x80"), 0);
	cr_assert_eq(valid("\xc1\xbf"), 0);
	cr_assert_eq(valid("\xe0\x80\x80"), 0);
	cr_assert_eq(valid("\xe0\x9f\xbf"), 0);
	cr_assert_eq(valid("\xf0\x80\x80\x80"), 0);
	cr_assert_eq(valid("\xf0\x8f\xbf\xbf"), 0);
}

Test(utf8, surrogates_and_range_rejected)
{
	cr_assert_eq(valid("\xed\xa0\x80"), 0);
	cr_assert_eq(valid("\xed\xbf\xbf"), 0);
	cr_assert_eq(valid("\xf4\x90\x80\x80"), 0);
	cr_assert_eq(valid("\xf5\x80\x80\x80"), 0);
	cr_assert_eq(valid("\xff"), 0);
}

Test(utf8, truncated_and_stray_rejected)
{
	cr_assert_eq(valid("abc\xe2\x82"), 0);
	cr_assert_eq(valid("abc\xf0\x9f\x98"), 0);
	cr_assert_eq(valid("abc\xc3"), 0);
	cr_assert_eq(valid("\x80"), 0);
	cr_assert_eq(valid("\xe2\x82" "A"), 0);
	/* Past the 8-byte fast path. */
	cr_assert_eq(valid("0123456789abcdef0123456789\xbf"), 0);
	cr_assert_eq(valid("0123456789abcdef\xc3\xa9" "0123456789abcdef"), 1);
}

/* Joins the chunks of in cut at the given offsets; returns the output length. */
static size_t join_split(const char *in, size_t n, const size_t *cuts, int ncuts, char *out)
{
	struct tpo_utf8_joiner j;
	size_t o = 0, prev = 0, got;
	char tmp[256];

	tpo_utf8_joiner_init(&j);
	for (int k = 0; k <= ncuts; k++) {
		size_t end = k < ncuts ? cuts[k] : n;

		cr_assert_eq(tpo_utf8_join(&j, in + prev, end - prev, tmp, sizeof(tmp), &got), 0);
		memcpy(out + o, tmp, got);
		o += got;
		prev = end;
	}
	int f = tpo_utf8_flush(&j, out + o, 16);
	cr_assert_geq(f, 0);
	return o + (size_t)f;
}

Test(joiner, emoji_split_two_chunks)
{
	const char *s = "a\xf0\x9f\x98\x80z";
	size_t n = strlen(s);
	char out[64];

	for (size_t c = 0; c <= n; c++) {
		size_t got = join_split(s, n, &c, 1, out);

		cr_assert_eq(got, n, "split at %zu", c);
		cr_assert(memcmp(out, s, n) == 0, "split at %zu", c);
	}
}

Test(joiner, emoji_split_three_chunks)
{
	const char *s = "\xf0\x9f\x98\x80\xf0\x9f\x8e\x89";
	size_t n = strlen(s);
	char out[64];

	for (size_t a = 0; a <= n; a++)
		for (size_t b = a; b <= n; b++) {
			size_t cuts[2] = { a, b };
			size_t got = join_split(s, n, cuts, 2, out);

			cr_assert_eq(got, n, "cuts %zu %zu", a, b);
			cr_assert(memcmp(out, s, n) == 0, "cuts %zu %zu", a, b);
		}
}

Test(joiner, withholds_partial_then_completes)
{
	struct tpo_utf8_joiner j;
	char out[64];
	size_t got;

	tpo_utf8_joiner_init(&j);
	cr_assert_eq(tpo_utf8_join(&j, "x\xf0\x9f", 3, out, sizeof(out), &got), 0);
	cr_assert_eq(got, 1);
	cr_assert_eq(tpo_utf8_join(&j, "\x98", 1, out, sizeof(out), &got), 0);
	cr_assert_eq(got, 0);
	cr_assert_eq(tpo_utf8_join(&j, "\x80", 1, out, sizeof(out), &got), 0);
	cr_assert_eq(got, 4);
	cr_assert(memcmp(out, "\xf0\x9f\x98\x80", 4) == 0);
	cr_assert_eq(tpo_utf8_flush(&j, out, sizeof(out)), 0);
}

static void join_one(const char *in, size_t n, const char *want)
{
	char out[128];
	size_t outlen = join_split(in, n, NULL, 0, out);

	cr_assert_eq(outlen, strlen(want), "len %zu want %zu", outlen, strlen(want));
	cr_assert(memcmp(out, want, outlen) == 0);
}

Test(joiner, invalid_bytes_replaced)
{
	join_one("a\xff" "b", 3, "a" FFFD "b");
	join_one("\xc0\x80", 2, FFFD FFFD);
	join_one("\xed\xa0\x80", 3, FFFD FFFD FFFD);
	join_one("\xe2\x82" "A", 3, FFFD "A");        /* maximal subpart: one U+FFFD */
	join_one("\xf0\x9f\x98" "A", 4, FFFD "A");
	join_one("\x80\x80", 2, FFFD FFFD);
	join_one("ok\xe2\x82", 4, "ok" FFFD);          /* dangling at flush */
}

Test(joiner, invalid_across_chunks)
{
	/* F0 90 80 | 41: the partial sequence is replaced once, 'A' kept. */
	const char *s = "\xf0\x90\x80" "A";
	char out[64];

	for (size_t c = 0; c <= 4; c++) {
		size_t got = join_split(s, 4, &c, 1, out);

		cr_assert_eq(got, 4, "split at %zu", c);
		cr_assert(memcmp(out, FFFD "A", 4) == 0, "split at %zu", c);
	}
	/* E2 | 28: the pending lead byte alone is the ill-formed part. */
	size_t c = 1;
	cr_assert_eq(join_split("\xe2(", 2, &c, 1, out), 4);
	cr_assert(memcmp(out, FFFD "(", 4) == 0);
}

Test(utf8, sanitize)
{
	char out[64];
	size_t n;

	/* Valid text as it is; bad bytes and a cut sequence as U+FFFD. */
	n = tpo_utf8_sanitize("caf\xc3\xa9", 5, out, sizeof(out));
	cr_assert_eq(n, 5);
	cr_assert(memcmp(out, "caf\xc3\xa9", 5) == 0);
	n = tpo_utf8_sanitize("\xff<b> \xc3", 6, out, sizeof(out));
	cr_assert_eq(n, 3 + 4 + 3);
	cr_assert(memcmp(out, FFFD "<b> " FFFD, n) == 0);
	/* Cut before the first character that does not fit, never inside. */
	n = tpo_utf8_sanitize("ab\xc3\xa9\xc3\xa9", 6, out, 5);
	cr_assert_eq(n, 4);
	cr_assert(memcmp(out, "ab\xc3\xa9", 4) == 0);
	n = tpo_utf8_sanitize("ab\xff", 3, out, 4);   /* U+FFFD is 3 bytes: only "ab" */
	cr_assert_eq(n, 2);
	cr_assert_eq(tpo_utf8_sanitize("", 0, out, 0), 0);
	/* Longer than one internal piece (64 bytes), bad byte at the end. */
	char big[200];
	memset(big, 'x', sizeof(big));
	big[199] = (char)0xff;
	static char o2[400];
	n = tpo_utf8_sanitize(big, sizeof(big), o2, sizeof(o2));
	cr_assert_eq(n, 199 + 3);
	cr_assert(memcmp(o2 + 199, FFFD, 3) == 0);
}

Test(joiner, output_bound_enforced)
{
	struct tpo_utf8_joiner j;
	char out[64];
	size_t got = 99;

	tpo_utf8_joiner_init(&j);
	cr_assert_eq(tpo_utf8_join(&j, "abcd", 4, out, TPO_UTF8_JOIN_BOUND(4) - 1, &got), -ENOSPC);
	cr_assert_eq(got, 0);
	cr_assert_eq(tpo_utf8_join(&j, "\xe2", 1, out, sizeof(out), &got), 0);
	cr_assert_eq(tpo_utf8_flush(&j, out, 2), -ENOSPC);
	cr_assert_eq(tpo_utf8_flush(&j, out, 3), 3);
}

/* Feeds in cut at cuts[], collecting output; returns 1 if a stop fired. */
static int stop_split(struct tpo_stopper *st, const char *in, size_t n, const size_t *cuts,
		      int ncuts, char *out, size_t *outlen)
{
	size_t o = 0, prev = 0, got;
	char tmp[512];
	int stopped = 0;

	for (int k = 0; k <= ncuts; k++) {
		size_t end = k < ncuts ? cuts[k] : n;
		int r = tpo_stop_feed(st, in + prev, end - prev, tmp, sizeof(tmp), &got);

		cr_assert_geq(r, 0);
		if (stopped)
			cr_assert_eq(got, 0, "output after the stop");
		memcpy(out + o, tmp, got);
		o += got;
		if (r == 1)
			stopped = 1;
		prev = end;
	}
	int f = tpo_stop_flush(st, out + o, 256);
	cr_assert_geq(f, 0);
	if (stopped)
		cr_assert_eq(f, 0);
	*outlen = o + (size_t)f;
	return stopped;
}

static void init2(struct tpo_stopper *st, const char *a, const char *b)
{
	const char *s[2] = { a, b };
	size_t l[2] = { strlen(a), strlen(b) };

	cr_assert_eq(tpo_stop_init(st, s, l, 2), 0);
}

Test(stop, spans_two_chunks_every_split)
{
	const char *text = "The answer is 42.\n\nUser: next\nmore";
	const char *want = "The answer is 42.";
	size_t n = strlen(text), got;
	char out[512];

	for (size_t c = 0; c <= n; c++) {
		struct tpo_stopper st;

		init2(&st, "\n\nUser:", "Observation");
		cr_assert_eq(stop_split(&st, text, n, &c, 1, out, &got), 1, "split %zu", c);
		cr_assert_eq(got, strlen(want), "split %zu: %zu", c, got);
		cr_assert(memcmp(out, want, got) == 0, "split %zu", c);
	}
}

/* text cut into three chunks at every pair of places, with stops a and b:
 * the stop fires and exactly want comes out. */
static void stops_every_two_cuts(const char *text, const char *a, const char *b,
				 const char *want)
{
	size_t n = strlen(text), w = strlen(want), got;
	char out[512];

	for (size_t x = 0; x <= n; x++)
		for (size_t y = x; y <= n; y++) {
			struct tpo_stopper st;
			size_t cuts[2] = { x, y };

			init2(&st, a, b);
			cr_assert_eq(stop_split(&st, text, n, cuts, 2, out, &got), 1);
			cr_assert_eq(got, w, "cuts %zu %zu: %zu bytes", x, y, got);
			cr_assert(memcmp(out, want, w) == 0, "cuts %zu %zu", x, y);
		}
}

Test(stop, spans_three_chunks_every_split)
{
	stops_every_two_cuts("abc STOP_HERE def", "STOP_HERE", "zzz", "abc ");
}

Test(stop, earliest_match_wins)
{
	struct tpo_stopper st;
	char out[512];
	size_t got, c = 3;

	init2(&st, "world", "lo w");
	cr_assert_eq(stop_split(&st, "hello world", 11, &c, 1, out, &got), 1);
	cr_assert_eq(got, 3);
	cr_assert(memcmp(out, "hel", 3) == 0);
}

/*
 * "c" completes before "abcd" does: read a byte at a time the text stops at
 * "c", so it must stop there however it is cut, whole included (it stopped
 * before "abcd" when both came in one chunk; found by fuzz_text).
 */
Test(stop, the_match_that_ends_first_wins_every_split)
{
	size_t got;
	char out[512];

	stops_every_two_cuts("xabcdy", "abcd", "c", "xab");
	/* Two ending at the same byte: the longer one is cut. */
	for (size_t c = 0; c <= 5; c++) {
		struct tpo_stopper st;

		init2(&st, "cd", "abcd");
		cr_assert_eq(stop_split(&st, "xabcd", 5, &c, 1, out, &got), 1);
		cr_assert_eq(got, 1, "split %zu", c);
	}
}

Test(stop, self_overlapping_stop)
{
	/* "abab" after "aba": the whole "aba" must be held, not just "a". */
	const char *text = "xxabababyy";
	size_t n = strlen(text), got;
	char out[512];

	for (size_t c = 0; c <= n; c++) {
		struct tpo_stopper st;
		const char *s[1] = { "abab" };
		size_t l[1] = { 4 };

		cr_assert_eq(tpo_stop_init(&st, s, l, 1), 0);
		cr_assert_eq(stop_split(&st, text, n, &c, 1, out, &got), 1);
		cr_assert_eq(got, 2, "split %zu", c);
	}
}

Test(stop, no_false_withholding)
{
	struct tpo_stopper st;
	char out[512];
	size_t got;

	init2(&st, "END", "STOP");
	/* No suffix can start a stop: everything is released at once. */
	cr_assert_eq(tpo_stop_feed(&st, "Hello there", 11, out, sizeof(out), &got), 0);
	cr_assert_eq(got, 11);
	/* "EN" could start "END": held, and only it. */
	cr_assert_eq(tpo_stop_feed(&st, " EN", 3, out, sizeof(out), &got), 0);
	cr_assert_eq(got, 1);
	cr_assert_eq(st.held, 2);
	/* "ENx" cannot: released. */
	cr_assert_eq(tpo_stop_feed(&st, "x", 1, out, sizeof(out), &got), 0);
	cr_assert_eq(got, 3);
	cr_assert(memcmp(out, "ENx", 3) == 0);
	/* A held tail comes out at flush. */
	cr_assert_eq(tpo_stop_feed(&st, "ST", 2, out, sizeof(out), &got), 0);
	cr_assert_eq(got, 0);
	cr_assert_eq(tpo_stop_flush(&st, out, sizeof(out)), 2);
	cr_assert(memcmp(out, "ST", 2) == 0);
	cr_assert_eq(tpo_stop_flush(&st, out, sizeof(out)), 0);
}

Test(stop, no_stops_passthrough_and_after_stop)
{
	struct tpo_stopper st;
	char out[64];
	size_t got;

	cr_assert_eq(tpo_stop_init(&st, NULL, NULL, 0), 0);
	cr_assert_eq(tpo_stop_feed(&st, "abc", 3, out, sizeof(out), &got), 0);
	cr_assert_eq(got, 3);

	init2(&st, "X", "");
	cr_assert_eq(st.nstop, 1);          /* the empty string is ignored */
	cr_assert_eq(tpo_stop_feed(&st, "aXb", 3, out, sizeof(out), &got), 1);
	cr_assert_eq(got, 1);
	cr_assert_eq(tpo_stop_feed(&st, "more", 4, out, sizeof(out), &got), 1);
	cr_assert_eq(got, 0);
}

Test(stop, init_limits_and_packed)
{
	struct tpo_stopper st;
	char big[TPO_STOP_LEN_MAX + 1];
	const char *s[9];
	size_t l[9];
	char out[64];
	size_t got;

	memset(big, 'a', sizeof(big));
	s[0] = big;
	l[0] = sizeof(big);
	cr_assert_eq(tpo_stop_init(&st, s, l, 1), -EINVAL);
	for (int i = 0; i < 9; i++)
		s[i] = "x", l[i] = 1;
	cr_assert_eq(tpo_stop_init(&st, s, l, 9), -EINVAL);
	cr_assert_eq(tpo_stop_init(&st, s, l, 8), 0);

	cr_assert_eq(tpo_stop_init_packed(&st, "foo\0bar\0", 8), 0);
	cr_assert_eq(st.nstop, 2);
	cr_assert_eq(tpo_stop_feed(&st, "xxba", 4, out, sizeof(out), &got), 0);
	cr_assert_eq(got, 2);
	cr_assert_eq(tpo_stop_feed(&st, "r", 1, out, sizeof(out), &got), 1);
	cr_assert_eq(got, 0);
	cr_assert_eq(tpo_stop_init_packed(&st, "a\0b\0c\0d\0e\0f\0g\0h\0i\0", 18), -EINVAL);
}

Test(stop, enospc_consumes_nothing)
{
	struct tpo_stopper st;
	char out[64];
	size_t got;

	init2(&st, "END", "Z");
	cr_assert_eq(tpo_stop_feed(&st, "E", 1, out, sizeof(out), &got), 0);
	cr_assert_eq(tpo_stop_feed(&st, "abc", 3, out, 3, &got), -ENOSPC);
	cr_assert_eq(st.held, 1);
	cr_assert_eq(tpo_stop_feed(&st, "ND", 2, out, 3, &got), 1);
	cr_assert_eq(got, 0);
}

Test(usage, estimate)
{
	cr_assert_eq(tpo_usage_estimate_tokens("", 0), 0);
	cr_assert_eq(tpo_usage_estimate_tokens("a", 1), 1);
	cr_assert_eq(tpo_usage_estimate_tokens("abcd", 4), 1);
	cr_assert_eq(tpo_usage_estimate_tokens("abcde", 5), 2);
	cr_assert_eq(tpo_usage_estimate_tokens("abcdefgh", 8), 2);
}

Test(template, fill)
{
	char out[128];
	const char *want = "Context: CTX\n{{literal}}} {foo} {context\nuser: hi\n";
	int n = tpo_template_fill("Context: {context}\n{{{literal}}} {foo} {context\n{messages}",
				  "CTX", 3, "user: hi\n", 9, out, sizeof(out));

	cr_assert_eq(n, (int)strlen(want), "got %d", n);
	cr_assert(memcmp(out, want, (size_t)n) == 0, "%.*s", n, out);
}

Test(template, repeated_and_empty)
{
	char out[64];
	int n = tpo_template_fill("{messages}|{messages}|{context}", "", 0, "ab", 2, out,
				  sizeof(out));

	cr_assert_eq(n, 6);
	cr_assert(memcmp(out, "ab|ab|", 6) == 0);
	cr_assert_eq(tpo_template_fill("", "x", 1, "y", 1, out, 0), 0);
}

Test(template, budget)
{
	char out[64];
	const char *tpl = "A{context}B{messages}C";

	/* Exactly at the budget fits; one byte less does not. */
	cr_assert_eq(tpo_template_fill(tpl, "xx", 2, "yyy", 3, out, 8), 8);
	cr_assert(memcmp(out, "AxxByyyC", 8) == 0);
	cr_assert_eq(tpo_template_fill(tpl, "xx", 2, "yyy", 3, out, 7), -E2BIG);
	cr_assert_eq(tpo_template_fill(tpl, "xx", 2, "yyy", 3, out, 4), -E2BIG);
	cr_assert_eq(tpo_template_fill(tpl, "xx", 2, "yyy", 3, out, 0), -E2BIG);
}
