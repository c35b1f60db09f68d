/*
 * fuzz_json — libFuzzer target for workers/json.c, the validator every
 * untrusted JSON document passes (client requests, upstream answers).
 *
 * Beyond "no crash under ASan/UBSan", it checks what callers rely on:
 * valid input tokenizes, into tokens that stay inside the input, the same
 * with a fresh and a kept array; every string token of a valid document
 * unescapes; tpo_json_skip walks the root's subtree to the end; and any
 * bytes escaped by tpo_json_escape, quoted, are a valid document that
 * unescapes back to them, and cut short by a small buffer, still a valid one.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers/json.h"

#define check(c) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); __builtin_trap(); } } while (0)

static int ascii(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if ((uint8_t)s[i] >= 0x80)
			return 0;
	return 1;
}

/* s[0..len) has a \\uD800-\\uDFFF escape. */
static int surrogate_escape(const char *s, size_t len)
{
	for (size_t i = 0; i + 3 < len; i++) {
		if (s[i] == '\\' && s[i + 1] == '\\') {
			i++;
			continue;
		}
		if (s[i] == '\\' && s[i + 1] == 'u' && (s[i + 2] | 0x20) == 'd' &&
		    s[i + 3] && strchr("89abcdefABCDEF", s[i + 3]))
			return 1;
	}
	return 0;
}

/* Decodes s[0..len) as text split at byte cut (an escape boundary) and
 * whole: the same bytes, once a half held at the end is written out. */
static void text_pieces(const char *s, size_t len, size_t cut)
{
	char *whole = malloc(len + 10), *split = malloc(2 * len + 20);
	unsigned carry = 0;
	int a, b, c;

	check(whole && split);
	a = tpo_json_unescape_text(s, len, whole, len + 5, &carry);
	check(a >= 0);
	if (carry)
		a += (int)tpo_json_unescape_text("", 0, whole + a, 5, &carry);
	check(carry == 0);
	b = tpo_json_unescape_text(s, cut, split, cut + 5, &carry);
	check(b >= 0);
	c = tpo_json_unescape_text(s + cut, len - cut, split + b, len - cut + 5, &carry);
	check(c >= 0);
	if (carry)
		c += (int)tpo_json_unescape_text("", 0, split + b + c, 5, &carry);
	check(a == b + c && memcmp(whole, split, (size_t)a) == 0);
	free(whole);
	free(split);
}

static void escape_round_trip(const char *s, size_t len)
{
	size_t n = tpo_json_escape(s, len, NULL, 0);
	char *q = malloc(n + 3), *back = malloc(n + 3);

	check(q && back);
	q[0] = '"';
	check(tpo_json_escape(s, len, q + 1, n + 1) == n);
	q[n + 1] = '"';
	q[n + 2] = 0;
	/* Escaping copies bytes >= 0x80, so only invalid UTF-8 may fail. */
	if (tpo_json_validate(q, n + 2, NULL) == 0)
		check(tpo_json_unescape(q + 1, n, back, n + 1) == (int)len &&
		      memcmp(back, s, len) == 0);
	else
		check(!ascii(s, len));
	/* Cut short (any cap), valid text escapes to a valid prefix: no escape
	 * and no UTF-8 character split. */
	if (tpo_json_validate(q, n + 2, NULL) == 0 && n > 0) {
		size_t cap = 1 + (len * 7 + n) % n, m;

		check(tpo_json_escape(s, len, q + 1, cap) == n);
		m = strlen(q + 1);
		check(m < cap);
		q[1 + m] = '"';
		check(tpo_json_validate(q, m + 2, NULL) == 0);
	}
	free(q);
	free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *js = (const char *)data;
	struct tpo_json_error err;
	jsmntok_t *toks = NULL, *kept = NULL;
	unsigned cap = 0;
	int n, m;

	escape_round_trip(js, size < 512 ? size : 512);
	if (tpo_json_validate(js, size, &err) != 0) {
		check(tpo_json_tokenize(js, size, &toks, NULL) == -EINVAL);
		return 0;
	}
	n = tpo_json_tokenize(js, size, &toks, NULL);
	if (n == -ENOMEM)
		return 0;
	check(n >= 1);
	m = tpo_json_tokenize_into(js, size, &kept, &cap, NULL);
	check(m == n && memcmp(kept, toks, sizeof(*toks) * (size_t)n) == 0);
	check(tpo_json_skip(toks, n, 0) == n);
	for (int i = 0; i < n; i++) {
		check(toks[i].start >= 0 && toks[i].end >= toks[i].start &&
		      (size_t)toks[i].end <= size);
		if (toks[i].type == JSMN_STRING) {
			size_t len = (size_t)(toks[i].end - toks[i].start);
			char *dst = malloc(len + 1);

			check(dst);
			/* Valid JSON may hold an unpaired surrogate escape:
			 * the one thing the decoder refuses. */
			check(tpo_json_get_string(js, &toks[i], dst, len + 1) >= 0 ||
			      surrogate_escape(js + toks[i].start, len));
			free(dst);
			/* a cut at the first escape boundary from len * size / 7 */
			size_t want = (len * size) / 7 % (len + 1), cut = 0;
			const char *q = js + toks[i].start;
			while (cut < want && cut < len)
				cut += q[cut] != '\\' ? 1 : q[cut + 1] == 'u' ? 6 : 2;
			text_pieces(q, len, cut);
		}
		check(tpo_json_skip(toks, n, i) > i);
	}
	free(toks);
	free(kept);
	return 0;
}
