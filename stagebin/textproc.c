/*
 * textproc.c — UTF-8 validation and repair, stop sequences, token estimate,
 * template fill. See textproc.h for the contracts.
 */
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "stagebin/textproc.h"

static const char replacement[3] = { (char)0xef, (char)0xbf, (char)0xbd };

/*
 * Classifies the sequence starting at p[0] (n >= 1 bytes available):
 *   > 0  a well-formed sequence of that many bytes;
 *   0    a well-formed but incomplete prefix spanning all n bytes;
 *   < 0  ill-formed: -k, where k >= 1 is the maximal subpart that one
 *        U+FFFD replaces (Unicode 15, section 3.9, "U+FFFD substitution").
 * The second-byte ranges exclude overlongs (E0, F0), surrogates (ED) and
 * code points above U+10FFFF (F4).
 */
static int utf8_seq(const uint8_t *p, size_t n)
{
	uint8_t c = p[0], lo = 0x80, hi = 0xbf;
	int need;

	if (c < 0x80)
		return 1;
	if (c < 0xc2)
		return -1;
	if (c < 0xe0) {
		need = 2;
	} else if (c < 0xf0) {
		need = 3;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c < 0xf5) {
		need = 4;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else {
		return -1;
	}
	for (int i = 1; i < need; i++) {
		if ((size_t)i >= n)
			return 0;
		if (p[i] < lo || p[i] > hi)
			return -i;
		lo = 0x80;
		hi = 0xbf;
	}
	return need;
}

static int ascii8(const uint8_t *p)
{
	uint64_t w;

	memcpy(&w, p, sizeof(w));
	return (w & 0x8080808080808080ull) == 0;
}

int tpo_utf8_valid(const char *s, size_t n)
{
	const uint8_t *p = (const uint8_t *)s;
	size_t i = 0;

	while (i < n) {
		if (n - i >= 8 && ascii8(p + i)) {
			i += 8;
			continue;
		}
		if (p[i] < 0x80) {
			i++;
			continue;
		}
		int r = utf8_seq(p + i, n - i);
		if (r <= 0)
			return 0;
		i += (size_t)r;
	}
	return 1;
}

void tpo_utf8_joiner_init(struct tpo_utf8_joiner *j)
{
	j->npend = 0;
}

int tpo_utf8_join(struct tpo_utf8_joiner *j, const char *in, size_t n,
		  char *out, size_t cap, size_t *outn)
{
	const uint8_t *p = (const uint8_t *)in;
	size_t i = 0, o = 0;

	*outn = 0;
	if (cap < TPO_UTF8_JOIN_BOUND(n))
		return -ENOSPC;

	/* Resolve the pending prefix first; it is well-formed so far, so it
	 * either completes or, as a whole, is the maximal subpart to replace. */
	while (j->npend > 0 && i < n) {
		uint8_t tmp[4];
		size_t m = j->npend;

		memcpy(tmp, j->pend, m);
		while (m < 4 && i + (m - j->npend) < n)
			m++, tmp[m - 1] = p[i + (m - 1 - j->npend)];
		int r = utf8_seq(tmp, m);
		if (r == 0) {
			memcpy(j->pend, tmp, m);
			i += m - j->npend;
			j->npend = (uint8_t)m;
			*outn = o;
			return 0;
		}
		if (r > 0) {
			memcpy(out + o, tmp, (size_t)r);
			o += (size_t)r;
			i += (size_t)r - j->npend;
		} else {
			/* The failing byte lies past the pending ones. */
			memcpy(out + o, replacement, 3);
			o += 3;
			i += (size_t)-r - j->npend;
		}
		j->npend = 0;
	}

	while (i < n) {
		if (n - i >= 8 && ascii8(p + i)) {
			memcpy(out + o, p + i, 8);
			o += 8;
			i += 8;
			continue;
		}
		if (p[i] < 0x80) {
			out[o++] = (char)p[i++];
			continue;
		}
		int r = utf8_seq(p + i, n - i);
		if (r > 0) {
			memcpy(out + o, p + i, (size_t)r);
			o += (size_t)r;
			i += (size_t)r;
		} else if (r < 0) {
			memcpy(out + o, replacement, 3);
			o += 3;
			i += (size_t)-r;
		} else {
			memcpy(j->pend, p + i, n - i);
			j->npend = (uint8_t)(n - i);
			break;
		}
	}
	*outn = o;
	return 0;
}

int tpo_utf8_flush(struct tpo_utf8_joiner *j, char *out, size_t cap)
{
	if (j->npend == 0)
		return 0;
	if (cap < 3)
		return -ENOSPC;
	memcpy(out, replacement, 3);
	j->npend = 0;
	return 3;
}

size_t tpo_utf8_cut(const char *s, size_t k)
{
	size_t b = k;

	while (b > 0 && k - b < 3 && ((uint8_t)s[b] & 0xc0) == 0x80)
		b--;
	return b < k && ((uint8_t)s[b] & 0xc0) == 0xc0 ? b : k;
}

/* Appends t[0..n) (well-formed) to out[0..*o) as far as whole characters
 * fit in cap; returns 0 if some did not. */
static int put_chars(char *out, size_t *o, size_t cap, const char *t, size_t n)
{
	size_t k = n <= cap - *o ? n : tpo_utf8_cut(t, cap - *o);

	memcpy(out + *o, t, k);
	*o += k;
	return k == n;
}

size_t tpo_utf8_sanitize(const char *s, size_t n, char *out, size_t cap)
{
	struct tpo_utf8_joiner j;
	char tmp[TPO_UTF8_JOIN_BOUND(64)];
	size_t o = 0, got;
	int r;

	if (n <= cap && tpo_utf8_valid(s, n)) {
		memcpy(out, s, n);
		return n;
	}
	tpo_utf8_joiner_init(&j);
	for (size_t off = 0; off < n; off += 64) {
		size_t piece = n - off < 64 ? n - off : 64;

		tpo_utf8_join(&j, s + off, piece, tmp, sizeof(tmp), &got);
		if (!put_chars(out, &o, cap, tmp, got))
			return o;
	}
	r = tpo_utf8_flush(&j, tmp, sizeof(tmp));
	put_chars(out, &o, cap, tmp, (size_t)r);
	return o;
}

int tpo_stop_init(struct tpo_stopper *st, const char *const stops[],
		  const size_t lens[], int n)
{
	memset(st, 0, sizeof(*st));
	if (n < 0 || n > TPO_STOP_MAX)
		return -EINVAL;
	for (int i = 0; i < n; i++) {
		if (lens[i] > TPO_STOP_LEN_MAX)
			return -EINVAL;
		if (lens[i] == 0)
			continue;
		memcpy(st->stop[st->nstop], stops[i], lens[i]);
		st->len[st->nstop] = (uint16_t)lens[i];
		if (lens[i] > st->maxlen)
			st->maxlen = (uint32_t)lens[i];
		st->nstop++;
	}
	return 0;
}

int tpo_stop_init_packed(struct tpo_stopper *st, const char *packed, size_t len)
{
	const char *stops[TPO_STOP_MAX];
	size_t lens[TPO_STOP_MAX];
	size_t off = 0;
	int n = 0;

	while (off < len) {
		const char *nul = memchr(packed + off, '\0', len - off);
		size_t l = nul ? (size_t)(nul - (packed + off)) : len - off;

		if (n == TPO_STOP_MAX) {
			memset(st, 0, sizeof(*st));
			return -EINVAL;
		}
		stops[n] = packed + off;
		lens[n] = l;
		n++;
		off += l + 1;
	}
	return tpo_stop_init(st, stops, lens, n);
}

/* 1 if t[0..k) is a prefix of some stop string. */
static int is_stop_prefix(const struct tpo_stopper *st, const char *t, size_t k)
{
	for (int i = 0; i < st->nstop; i++)
		if (st->len[i] > k && memcmp(st->stop[i], t, k) == 0)
			return 1;
	return 0;
}

int tpo_stop_feed(struct tpo_stopper *st, const char *in, size_t n,
		  char *out, size_t cap, size_t *outn)
{
	size_t held = st->held, total, best, end, k;

	*outn = 0;
	if (st->done)
		return 1;
	if (st->nstop == 0) {
		if (cap < n)
			return -ENOSPC;
		memcpy(out, in, n);
		*outn = n;
		return 0;
	}
	if (cap < held + n)
		return -ENOSPC;

	/* out holds the unreleased text: withheld tail, then the new chunk. */
	memcpy(out, st->hold, held);
	memcpy(out + held, in, n);
	total = held + n;

	/* The withheld tail contains no complete match, so a match must end
	 * inside the new chunk. The cut is before the match that ends first
	 * (the longest of those ending there), as if the text came a byte at a
	 * time: however the model's tokens split the same text, the client
	 * gets the same answer (found by fuzz_text). */
	best = end = SIZE_MAX;
	for (int i = 0; i < st->nstop; i++) {
		size_t l = st->len[i], from = held >= l ? held - l + 1 : 0, at;

		if (total < l || from > total - l)
			continue;
		const char *m = memmem(out + from, total - from, st->stop[i], l);
		if (!m)
			continue;
		at = (size_t)(m - out);
		if (at + l < end || (at + l == end && at < best)) {
			best = at;
			end = at + l;
		}
	}
	if (best != SIZE_MAX) {
		st->done = 1;
		st->held = 0;
		*outn = best;
		return 1;
	}

	/* Withhold the longest suffix that can still begin a stop string. */
	k = st->maxlen - 1 < total ? st->maxlen - 1 : total;
	for (; k > 0; k--)
		if (is_stop_prefix(st, out + total - k, k))
			break;
	memcpy(st->hold, out + total - k, k);
	st->held = (uint32_t)k;
	*outn = total - k;
	return 0;
}

int tpo_stop_flush(struct tpo_stopper *st, char *out, size_t cap)
{
	size_t held = st->held;

	if (st->done)
		return 0;
	if (cap < held)
		return -ENOSPC;
	memcpy(out, st->hold, held);
	st->held = 0;
	return (int)held;
}

uint32_t tpo_usage_estimate_tokens(const char *s, size_t n)
{
	(void)s;
	if (n == 0)
		return 0;
	if (n / 4 >= UINT32_MAX)
		return UINT32_MAX;
	return (uint32_t)((n + 3) / 4);
}

int tpo_template_fill(const char *tpl, const char *context, size_t clen,
		      const char *messages, size_t mlen, char *out, size_t cap)
{
	size_t o = 0;

	if (cap > INT_MAX)
		cap = INT_MAX;
	while (*tpl) {
		const char *src = tpl;
		size_t len = 1, adv = 1;

		if (tpl[0] == '{') {
			if (tpl[1] == '{') {
				adv = 2;
			} else if (strncmp(tpl, "{context}", 9) == 0) {
				src = context;
				len = clen;
				adv = 9;
			} else if (strncmp(tpl, "{messages}", 10) == 0) {
				src = messages;
				len = mlen;
				adv = 10;
			}
		} else {
			/* Copy a run of plain text at once. */
			const char *brace = strchr(tpl, '{');

			len = brace ? (size_t)(brace - tpl) : strlen(tpl);
			adv = len;
		}
		if (len > cap - o)
			return -E2BIG;
		if (len)
			memcpy(out + o, src, len);
		o += len;
		tpl += adv;
	}
	return (int)o;
}
