/*
 * test_json.c — workers/json.c: validation positions, escape/unescape,
 * token helpers.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers/json.h"

static int unesc(const char *s, char *dst, size_t cap)
{
	return tpo_json_unescape(s, strlen(s), dst, cap);
}

Test(json, unescape_simple)
{
	char b[64];

	cr_assert_eq(unesc("plain", b, sizeof(b)), 5);
	cr_assert_str_eq(b, "plain");
	cr_assert_eq(unesc("a\\\"b\\\\c\\/d", b, sizeof(b)), 7);
	cr_assert_str_eq(b, "a\"b\\c/d");
	cr_assert_eq(unesc("\\b\\f\\n\\r\\t", b, sizeof(b)), 5);
	cr_assert_str_eq(b, "\b\f\n\r\t");
	cr_assert_eq(unesc("", b, sizeof(b)), 0);
	cr_assert_str_eq(b, "");
}

Test(json, unescape_unicode)
{
	char b[64];

	cr_assert_eq(unesc("\\u0041", b, sizeof(b)), 1);
	cr_assert_str_eq(b, "A");
	cr_assert_eq(unesc("\\u00e9", b, sizeof(b)), 2);
	cr_assert_str_eq(b, "\xc3\xa9");
	cr_assert_eq(unesc("\\u20AC", b, sizeof(b)), 3);
	cr_assert_str_eq(b, "\xe2\x82\xac");
	cr_assert_eq(unesc("x\\ud83d\\ude00y", b, sizeof(b)), 6);   /* U+1F600 */
	cr_assert_str_eq(b, "x\xf0\x9f\x98\x80y");
	cr_assert_eq(unesc("\\uDBFF\\uDFFF", b, sizeof(b)), 4);     /* U+10FFFF */
	cr_assert(memcmp(b, "\xf4\x8f\xbf\xbf", 5) == 0);
	cr_assert_eq(unesc("a\\u0000b", b, sizeof(b)), 3);          /* NUL inside */
	cr_assert(memcmp(b, "a\0b", 4) == 0);
}

Test(json, unescape_errors)
{
	char b[64];

	cr_assert_eq(unesc("\\x", b, sizeof(b)), -EINVAL);
	cr_assert_eq(unesc("abc\\", b, sizeof(b)), -EINVAL);
	cr_assert_eq(unesc("\\u12", b, sizeof(b)), -EINVAL);
	cr_assert_eq(unesc("\\u12g4", b, sizeof(b)), -EINVAL);
	cr_assert_eq(unesc("\\ud800", b, sizeof(b)), -EINVAL);          /* lone high */
	cr_assert_eq(unesc("\\ud800x", b, sizeof(b)), -EINVAL);
	cr_assert_eq(unesc("\\ud800\\u0041", b, sizeof(b)), -EINVAL);   /* high + non-low */
	cr_assert_eq(unesc("\\udc00", b, sizeof(b)), -EINVAL);          /* lone low */
	cr_assert_eq(unesc("abcd", b, 4), -ENOSPC);                    /* no room for NUL */
	cr_assert_eq(unesc("abcd", b, 5), 4);
	cr_assert_eq(unesc("\\u20ac", b, 3), -ENOSPC);
	cr_assert_eq(unesc("\\u20ac", b, 4), 3);
}

/* Text in pieces: a pair split between two is joined, other halves are
 * U+FFFD, and the strict decoder's errors that are not surrogates stay. */
static int text(const char *s, char *dst, size_t cap, unsigned *carry)
{
	return tpo_json_unescape_text(s, strlen(s), dst, cap, carry);
}

