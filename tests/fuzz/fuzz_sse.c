/*
 * fuzz_sse — libFuzzer target for workers/sse.c, the parser of every
 * streamed upstream answer.
 *
 * The parser's contract is that a body may arrive split at any byte: the
 * input is fed once whole and once in pieces whose sizes come from its
 * first byte, and both feeds must give the same events (name, data and
 * length) and the same return. Every event's data is NUL-terminated and
 * within the parser's limit; names are NUL-terminated.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers/sse.h"

#define check(c) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); __builtin_trap(); } } while (0)

struct log {
	char *p;
	size_t len, cap;
};

static void put(struct log *l, const void *s, size_t n)
{
	if (l->len + n > l->cap) {
		l->cap = (l->len + n) * 2;
		l->p = realloc(l->p, l->cap);
		check(l->p);
	}
	memcpy(l->p + l->len, s, n);
	l->len += n;
}

static int on_event(void *arg, const char *event, const char *data, size_t len)
{
	struct log *l = arg;
	size_t en = strnlen(event, 64);

	check(en < 64 && data[len] == 0 && len <= TPO_SSE_LINE_MAX);
	put(l, &en, sizeof(en));
	put(l, event, en);
	put(l, &len, sizeof(len));
	put(l, data, len);
	return 0;
}

static int feed(struct log *l, const char *s, size_t n, unsigned step)
{
	struct tpo_sse p;
	int r = 0;

	tpo_sse_init(&p, on_event, l);
	for (size_t off = 0, k = 0; off < n && r == 0; k++) {
		/* pieces of 1..step bytes, varying */
		size_t piece = step ? 1 + (k * 7 + off) % step : n;

		if (piece > n - off)
			piece = n - off;
		r = tpo_sse_feed(&p, s + off, piece);
		off += piece;
	}
	tpo_sse_fini(&p);
	return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct log whole = { 0 }, split = { 0 };
	int a, b;

	if (size < 1)
		return 0;
	a = feed(&whole, (const char *)data + 1, size - 1, 0);
	b = feed(&split, (const char *)data + 1, size - 1, 1 + data[0] % 16);
	check(a == b);
	check(whole.len == split.len && (whole.len == 0 || memcmp(whole.p, split.p, whole.len) == 0));
	free(whole.p);
	free(split.p);
	return 0;
}
