/*
 * json.c — strict JSON validation, jsmn tokenizing, escape/unescape.
 */
#include "workers/json.h"
#include "stagebin/textproc.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- validation ------------------------------------------------------ */

struct vstate {
	const unsigned char *s;
	size_t len, pos;
	struct tpo_json_error *err;
	/* Tokens as jsmn makes them (tpo_json_tokenize_into): written while
	 * n < cap, counted always. toks NULL: validation only. */
	jsmntok_t *toks;
	unsigned cap, n;
};

/* A token at the current position; its index (maybe >= cap: not stored). */
static unsigned vtok(struct vstate *v, jsmntype_t type, size_t start, size_t end, int size)
{
	unsigned i = v->n++;

	if (i < v->cap) {
		v->toks[i].type = type;
		v->toks[i].start = (int)start;
		v->toks[i].end = (int)end;
		v->toks[i].size = size;
	}
	return i;
}

static int vfail(struct vstate *v, size_t pos, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int vfail(struct vstate *v, size_t pos, const char *fmt, ...)
{
	va_list ap;

	if (v->err) {
		v->err->off = pos;
		va_start(ap, fmt);
		vsnprintf(v->err->msg, sizeof(v->err->msg), fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

static inline void vws(struct vstate *v)
{
	while (v->pos < v->len) {
		unsigned char c = v->s[v->pos];
		/* Most calls find a token at once: one test for them. */
		if (c > ' ' || (c != ' ' && c != '\t' && c != '\n' && c != '\r'))
			break;
		v->pos++;
	}
}

/*
 * 1 for the bytes a string may hold without a further check: 0x20..0x7f
 * except '"' and '\\'. Others end a run of them: the quote, an escape, a
 * control character (an error) or the lead byte of a UTF-8 sequence.
 */
static const unsigned char str_plain[256] = {
	/* 0x00-0x1f: control characters */
	[0x20] = 1, [0x21] = 1,             [0x23] = 1, [0x24] = 1, [0x25] = 1, [0x26] = 1,
	[0x27] = 1, [0x28] = 1, [0x29] = 1, [0x2a] = 1, [0x2b] = 1, [0x2c] = 1, [0x2d] = 1,
	[0x2e] = 1, [0x2f] = 1, [0x30] = 1, [0x31] = 1, [0x32] = 1, [0x33] = 1, [0x34] = 1,
	[0x35] = 1, [0x36] = 1, [0x37] = 1, [0x38] = 1, [0x39] = 1, [0x3a] = 1, [0x3b] = 1,
	[0x3c] = 1, [0x3d] = 1, [0x3e] = 1, [0x3f] = 1, [0x40] = 1, [0x41] = 1, [0x42] = 1,
	[0x43] = 1, [0x44] = 1, [0x45] = 1, [0x46] = 1, [0x47] = 1, [0x48] = 1, [0x49] = 1,
	[0x4a] = 1, [0x4b] = 1, [0x4c] = 1, [0x4d] = 1, [0x4e] = 1, [0x4f] = 1, [0x50] = 1,
	[0x51] = 1, [0x52] = 1, [0x53] = 1, [0x54] = 1, [0x55] = 1, [0x56] = 1, [0x57] = 1,
	[0x58] = 1, [0x59] = 1, [0x5a] = 1, [0x5b] = 1,             [0x5d] = 1, [0x5e] = 1,
	[0x5f] = 1, [0x60] = 1, [0x61] = 1, [0x62] = 1, [0x63] = 1, [0x64] = 1, [0x65] = 1,
	[0x66] = 1, [0x67] = 1, [0x68] = 1, [0x69] = 1, [0x6a] = 1, [0x6b] = 1, [0x6c] = 1,
	[0x6d] = 1, [0x6e] = 1, [0x6f] = 1, [0x70] = 1, [0x71] = 1, [0x72] = 1, [0x73] = 1,
	[0x74] = 1, [0x75] = 1, [0x76] = 1, [0x77] = 1, [0x78] = 1, [0x79] = 1, [0x7a] = 1,
	[0x7b] = 1, [0x7c] = 1, [0x7d] = 1, [0x7e] = 1, [0x7f] = 1,
	/* 0x80-0xff: UTF-8 */
};

/* The word-at-a-time scans below read the first byte as the lowest. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "little-endian byte order assumed");

#define ONES  0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/*
 * The end of the run of bytes at s[p..n) that a JSON string holds as they
 * are: all but control characters, '"' and '\\', and, unless utf8 (the
 * bytes are known to be valid), bytes >= 0x80. Eight bytes at a time, then
 * byte by byte. (y - ONES * k) & ~y & HIGHS flags the bytes of y below k
 * (k <= 0x80): k 0x20 on x for control characters, k 1 on its XORs with the
 * quote and the backslash; x & HIGHS flags bytes >= 0x80, and when it is
 * part of the sum the & ~y may go (every other byte is < 0x80). A borrow
 * only runs upwards, so the lowest flag is exact (little-endian: the lowest
 * byte comes first).
 */
static inline size_t plain_run(const unsigned char *s, size_t p, size_t n, int utf8)
{
	while (p + 8 <= n) {
		uint64_t x, q, b, m;

		memcpy(&x, s + p, 8);
		q = x ^ (ONES * '"');
		b = x ^ (ONES * '\\');
		if (utf8)
			m = ((x - ONES * 0x20) & ~x) | ((q - ONES) & ~q) | ((b - ONES) & ~b);
		else   /* x flags bytes >= 0x80, so the others are < 0x80: no & ~y */
			m = (x - ONES * 0x20) | (q - ONES) | (b - ONES) | x;
		m &= HIGHS;
		if (m)
			return p + (size_t)__builtin_ctzll(m) / 8;
		p += 8;
	}
	while (p < n && (str_plain[s[p]] || (utf8 && s[p] >= 0x80)))
		p++;
	return p;
}

static int is_hex(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int is_word(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       c == '_' || c == '.' || c == '+' || c == '-';
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t k, i;
	unsigned char lo = 0x80, hi = 0xbf;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		k = 2;
	else if (c >= 0xe0 && c <= 0xef)
		k = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		k = 4;
	else
		return 0;
	if (n < k)
		return 0;
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;   /* no UTF-16 surrogates */
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;   /* <= U+10FFFF */
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < k; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return k;
}

/* The rest of the string opened at start, from v->pos: escapes, UTF-8,
 * errors (the slow path of vstring). */
static int vstring_rest(struct vstate *v, size_t start, int key)
{
	for (;;) {
		const unsigned char *s = v->s;
		unsigned char c;
		size_t k, p = v->pos;

		/* Plain ASCII needs no check beyond this (most of any text). */
		p = plain_run(s, p, v->len, 0);
		v->pos = p;
		if (v->pos >= v->len)
			return vfail(v, start, "unterminated string");
		c = v->s[v->pos];
		if (c == '"') {
			if (v->toks)
				vtok(v, JSMN_STRING, start + 1, v->pos, key);
			v->pos++;
			return 0;
		}
		if (c == '\\') {
			if (v->pos + 1 >= v->len)
				return vfail(v, start, "unterminated string");
			c = v->s[v->pos + 1];
			if (c && strchr("\"\\/bfnrt", c)) {
				v->pos += 2;
				continue;
			}
			if (c != 'u')
				return vfail(v, v->pos, "invalid escape in string");
			for (k = 2; k < 6; k++)
				if (v->pos + k >= v->len || !is_hex(v->s[v->pos + k]))
					return vfail(v, v->pos, "invalid \\u escape (4 hex digits expected)");
			v->pos += 6;
			continue;
		}
		if (c < 0x20)
			return vfail(v, v->pos, "control character in string (write it as an escape)");
		k = utf8_seq(v->s + v->pos, v->len - v->pos);
		if (k == 0)
			return vfail(v, v->pos, "invalid UTF-8 in string");
		v->pos += k;
	}
}

/* A string; key: an object key (jsmn gives it size 1: its value). One plain
 * ASCII run up to the closing quote (most keys and values) is decided here,
 * inline; anything else goes on in vstring_rest. */
static inline int vstring(struct vstate *v, int key)
{
	size_t start = v->pos, p = plain_run(v->s, start + 1, v->len, 0);

	if (p < v->len && v->s[p] == '"') {
		if (v->toks)
			vtok(v, JSMN_STRING, start + 1, p, key);
		v->pos = p + 1;
		return 0;
	}
	v->pos = p;
	return vstring_rest(v, start, key);
}

static int vnumber(struct vstate *v)
{
	size_t start = v->pos, p = v->pos;
	const unsigned char *s = v->s;
	size_t n = v->len;

	if (p < n && s[p] == '-')
		p++;
	if (p < n && s[p] == '0') {
		p++;
	} else if (p < n && s[p] >= '1' && s[p] <= '9') {
		while (p < n && s[p] >= '0' && s[p] <= '9')
			p++;
	} else {
		goto bad;
	}
	if (p < n && s[p] == '.') {
		p++;
		if (!(p < n && s[p] >= '0' && s[p] <= '9'))
			goto bad;
		while (p < n && s[p] >= '0' && s[p] <= '9')
			p++;
	}
	if (p < n && (s[p] == 'e' || s[p] == 'E')) {
		p++;
		if (p < n && (s[p] == '+' || s[p] == '-'))
			p++;
		if (!(p < n && s[p] >= '0' && s[p] <= '9'))
			goto bad;
		while (p < n && s[p] >= '0' && s[p] <= '9')
			p++;
	}
	if (p < n && is_word(s[p]))
		goto bad;
	if (v->toks)
		vtok(v, JSMN_PRIMITIVE, start, p, 0);
	v->pos = p;
	return 0;
bad:
	return vfail(v, start, "invalid number");
}

/* A bare word: true, false, null, or an error naming it. */
static int vword(struct vstate *v)
{
	size_t start = v->pos, p = v->pos, n;

	while (p < v->len && is_word(v->s[p]))
		p++;
	n = p - start;
	if ((n == 4 && !memcmp(v->s + start, "true", 4)) ||
	    (n == 5 && !memcmp(v->s + start, "false", 5)) ||
	    (n == 4 && !memcmp(v->s + start, "null", 4))) {
		if (v->toks)
			vtok(v, JSMN_PRIMITIVE, start, p, 0);
		v->pos = p;
		return 0;
	}
	if (n > 40)
		n = 40;
	return vfail(v, start, "invalid value '%.*s' (strings need double quotes)",
		     (int)n, (const char *)v->s + start);
}

static int vunexpected(struct vstate *v, const char *what)
{
	unsigned char c;

	if (v->pos >= v->len)
		return vfail(v, v->pos, "unexpected end of input, expected %s", what);
	c = v->s[v->pos];
	if (c >= 0x21 && c < 0x7f)
		return vfail(v, v->pos, "unexpected '%c', expected %s", c, what);
	return vfail(v, v->pos, "unexpected byte 0x%02x, expected %s", c, what);
}

static int vvalue(struct vstate *v, int depth);

/* A member's or an element's value: strings and numbers (most values)
 * without the cost of a recursive call. */
static inline int vitem(struct vstate *v, int depth)
{
	unsigned char c;

	vws(v);
	c = v->pos < v->len ? v->s[v->pos] : 0;
	if (c == '"')
		return vstring(v, 0);
	if (c == '-' || (c >= '0' && c <= '9'))
		return vnumber(v);
	return vvalue(v, depth);
}

static int vvalue(struct vstate *v, int depth)
{
	unsigned char c;
	int r;

	vws(v);
	if (v->pos >= v->len)
		return vunexpected(v, "a value");
	c = v->s[v->pos];
	if (c == '{' || c == '[') {
		unsigned char close = c == '{' ? '}' : ']';
		unsigned tok = 0;
		int size = 0;

		if (depth >= TPO_JSON_DEPTH_MAX)
			return vfail(v, v->pos, "nesting deeper than %d levels", TPO_JSON_DEPTH_MAX);
		if (v->toks)
			tok = vtok(v, c == '{' ? JSMN_OBJECT : JSMN_ARRAY, v->pos, 0, 0);
		v->pos++;
		vws(v);
		for (;;) {
			if (v->pos < v->len && v->s[v->pos] == close && size == 0) {
				v->pos++;
				break;
			}
			if (c == '{') {
				vws(v);
				if (v->pos >= v->len || v->s[v->pos] != '"') {
					if (v->pos < v->len && v->s[v->pos] == '}')
						return vfail(v, v->pos, "trailing comma before '}'");
					return vunexpected(v, "a string key");
				}
				if ((r = vstring(v, 1)) < 0)
					return r;
				vws(v);
				if (v->pos >= v->len || v->s[v->pos] != ':')
					return vunexpected(v, "':'");
				v->pos++;
			} else {
				vws(v);
				if (v->pos < v->len && v->s[v->pos] == ']')
					return vfail(v, v->pos, "trailing comma before ']'");
			}
			if ((r = vitem(v, depth + 1)) < 0)
				return r;
			size++;
			vws(v);
			if (v->pos < v->len && v->s[v->pos] == ',') {
				v->pos++;
				continue;
			}
			if (v->pos < v->len && v->s[v->pos] == close) {
				v->pos++;
				break;
			}
			return vunexpected(v, c == '{' ? "',' or '}'" : "',' or ']'");
		}
		if (tok < v->cap) {
			v->toks[tok].end = (int)v->pos;
			v->toks[tok].size = size;
		}
		return 0;
	}
	if (c == '"')
		return vstring(v, 0);
	if (c == '-' || (c >= '0' && c <= '9'))
		return vnumber(v);
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_')
		return vword(v);
	return vunexpected(v, "a value");
}

int tpo_json_validate(const char *js, size_t len, struct tpo_json_error *err)
{
	struct vstate v = { (const unsigned char *)js, len, 0, err, NULL, 0, 0 };
	int r;

	if (len >= 3 && !memcmp(js, "\xef\xbb\xbf", 3))
		return vfail(&v, 0, "byte order mark not allowed (save the file as UTF-8 without BOM)");
	if ((r = vvalue(&v, 0)) < 0)
		return r;
	vws(&v);
	if (v.pos < len)
		return vfail(&v, v.pos, "unexpected data after the JSON value");
	return 0;
}

size_t tpo_json_string_end(const char *js, size_t len, size_t q)
{
	struct vstate v = { (const unsigned char *)js, len, q, NULL, NULL, 0, 0 };

	if (q >= len || js[q] != '"' || vstring(&v, 0) < 0)
		return (size_t)-1;
	return v.pos - 1;
}

int tpo_json_tokenize(const char *js, size_t len, jsmntok_t **toks, struct tpo_json_error *err)
{
	jsmn_parser p;
	jsmntok_t *t;
	int n, r;

	*toks = NULL;
	if (len > INT_MAX)
		return -EFBIG;
	r = tpo_json_validate(js, len, err);
	if (r < 0)
		return r;
	jsmn_init(&p);
	n = jsmn_parse(&p, js, len, NULL, 0);
	if (n <= 0)
		goto err_jsmn;
	t = calloc((size_t)n, sizeof(*t));
	if (!t)
		return -ENOMEM;
	jsmn_init(&p);
	r = jsmn_parse(&p, js, len, t, (unsigned)n);
	if (r != n) {
		free(t);
		goto err_jsmn;
	}
	*toks = t;
	return n;
err_jsmn:
	/* Unreachable after validation; kept so a jsmn quirk is an error, not a crash. */
	if (err) {
		err->off = 0;
		snprintf(err->msg, sizeof(err->msg), "jsmn rejected the input");
	}
	return -EINVAL;
}

int tpo_json_tokenize_into(const char *js, size_t len, jsmntok_t **toks, unsigned *cap,
			   struct tpo_json_error *err)
{
	static jsmntok_t none;
	struct vstate v;
	int r;

	if (len > INT_MAX)
		return -EFBIG;
	/* One strict pass validates and writes jsmn's tokens; a second only
	 * when the array had to grow. */
	for (int pass = 0; pass < 2; pass++) {
		v = (struct vstate){ (const unsigned char *)js, len, 0, err,
				     *toks ? *toks : &none, *toks ? *cap : 0, 0 };
		if (len >= 3 && !memcmp(js, "\xef\xbb\xbf", 3))
			return tpo_json_validate(js, len, err);
		r = vvalue(&v, 0);
		if (r < 0)
			return r;
		vws(&v);
		if (v.pos < len)
			return vfail(&v, v.pos, "unexpected data after the JSON value");
		if (v.n <= v.cap)
			return (int)v.n;
		if (pass == 0) {
			unsigned want = *cap ? *cap : 32;
			jsmntok_t *t;

			while (want < v.n)
				want *= 2;
			t = realloc(*toks, (size_t)want * sizeof(*t));
			if (!t)
				return -ENOMEM;
			*toks = t;
			*cap = want;
		}
	}
	return -EINVAL;   /* unreachable: the second pass had room */
}

void tpo_json_linecol(const char *js, size_t len, size_t off, int *line, int *col)
{
	int l = 1, c = 1;
	size_t i;

	if (off > len)
		off = len;
	for (i = 0; i < off; i++) {
		unsigned char ch = (unsigned char)js[i];
		if (ch == '\n') {
			l++;
			c = 1;
		} else if ((ch & 0xc0) != 0x80) {
			c++;
		}
	}
	*line = l;
	*col = c;
}

/* ---- strings --------------------------------------------------------- */

static int hex4(const char *s, size_t n, unsigned *out)
{
	unsigned v = 0;
	size_t i;

	if (n < 4)
		return -EINVAL;
	for (i = 0; i < 4; i++) {
		unsigned char c = (unsigned char)s[i];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -EINVAL;
	}
	*out = v;
	return 0;
}

static size_t utf8_put(unsigned cp, char *o)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xc0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xe0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		o[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	o[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/*
 * The decoder of both entry points. carry NULL: strict (an unpaired
 * surrogate is -EINVAL). Else text in pieces: *carry is a high surrogate
 * the last piece ended with (0: none); unpaired halves become U+FFFD.
 */
static int unescape(const char *src, size_t len, char *dst, size_t cap, unsigned *carry)
{
	size_t i = 0, o = 0;
	unsigned cp, lo;

	if (carry && *carry) {
		if (cap < 5)
			return -ENOSPC;
		/* The low half opens this piece, or the carried one was alone. */
		if (len >= 6 && src[0] == '\\' && src[1] == 'u' && hex4(src + 2, len - 2, &lo) == 0 &&
		    lo >= 0xdc00 && lo <= 0xdfff) {
			cp = 0x10000 + ((*carry - 0xd800) << 10) + (lo - 0xdc00);
			i = 6;
		} else {
			cp = 0xfffd;
		}
		*carry = 0;
		o = utf8_put(cp, dst);
	}
	while (i < len) {
		char tmp[4];
		size_t n;

		if (src[i] != '\\') {
			/* The run up to the next escape, copied at once. */
			const char *bs = memchr(src + i, '\\', len - i);
			size_t run = bs ? (size_t)(bs - (src + i)) : len - i;
			if (o + run >= cap)
				return -ENOSPC;
			memcpy(dst + o, src + i, run);
			o += run;
			i += run;
			continue;
		}
		if (i + 1 >= len)
			return -EINVAL;
		switch (src[i + 1]) {
		case '"': tmp[0] = '"'; break;
		case '\\': tmp[0] = '\\'; break;
		case '/': tmp[0] = '/'; break;
		case 'b': tmp[0] = '\b'; break;
		case 'f': tmp[0] = '\f'; break;
		case 'n': tmp[0] = '\n'; break;
		case 'r': tmp[0] = '\r'; break;
		case 't': tmp[0] = '\t'; break;
		case 'u':
			break;
		default:
			return -EINVAL;
		}
		if (src[i + 1] != 'u') {
			n = 1;
			i += 2;
		} else {
			if (hex4(src + i + 2, len - i - 2, &cp) < 0)
				return -EINVAL;
			i += 6;
			if (cp >= 0xd800 && cp <= 0xdbff && i + 6 <= len && src[i] == '\\' &&
			    src[i + 1] == 'u' && hex4(src + i + 2, len - i - 2, &lo) == 0 &&
			    lo >= 0xdc00 && lo <= 0xdfff) {
				i += 6;
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			} else if (cp >= 0xd800 && cp <= 0xdfff) {
				if (!carry)
					return -EINVAL;   /* unpaired */
				if (cp <= 0xdbff && i == len) {
					*carry = cp;      /* its low half may open the next piece */
					break;
				}
				cp = 0xfffd;
			}
			n = utf8_put(cp, tmp);
		}
		if (o + n >= cap)
			return -ENOSPC;
		memcpy(dst + o, tmp, n);
		o += n;
	}
	if (o >= cap)
		return -ENOSPC;
	dst[o] = '\0';
	return (int)o;
}

int tpo_json_unescape(const char *src, size_t len, char *dst, size_t cap)
{
	return unescape(src, len, dst, cap, NULL);
}

int tpo_json_unescape_text(const char *src, size_t len, char *dst, size_t cap, unsigned *carry)
{
	return unescape(src, len, dst, cap, carry);
}

size_t tpo_json_escape(const char *src, size_t len, char *dst, size_t cap)
{
	static const char hex[] = "0123456789abcdef";
	size_t i, need = 0, o = 0;
	int full = cap == 0;

	for (i = 0; i < len; i++) {
		unsigned char c;
		char tmp[6];
		size_t n = 2, run = plain_run((const unsigned char *)src, i, len, 1) - i;

		/* A run of plain bytes at once, as far as it fits. */
		if (run) {
			size_t k = full || o + 1 >= cap ? 0 : cap - 1 - o;
			if (k >= run)
				k = run;
			else   /* cut: not inside a character */
				k = tpo_utf8_cut(src + i, k);
			if (k) {
				memcpy(dst + o, src + i, k);
				o += k;
			}
			if (k < run)
				full = 1;
			need += run;
			i += run;
			if (i == len)
				break;
		}
		c = (unsigned char)src[i];

		tmp[0] = '\\';
		switch (c) {
		case '"': tmp[1] = '"'; break;
		case '\\': tmp[1] = '\\'; break;
		case '\n': tmp[1] = 'n'; break;
		case '\r': tmp[1] = 'r'; break;
		case '\t': tmp[1] = 't'; break;
		case '\b': tmp[1] = 'b'; break;
		case '\f': tmp[1] = 'f'; break;
		default:
			if (c < 0x20) {
				memcpy(tmp + 1, "u00", 3);
				tmp[4] = hex[c >> 4];
				tmp[5] = hex[c & 15];
				n = 6;
			} else {
				tmp[0] = (char)c;
				n = 1;
			}
		}
		need += n;
		if (!full && o + n < cap) {
			memcpy(dst + o, tmp, n);
			o += n;
		} else {
			full = 1;
		}
	}
	if (cap > 0)
		dst[o] = '\0';
	return need;
}

/* ---- tokens ---------------------------------------------------------- */

int tpo_json_tok_eq(const char *js, const jsmntok_t *t, const char *s)
{
	size_t n = strlen(s);

	return t->end >= t->start && (size_t)(t->end - t->start) == n &&
	       memcmp(js + t->start, s, n) == 0;
}

int tpo_json_skip(const jsmntok_t *toks, int ntoks, int i)
{
	int pending = 1;

	if (i < 0 || i >= ntoks)
		return -EINVAL;
	while (pending > 0) {
		if (i >= ntoks)
			return -EINVAL;
		pending += toks[i].size - 1;
		i++;
	}
	return i;
}

int tpo_json_get_int64(const char *js, const jsmntok_t *t, int64_t *out)
{
	const char *s = js + t->start;
	int n = t->end - t->start, i = 0, neg = 0;
	uint64_t v = 0, lim;

	if (t->type != JSMN_PRIMITIVE || n <= 0)
		return -EINVAL;
	if (s[0] == '-') {
		neg = 1;
		i = 1;
	}
	if (i >= n)
		return -EINVAL;
	lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		if (v > (lim - (uint64_t)(s[i] - '0')) / 10)
			goto range;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = neg ? (int64_t)(0 - v) : (int64_t)v;
	return 0;
range:
	/* Still report a non-integer as -EINVAL, not -ERANGE. */
	for (; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
	return -ERANGE;
}

int tpo_json_get_bool(const char *js, const jsmntok_t *t, bool *out)
{
	if (t->type != JSMN_PRIMITIVE)
		return -EINVAL;
	if (tpo_json_tok_eq(js, t, "true")) {
		*out = true;
		return 0;
	}
	if (tpo_json_tok_eq(js, t, "false")) {
		*out = false;
		return 0;
	}
	return -EINVAL;
}

int tpo_json_is_null(const char *js, const jsmntok_t *t)
{
	return t->type == JSMN_PRIMITIVE && tpo_json_tok_eq(js, t, "null");
}

int tpo_json_get_string(const char *js, const jsmntok_t *t, char *dst, size_t cap)
{
	if (t->type != JSMN_STRING || t->end < t->start)
		return -EINVAL;
	return tpo_json_unescape(js + t->start, (size_t)(t->end - t->start), dst, cap);
}

int tpo_json_find(const char *js, const jsmntok_t *toks, int ntoks, int root,
		  const char *path)
{
	int i = root;

	if (root < 0 || root >= ntoks)
		return -EINVAL;
	while (*path) {
		const char *dot = strchr(path, '.');
		size_t n = dot ? (size_t)(dot - path) : strlen(path);
		char seg[64];
		int k, found = -1;

		if (n == 0 || n >= sizeof(seg))
			return -EINVAL;
		memcpy(seg, path, n);
		seg[n] = 0;
		if (toks[i].type == JSMN_OBJECT) {
			k = i + 1;
			for (int m = 0; m < toks[i].size && k < ntoks; m++) {
				if (toks[k].type == JSMN_STRING && tpo_json_tok_eq(js, &toks[k], seg)) {
					found = k + 1;
					break;
				}
				k = tpo_json_skip(toks, ntoks, k);
				if (k < 0)
					return -EINVAL;
			}
		} else if (toks[i].type == JSMN_ARRAY) {
			char *e;
			long want = strtol(seg, &e, 10);
			if (*e || want < 0)
				return -ENOENT;
			k = i + 1;
			for (int m = 0; m < toks[i].size && k < ntoks; m++) {
				if (m == want) {
					found = k;
					break;
				}
				k = tpo_json_skip(toks, ntoks, k);
				if (k < 0)
					return -EINVAL;
			}
		}
		if (found < 0 || found >= ntoks)
			return -ENOENT;
		i = found;
		path += n + (dot ? 1 : 0);
	}
	return i;
}