Test(json, unescape_text_pieces)
{
	char b[64];
	unsigned carry = 0;

	cr_assert_eq(text("x\\ud83d", b, sizeof(b), &carry), 1);       /* held */
	cr_assert_str_eq(b, "x");
	cr_assert_eq(carry, 0xd83d);
	cr_assert_eq(text("\\ude00y", b, sizeof(b), &carry), 5);        /* joined */
	cr_assert_str_eq(b, "\xf0\x9f\x98\x80y");
	cr_assert_eq(carry, 0);
	cr_assert_eq(text("\\uD83D", b, sizeof(b), &carry), 0);         /* all held */
	cr_assert_eq(carry, 0xd83d);
	cr_assert_eq(text("z", b, sizeof(b), &carry), 4);               /* never completed */
	cr_assert_str_eq(b, "\xef\xbf\xbdz");
	cr_assert_eq(text("\\ud800", b, 4, &carry), 0);                 /* fits: held */
	cr_assert_eq(text("\\ud800", b, 4, &carry), -ENOSPC);           /* no room for U+FFFD */
	carry = 0;
	cr_assert_eq(text("\\udc00-\\ud800\\u0041-\\ud83d\\ude00", b, sizeof(b), &carry), 13);
	cr_assert_str_eq(b, "\xef\xbf\xbd-\xef\xbf\xbd" "A-\xf0\x9f\x98\x80");
	cr_assert_eq(carry, 0);
	cr_assert_eq(text("\\ud800x", b, sizeof(b), &carry), 4);        /* high, not last */
	cr_assert_str_eq(b, "\xef\xbf\xbdx");
	cr_assert_eq(text("\\x", b, sizeof(b), &carry), -EINVAL);
	cr_assert_eq(text("\\u12", b, sizeof(b), &carry), -EINVAL);
	/* len + 5 always suffices: a carried half and a held one around nothing */
	carry = 0xd800;
	cr_assert_eq(text("\\ud800", b, 6 + 5, &carry), 3);
	cr_assert_eq(carry, 0xd800);
}

Test(json, escape)
{
	char b[64];
	size_t n;

	n = tpo_json_escape("a\"b\\c", 5, b, sizeof(b));
	cr_assert_eq(n, 7);
	cr_assert_str_eq(b, "a\\\"b\\\\c");
	n = tpo_json_escape("\n\r\t\b\f\x01\x1f", 7, b, sizeof(b));
	cr_assert_str_eq(b, "\\n\\r\\t\\b\\f\\u0001\\u001f");
	cr_assert_eq(n, strlen(b));
	n = tpo_json_escape("\0x", 2, b, sizeof(b));
	cr_assert_str_eq(b, "\\u0000x");
	cr_assert_eq(n, 7);
	/* UTF-8 and '/' pass through. */
	n = tpo_json_escape("caf\xc3\xa9/", 6, b, sizeof(b));
	cr_assert_str_eq(b, "caf\xc3\xa9/");
	cr_assert_eq(n, 6);
}

Test(json, escape_truncates_whole_escapes)
{
	char b[5];
	size_t n;

	cr_assert_eq(tpo_json_escape("ab\"cd", 5, NULL, 0), 6);
	n = tpo_json_escape("ab\"cd", 5, b, sizeof(b));
	cr_assert_eq(n, 6);
	cr_assert_str_eq(b, "ab\\\"");
	n = tpo_json_escape("a\x01", 2, b, sizeof(b));   /* "\u0001" does not fit after "a" */
	cr_assert_eq(n, 7);
	cr_assert_str_eq(b, "a");
}

/* Cut short, the output never ends inside a UTF-8 character: a client's
 * decoder would reject the whole answer (found by fuzz_json). */
