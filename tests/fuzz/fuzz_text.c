/*
 * fuzz_text — libFuzzer target for stagebin/textproc.c, what tpo-post does
 * to a model's output (any bytes, cut anywhere into tokens) and what
 * tpo-assemble does with a configured template.
 *
 * Input: one byte of flags (bits 0-3: how many stop strings, bits 4-7: the
 * largest piece), the stop strings (a length byte, then that many bytes,
 * each), a template for tpo_template_fill (a length byte, then it), then the
 * model's text. Checked against straightforward references:
 *   - UTF-8 repair fed in pieces gives the same bytes as fed whole; they are
 *     well-formed; valid input comes out unchanged; tpo_utf8_sanitize gives
 *     them too, as many whole characters as fit;
 *   - the stopper, fed the repaired text in pieces, releases exactly the
 *     text before the first occurrence of any stop string (all of it if
 *     none occurs), says so once a stop completed, and releases bytes in
 *     order (what it released stays released);
 *   - the template fill gives what a plain expansion gives, or -E2BIG
 *     exactly when that is longer than the budget.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stagebin/textproc.h"

#define check(c) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); __builtin_trap(); } } while (0)

#define TEXT_MAX 4096

struct buf {
	char p[TPO_UTF8_JOIN_BOUND(TEXT_MAX) + 16];
	size_t len;
};

static size_t piece_at(size_t k, size_t off, unsigned step)
{
	return step ? 1 + (k * 7 + off) % step : (size_t)-1;
}

static void repair(const char *s, size_t n, unsigned step, struct buf *out)
{
	struct tpo_utf8_joiner j;
	char tmp[TPO_UTF8_JOIN_BOUND(TEXT_MAX)];
	size_t k = 0, off = 0, got;
	int r;

	tpo_utf8_joiner_init(&j);
	out->len = 0;
	while (off < n) {
		size_t piece = piece_at(k++, off, step);

		if (piece > n - off)
			piece = n - off;
		check(tpo_utf8_join(&j, s + off, piece, tmp, 1, &got) == -ENOSPC || piece == 0);
		check(tpo_utf8_join(&j, s + off, piece, tmp, sizeof(tmp), &got) == 0);
		check(got <= TPO_UTF8_JOIN_BOUND(piece));
		memcpy(out->p + out->len, tmp, got);
		out->len += got;
		off += piece;
	}
	r = tpo_utf8_flush(&j, out->p + out->len, 3);
	check(r == 0 || r == 3);
	out->len += (size_t)r;
}

/*
 * Where the text is cut: before the stop string that ends first (the
 * longest of those ending there), as a stream read byte by byte meets it;
 * n if none occurs.
 */
static size_t first_stop(const char *s, size_t n, const char *const stops[],
			 const size_t lens[], int nstop)
{
	for (size_t e = 1; e <= n; e++) {
		size_t cut = n;

		for (int i = 0; i < nstop; i++)
			if (lens[i] && lens[i] <= e && e - lens[i] < cut &&
			    !memcmp(s + e - lens[i], stops[i], lens[i]))
				cut = e - lens[i];
		if (cut < n)
			return cut;
	}
	return n;
}

static struct {
	char p[64 * TEXT_MAX];
	size_t len;
} ref;

static void expand(const char *tpl, const char *ctx, size_t clen, const char *msg,
		   size_t mlen, __typeof__(ref) *out)
{
	out->len = 0;
	for (const char *p = tpl; *p; ) {
		if (!strncmp(p, "{context}", 9)) {
			memcpy(out->p + out->len, ctx, clen), out->len += clen, p += 9;
		} else if (!strncmp(p, "{messages}", 10)) {
			memcpy(out->p + out->len, msg, mlen), out->len += mlen, p += 10;
		} else if (!strncmp(p, "{{", 2)) {
			out->p[out->len++] = '{', p += 2;
		} else {
			out->p[out->len++] = *p++;
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t n)
{
	static struct buf whole, pieces, got;
	const char *stops[TPO_STOP_MAX];
	size_t lens[TPO_STOP_MAX], off = 1, k = 0, end;
	char tpl[256], out[TPO_UTF8_JOIN_BOUND(TEXT_MAX) + TPO_STOP_LEN_MAX];
	struct tpo_stopper st;
	unsigned step;
	int nstop, done = 0;

	if (n < 1)
		return 0;
	nstop = in[0] & 15;
	step = in[0] >> 4;
	if (nstop > TPO_STOP_MAX)
		nstop = TPO_STOP_MAX;
	for (int i = 0; i < nstop; i++) {
		size_t l = off < n ? in[off++] % 24 : 0;

		if (l > n - off)
			l = n - off;
		stops[i] = (const char *)in + off;
		lens[i] = l;
		off += l;
	}
	{
		size_t l = off < n ? in[off++] % 64 : 0;

		if (l > n - off)
			l = n - off;
		memcpy(tpl, in + off, l);
		tpl[l] = 0;
		off += l;
	}
	n -= off;
	in += off;
	if (n > TEXT_MAX)
		n = TEXT_MAX;

	/* UTF-8 repair: split-invariant, well-formed, identity on valid text. */
	repair((const char *)in, n, 0, &whole);
	repair((const char *)in, n, step, &pieces);
	check(whole.len == pieces.len && !memcmp(whole.p, pieces.p, whole.len));
	check(tpo_utf8_valid(whole.p, whole.len));
	if (tpo_utf8_valid((const char *)in, n))
		check(whole.len == n && !memcmp(whole.p, in, n));

	/* Sanitizing is the same repair, cut before the first character that
	 * does not fit. */
	{
		size_t cap = step ? n * step / 16 : n, m = tpo_utf8_sanitize((const char *)in, n, out, cap);

		check(m <= cap && tpo_utf8_valid(out, m));
		check(m <= whole.len && !memcmp(out, whole.p, m));
		check(m == whole.len || cap - m < 4);
	}

	/* Stop strings over the repaired text, fed in pieces. */
	check(tpo_stop_init(&st, stops, lens, nstop) == 0);
	got.len = 0;
	for (size_t o = 0; o < whole.len; ) {
		size_t piece = piece_at(k++, o, step ? step : 5), outn = 0;
		int r;

		if (piece > whole.len - o)
			piece = whole.len - o;
		r = tpo_stop_feed(&st, whole.p + o, piece, out, sizeof(out), &outn);
		check(r == 0 || r == 1);
		check(!done || (r == 1 && outn == 0));
		memcpy(got.p + got.len, out, outn);
		got.len += outn;
		done |= r;
		o += piece;
	}
	{
		int r = tpo_stop_flush(&st, out, TPO_STOP_LEN_MAX);

		check(r >= 0 && (!done || r == 0));
		memcpy(got.p + got.len, out, (size_t)r);
		got.len += (size_t)r;
	}
	end = first_stop(whole.p, whole.len, stops, lens, nstop);
	check(done == (end < whole.len));
	check(got.len == end && !memcmp(got.p, whole.p, end));

	/* The template, with the text's halves as context and messages. */
	{
		size_t half = n / 2, cap = n % 97 * 13;
		int r;

		expand(tpl, (const char *)in, half, (const char *)in + half, n - half, &ref);
		r = tpo_template_fill(tpl, (const char *)in, half, (const char *)in + half,
				      n - half, out, cap);
		if (ref.len > cap)
			check(r == -E2BIG);
		else
			check(r == (int)ref.len && !memcmp(out, ref.p, ref.len));
	}
	return 0;
}
