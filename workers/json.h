/*
 * json.h — small JSON helpers around jsmn: strict validation with a
 * position, tokenizing with a dynamic token count, string escape/unescape
 * and token accessors.
 *
 * jsmn as Debian ships it is compiled non-strict (workers/jsmn_impl.c): it
 * accepts bare words, missing commas and trailing garbage. Run
 * tpo_json_validate() first (tpo_json_tokenize() does) when the input is not
 * trusted; after it succeeds, jsmn's tokens describe a well-formed RFC 8259
 * document: an object's size is its number of keys, each key token has size
 * 1 and is followed by its value's subtree.
 *
 * Thread-safe; no state. Nothing here allocates except the tokenizers.
 */
#ifndef TPO_JSON_H
#define TPO_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JSMN_HEADER
#include <jsmn.h>

#define TPO_JSON_DEPTH_MAX 128   /* deeper nesting is a validation error */

struct tpo_json_error {
	size_t off;        /* byte offset of the offending character */
	char   msg[96];    /* e.g. "expected ',' or '}'" */
};

/*
 * Checks that js[0..len) is exactly one RFC 8259 JSON value (whitespace
 * around it allowed), with valid UTF-8 in strings and no NUL byte anywhere.
 * Returns 0, or -EINVAL with the first problem in *err (may be NULL). Empty
 * input is an error ("unexpected end of input").
 */
int tpo_json_validate(const char *js, size_t len, struct tpo_json_error *err);
/* The valid JSON string whose opening quote is js[q]: the index of its
 * closing quote, or (size_t)-1 (not a string, or not a valid one). */
size_t tpo_json_string_end(const char *js, size_t len, size_t q);

/*
 * Validates, then tokenizes js[0..len) with jsmn into a malloc'd array
 * (*toks, freed by the caller with free()). Returns the token count (>= 1),
 * -EINVAL (syntax; *err filled if err != NULL), -EFBIG (len > INT_MAX) or
 * -ENOMEM.
 */
int tpo_json_tokenize(const char *js, size_t len, jsmntok_t **toks, struct tpo_json_error *err);

/*
 * Like tpo_json_tokenize, into a caller-kept array: *toks holds *cap tokens
 * (NULL and 0 at first) and grows when js needs more, so a caller parsing
 * many documents allocates only while its largest grows. The tokens are
 * jsmn's, written by the validating pass itself (a second pass only when
 * the array grows). The caller frees *toks. Same returns.
 */
int tpo_json_tokenize_into(const char *js, size_t len, jsmntok_t **toks, unsigned *cap,
			   struct tpo_json_error *err);

/* 1-based line and column of byte offset off; columns count UTF-8 characters. */
void tpo_json_linecol(const char *js, size_t len, size_t off, int *line, int *col);

/*
 * Decodes the JSON string body src[0..len) (between the quotes) into dst:
 * \" \\ \/ \b \f \n \r \t and \uXXXX, surrogate pairs joined into one UTF-8
 * sequence; other bytes are copied. Writes a NUL after the result. Returns
 * the decoded length (<= len, so cap = len + 1 always suffices; \u0000
 * decodes to a NUL byte inside the result), -EINVAL for a malformed escape
 * or an unpaired surrogate, -ENOSPC if cap < length + 1.
 */
int tpo_json_unescape(const char *src, size_t len, char *dst, size_t cap);

/*
 * As tpo_json_unescape, for text that arrives in pieces (a model's tokens,
 * one JSON string per chunk, where a server that slices UTF-16 text may
 * split a surrogate pair between two chunks): nothing is refused for its
 * surrogates. A high surrogate escape that ends src is kept in *carry (0:
 * none; the caller keeps it between pieces) instead of being written; the
 * next piece completes it with the low half it opens with, or writes it as
 * U+FFFD. Any other unpaired surrogate decodes to U+FFFD. cap = len + 5
 * always suffices (give that: after -ENOSPC *carry may be lost). Same
 * returns, but for surrogates.
 */
int tpo_json_unescape_text(const char *src, size_t len, char *dst, size_t cap, unsigned *carry);

/*
 * Escapes src[0..len) for the inside of a JSON string: " and \ get a
 * backslash, \n \r \t \b \f their short forms, other bytes below 0x20 \u00XX;
 * everything else (UTF-8 included) is copied. Writes as much as fits in
 * cap - 1 bytes without splitting an escape or a UTF-8 character and
 * NUL-terminates (if cap > 0).
 * Returns the full escaped length without the NUL: the output is complete
 * iff the return is < cap. dst may be NULL when cap is 0.
 */
size_t tpo_json_escape(const char *src, size_t len, char *dst, size_t cap);

/* 1 if token t's raw text (no unescaping) is exactly s, else 0. */
int tpo_json_tok_eq(const char *js, const jsmntok_t *t, const char *s);

/*
 * Index of the first token after the subtree rooted at toks[i] (its value
 * too, if toks[i] is an object key). Returns ntoks at the end, -EINVAL if i
 * is out of range or the tokens are truncated.
 */
int tpo_json_skip(const jsmntok_t *toks, int ntoks, int i);

/*
 * An integer primitive (no fraction, no exponent) into *out. Returns 0,
 * -EINVAL if t is not an integer, -ERANGE if it does not fit in int64_t.
 */
int tpo_json_get_int64(const char *js, const jsmntok_t *t, int64_t *out);

/* true/false into *out. Returns 0 or -EINVAL. */
int tpo_json_get_bool(const char *js, const jsmntok_t *t, bool *out);

/* 1 if t is the primitive null, else 0. */
int tpo_json_is_null(const char *js, const jsmntok_t *t);

/*
 * A string token, unescaped into dst (see tpo_json_unescape). Returns the
 * length, -EINVAL if t is not a string or malformed, -ENOSPC.
 */
int tpo_json_get_string(const char *js, const jsmntok_t *t, char *dst, size_t cap);

/*
 * Index of the value at path below toks[root]: dot-separated object keys and
 * array indexes ("choices.0.delta.content"; keys compared raw, at most 63
 * bytes). Returns the token index, -ENOENT if absent, -EINVAL for a bad
 * root, path or token array. Tokens must come from tpo_json_tokenize.
 */
int tpo_json_find(const char *js, const jsmntok_t *toks, int ntoks, int root,
		  const char *path);

#endif