Test(json, escape_truncates_whole_characters)
{
	char b[16];
	size_t n;

	/* "ab" then three 2-byte characters: 15 bytes of room end inside one */
	n = tpo_json_escape("ab\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 16, b, 16);
	cr_assert_eq(n, 16);
	cr_assert_str_eq(b, "ab\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9");
	n = tpo_json_escape("\xf0\x9f\x98\x80\xf0\x9f\x98\x80", 8, b, 8);   /* two emoji, room for 7 */
	cr_assert_eq(n, 8);
	cr_assert_str_eq(b, "\xf0\x9f\x98\x80");
	n = tpo_json_escape("\xe2\x82\xac", 3, b, 3);
	cr_assert_eq(n, 3);
	cr_assert_str_eq(b, "");
}

Test(json, escape_unescape_roundtrip)
{
	char src[256], esc[2048], back[256];
	size_t n;
	int i, r;

	for (i = 0; i < 255; i++)
		src[i] = (char)(i + 1);   /* every byte but NUL; bytes >= 0x80 pass through */
	n = tpo_json_escape(src, 255, esc, sizeof(esc));
	cr_assert_lt(n, sizeof(esc));
	r = tpo_json_unescape(esc, n, back, sizeof(back));
	cr_assert_eq(r, 255);
	cr_assert(memcmp(src, back, 255) == 0);
}

static void bad(const char *js, size_t off, const char *msg)
{
	struct tpo_json_error e;

	cr_assert_eq(tpo_json_validate(js, strlen(js), &e), -EINVAL, "accepted: %s", js);
	cr_assert_eq(e.off, off, "%s: off %zu, want %zu (%s)", js, e.off, off, e.msg);
	cr_assert_str_eq(e.msg, msg);
}

Test(json, validate_good)
{
	static const char *const ok[] = {
		"{}", "[]", " {\"a\": [1, -2.5e+3, 0, true, false, null, \"x\\u00e9\"]}\n",
		"\"s\"", "0", "-0.0E-1", "[[[]]]", "{\"a\":{\"b\":{}}}", "\"\xe2\x82\xac\"",
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		cr_assert_eq(tpo_json_validate(ok[i], strlen(ok[i]), NULL), 0, "%s", ok[i]);
}

Test(json, validate_errors)
{
	bad("", 0, "unexpected end of input, expected a value");
	bad("{\"a\" 1}", 5, "unexpected '1', expected ':'");
	bad("{\"a\": 1 \"b\": 2}", 8, "unexpected '\"', expected ',' or '}'");
	bad("[1 2]", 3, "unexpected '2', expected ',' or ']'");
	bad("[1,]", 3, "trailing comma before ']'");
	bad("{\"a\":1,}", 7, "trailing comma before '}'");
	bad("{1: 2}", 1, "unexpected '1', expected a string key");
	bad("{\"a\": tru}", 6, "invalid value 'tru' (strings need double quotes)");
	bad("{\"a\": 1.}", 6, "invalid number");
	bad("{\"a\": -}", 6, "invalid number");
	bad("{\"a\": 1x}", 6, "invalid number");
	bad("\"a\tb\"", 2, "control character in string (write it as an escape)");
	bad("\"\\q\"", 1, "invalid escape in string");
	bad("\"\\u12x4\"", 1, "invalid \\u escape (4 hex digits expected)");
	bad("\"\xc0\xaf\"", 1, "invalid UTF-8 in string");           /* overlong */
	bad("\"\xed\xa0\x80\"", 1, "invalid UTF-8 in string");       /* surrogate */
	bad("\"\xe2\x82\"", 1, "invalid UTF-8 in string");           /* truncated */
	bad("\"abc", 0, "unterminated string");
	bad("{} x", 3, "unexpected data after the JSON value");
	bad("[1] ]", 4, "unexpected data after the JSON value");
	bad("\xef\xbb\xbf{}", 0, "byte order mark not allowed (save the file as UTF-8 without BOM)");
	bad("{\"a\": @}", 6, "unexpected '@', expected a value");
	bad("{\"a\": \x01}", 6, "unexpected byte 0x01, expected a value");
}

Test(json, validate_depth)
{
	char js[2 * TPO_JSON_DEPTH_MAX + 8];
	size_t i;

	for (i = 0; i < TPO_JSON_DEPTH_MAX; i++) {
		js[i] = '[';
		js[2 * TPO_JSON_DEPTH_MAX - 1 - i] = ']';
	}
	cr_assert_eq(tpo_json_validate(js, 2 * TPO_JSON_DEPTH_MAX, NULL), 0);
	memmove(js + 1, js, 2 * TPO_JSON_DEPTH_MAX);
	js[0] = '[';
	js[2 * TPO_JSON_DEPTH_MAX + 1] = ']';
	cr_assert_eq(tpo_json_validate(js, 2 * TPO_JSON_DEPTH_MAX + 2, NULL), -EINVAL);
}

Test(json, linecol)
{
	static const char js[] = "ab\n\xc3\xa9x\n";
	int l, c;

	tpo_json_linecol(js, sizeof(js) - 1, 0, &l, &c);
	cr_assert(l == 1 && c == 1);
	tpo_json_linecol(js, sizeof(js) - 1, 3, &l, &c);
	cr_assert(l == 2 && c == 1);
	tpo_json_linecol(js, sizeof(js) - 1, 5, &l, &c);   /* 'x' after a 2-byte char */
	cr_assert(l == 2 && c == 2, "%d:%d", l, c);
	tpo_json_linecol(js, sizeof(js) - 1, 100, &l, &c); /* clamped to the end */
	cr_assert(l == 3 && c == 1);
}

Test(json, tokenize_and_helpers)
{
	static const char js[] = "{\"a\": [1, {\"x\": 2}], \"b\": true, \"c\": -9223372036854775808, "
				 "\"d\": \"s\\n\", \"e\": null, \"f\": 9223372036854775808, \"g\": 1.0}";
	jsmntok_t *t;
	int64_t v;
	bool bv;
	char s[8];
	int n, i;

	n = tpo_json_tokenize(js, strlen(js), &t, NULL);
	cr_assert_gt(n, 0);
	cr_assert_eq(t[0].type, JSMN_OBJECT);
	cr_assert_eq(t[0].size, 7);
	cr_assert(tpo_json_tok_eq(js, &t[1], "a"));
	cr_assert(!tpo_json_tok_eq(js, &t[1], "ab"));
	/* Skipping key "a" passes its whole array value. */
	i = tpo_json_skip(t, n, 1);
	cr_assert(tpo_json_tok_eq(js, &t[i], "b"), "skip landed on %d", i);
	cr_assert_eq(tpo_json_get_bool(js, &t[i + 1], &bv), 0);
	cr_assert(bv);
	cr_assert_eq(tpo_json_get_bool(js, &t[i], &bv), -EINVAL);
	i = tpo_json_skip(t, n, i);
	cr_assert_eq(tpo_json_get_int64(js, &t[i + 1], &v), 0);
	cr_assert_eq(v, INT64_MIN);
	i = tpo_json_skip(t, n, i);
	cr_assert_eq(tpo_json_get_string(js, &t[i + 1], s, sizeof(s)), 2);
	cr_assert_str_eq(s, "s\n");
	cr_assert_eq(tpo_json_get_int64(js, &t[i + 1], &v), -EINVAL);
	i = tpo_json_skip(t, n, i);
	cr_assert(tpo_json_is_null(js, &t[i + 1]));
	i = tpo_json_skip(t, n, i);
	cr_assert_eq(tpo_json_get_int64(js, &t[i + 1], &v), -ERANGE);
	i = tpo_json_skip(t, n, i);
	cr_assert_eq(tpo_json_get_int64(js, &t[i + 1], &v), -EINVAL);
	cr_assert_eq(tpo_json_skip(t, n, i), n);
	cr_assert_eq(tpo_json_skip(t, n, 0), n);
	cr_assert_eq(tpo_json_skip(t, n, n), -EINVAL);
	free(t);
}

Test(json, tokenize_rejects_what_jsmn_accepts)
{
	struct tpo_json_error e;
	jsmntok_t *t = (jsmntok_t *)1;

	/* Non-strict jsmn takes bare words and missing commas; we do not. */
	cr_assert_eq(tpo_json_tokenize("{\"a\": b}", 8, &t, &e), -EINVAL);
	cr_assert_null(t);
	cr_assert_eq(e.off, 6);
	cr_assert_eq(tpo_json_tokenize("[1 2]", 5, &t, &e), -EINVAL);
	cr_assert_eq(e.off, 3);
}

/* tpo_json_tokenize_into's one strict pass makes exactly jsmn's tokens. */
Test(json, tokenize_into_matches_jsmn)
{
	static const char *const docs[] = {
		"{}", "[]", "0", "\"s\"", "true", " null ", "[[[]]]", "[{}, [], \"\", 0]",
		" {\"a\": [1, -2.5e+3, 0, true, false, null, \"x\\u00e9\"]}\n",
		"{\"a\":{\"b\":{}},\"c\":[{\"d\":1},{\"e\":[2,3]}],\"f\":\"\\\"q\\\\\"}",
		"{\"id\":\"c-1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"choices\":"
		"[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\" tok\"},"
		"\"finish_reason\":null}],\"usage\":{\"prompt_tokens\":3}}",
	};
	jsmntok_t *into = NULL, small[2];
	unsigned cap = 0;

	for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
		jsmntok_t *ref = NULL;
		int n = tpo_json_tokenize(docs[i], strlen(docs[i]), &ref, NULL);
		int m = tpo_json_tokenize_into(docs[i], strlen(docs[i]), &into, &cap, NULL);

		cr_assert_gt(n, 0, "%s", docs[i]);
		cr_assert_eq(m, n, "%s: %d tokens, jsmn %d", docs[i], m, n);
		cr_assert_geq(cap, (unsigned)n);
		for (int k = 0; k < n; k++) {
			cr_assert_eq(into[k].type, ref[k].type, "%s: token %d type", docs[i], k);
			cr_assert_eq(into[k].start, ref[k].start, "%s: token %d start", docs[i], k);
			cr_assert_eq(into[k].end, ref[k].end, "%s: token %d end", docs[i], k);
			cr_assert_eq(into[k].size, ref[k].size, "%s: token %d size", docs[i], k);
		}
		free(ref);
	}
	/* A caller's array that is too small grows (it was malloc'd), and
	 * invalid input fails without touching the array. */
	{
		jsmntok_t *t = malloc(sizeof(small));
		unsigned c = 2;
		struct tpo_json_error e;

		cr_assert_eq(tpo_json_tokenize_into("[1,2,3]", 7, &t, &c, NULL), 4);
		cr_assert_geq(c, 4u);
		cr_assert_eq(t[3].start, 5);
		cr_assert_eq(tpo_json_tokenize_into("[1 2]", 5, &t, &c, &e), -EINVAL);
		cr_assert_eq(e.off, 3);
		free(t);
	}
	free(into);
}

/*
 * Strings are scanned eight bytes at a time while every byte is plain
 * ASCII: each byte that ends such a run (quote, escape, control character,
 * UTF-8, invalid UTF-8), at every offset around the word boundaries and
 * after runs of each length, is found as byte by byte. The unescaper copies
 * runs up to a backslash at once: its result and its -ENOSPC bound too.
 */
Test(json, string_runs_at_every_offset)
{
	static const struct {
		const char *ins;     /* raw bytes inside the quotes */
		int ok;              /* a valid string */
		const char *dec;     /* decoded bytes, NULL: same as ins */
	} cases[] = {
		{ "\\n", 1, "\n" },
		{ "\\\"", 1, "\"" },
		{ "\\\\", 1, "\\" },
		{ "\\u00e9", 1, "\xc3\xa9" },
		{ "\\ud83d\\ude00", 1, "\xf0\x9f\x98\x80" },
		{ "\xc3\xa9", 1, NULL },
		{ "\xe2\x82\xac", 1, NULL },
		{ "\xf0\x9f\x98\x80", 1, NULL },
		{ "\x7f", 1, NULL },
		{ "~ ", 1, NULL },
		{ "\x01", 0, NULL },
		{ "\x1f", 0, NULL },
		{ "\t", 0, NULL },
		{ "\xff", 0, NULL },
		{ "\xc3", 0, NULL },
		{ "\xed\xa0\x80", 0, NULL },     /* a surrogate in UTF-8 */
		{ "\\x", 0, NULL },
		{ "\"", 0, NULL },               /* ends the string early: garbage follows */
	};
	char js[128], want[128], got[128];
	jsmntok_t *toks = NULL;
	unsigned cap = 0;

	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		const char *ins = cases[k].ins;
		const char *dec = cases[k].dec ? cases[k].dec : ins;
		for (int pre = 0; pre <= 20; pre++) {
			for (int post = 0; post <= 20; post += 3) {
				size_t n = 0, wn = 0;
				int r;

				js[n++] = '"';
				for (int i = 0; i < pre; i++)
					js[n++] = want[wn++] = (char)('a' + i % 26);
				memcpy(js + n, ins, strlen(ins));
				n += strlen(ins);
				memcpy(want + wn, dec, strlen(dec));
				wn += strlen(dec);
				for (int i = 0; i < post; i++)
					js[n++] = want[wn++] = (char)('A' + i % 26);
				js[n++] = '"';
				js[n] = 0;
				want[wn] = 0;

				r = tpo_json_validate(js, n, NULL);
				cr_assert_eq(r, cases[k].ok ? 0 : -EINVAL, "case %zu pre %d post %d: %d",
					     k, pre, post, r);
				r = tpo_json_tokenize_into(js, n, &toks, &cap, NULL);
				if (!cases[k].ok) {
					cr_assert_lt(r, 0, "case %zu pre %d post %d", k, pre, post);
					continue;
				}
				cr_assert_eq(r, 1);
				cr_assert_eq(toks[0].type, JSMN_STRING);
				cr_assert_eq(toks[0].start, 1);
				cr_assert_eq(toks[0].end, (int)n - 1, "case %zu pre %d post %d", k, pre,
					     post);
				r = tpo_json_get_string(js, &toks[0], got, sizeof(got));
				cr_assert_eq(r, (int)wn, "case %zu pre %d post %d: %d", k, pre, post, r);
				cr_assert_eq(memcmp(got, want, wn + 1), 0, "case %zu pre %d post %d", k,
					     pre, post);
				/* One byte short of room for the result and its NUL. */
				r = tpo_json_get_string(js, &toks[0], got, wn);
				cr_assert_eq(r, -ENOSPC, "case %zu pre %d post %d: %d", k, pre, post, r);
			}
		}
	}
	free(toks);
}

/* The escaping of the byte-at-a-time definition, for comparison. */
static size_t escape_ref(const char *src, size_t len, char *dst, size_t cap)
{
	size_t need = 0, o = 0;
	int full = cap == 0;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)src[i];
		char tmp[8];
		size_t n;

		if (c == '"' || c == '\\')
			n = (size_t)snprintf(tmp, sizeof(tmp), "\\%c", c);
		else if (c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f')
			n = (size_t)snprintf(tmp, sizeof(tmp), "\\%c",
					     c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' :
					     c == '\b' ? 'b' : 'f');
		else if (c < 0x20)
			n = (size_t)snprintf(tmp, sizeof(tmp), "\\u%04x", c);
		else
			n = (size_t)snprintf(tmp, sizeof(tmp), "%c", c);
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

/* Runs of plain bytes are copied word by word: every kind of byte at every
 * offset and every output size gives what the definition gives. */
Test(json, escape_runs_at_every_offset_and_size)
{
	static const char special[] = { '"', '\\', '\n', '\x01', '\x1f', ' ', '\x7f', '\x80', '\xff', 'a' };
	char src[40], got[256], want[256];

	for (size_t k = 0; k < sizeof(special); k++)
		for (size_t at = 0; at < 24; at++)
		for (size_t gap = 1; gap <= 9; gap++) {
			size_t len = 24 + at % 7;
			for (size_t i = 0; i < len; i++)
				src[i] = (char)('a' + (i * 7) % 26);
			src[at] = special[k];
			/* A second special byte, in the same word or the next. */
			if (at + gap < len)
				src[at + gap] = special[(k + gap) % sizeof(special)];
			for (size_t cap = 0; cap <= 6 * len + 2; cap++) {
				size_t n, m;
				memset(got, 'X', sizeof(got));
				memset(want, 'X', sizeof(want));
				n = tpo_json_escape(src, len, cap ? got : NULL, cap);
				m = escape_ref(src, len, cap ? want : NULL, cap);
				cr_assert_eq(n, m, "byte 0x%02x at %zu, cap %zu: need %zu, want %zu",
					     (unsigned char)special[k], at, cap, n, m);
				cr_assert_eq(memcmp(got, want, sizeof(got)), 0,
					     "byte 0x%02x at %zu, cap %zu: '%.*s' want '%.*s'",
					     (unsigned char)special[k], at, cap, (int)cap, got, (int)cap, want);
			}
		}
}
