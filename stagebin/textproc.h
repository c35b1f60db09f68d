/*
 * textproc.h — pure text transforms the pipeline stages use: UTF-8
 * validation and repair across chunk boundaries, stop sequences that span
 * chunks, a prompt token estimate, and the assemble stage's template fill.
 *
 * Nothing here allocates or performs I/O; every state struct is caller-owned
 * and may live on the stack or in a per-request table. No function is
 * thread-safe on the same state; distinct states are independent.
 */
#ifndef TPO_TEXTPROC_H
#define TPO_TEXTPROC_H

#include <stddef.h>
#include <stdint.h>

/*
 * 1 if s[0..n) is well-formed UTF-8 (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF, no truncated sequence at the end), else 0.
 * NUL bytes are valid UTF-8; callers that care check for them separately.
 */
int tpo_utf8_valid(const char *s, size_t n);

/* ---- UTF-8 repair at chunk boundaries --------------------------------- */

/*
 * Holds the incomplete sequence (1..3 bytes) at the end of one chunk until
 * the next chunk completes it. Every ill-formed subsequence is replaced by
 * one U+FFFD (the Unicode "maximal subpart" rule, as WHATWG decoders do),
 * so the output is always well-formed UTF-8.
 */
struct tpo_utf8_joiner {
	uint8_t pend[4];
	uint8_t npend;
};

/* Output bound of one tpo_utf8_join() call for n input bytes. */
#define TPO_UTF8_JOIN_BOUND(n) (3 * ((size_t)(n) + 3))

void tpo_utf8_joiner_init(struct tpo_utf8_joiner *j);

/*
 * Appends in[0..n) to the stream and writes what is now complete to out.
 * Returns 0 with *outn set (possibly 0 when everything was withheld), or
 * -ENOSPC, consuming nothing, when cap < TPO_UTF8_JOIN_BOUND(n).
 */
int tpo_utf8_join(struct tpo_utf8_joiner *j, const char *in, size_t n,
		  char *out, size_t cap, size_t *outn);

/*
 * End of stream: writes U+FFFD for a dangling partial sequence (0 or 3
 * bytes) and resets the joiner. Returns bytes written or -ENOSPC (cap < 3
 * while a partial sequence is pending).
 */
int tpo_utf8_flush(struct tpo_utf8_joiner *j, char *out, size_t cap);

/*
 * Where to cut s before byte k (s[k] must be readable) so as not to split a
 * character: k, or the start of the character that s[k] continues (its lead
 * byte at most three back; a stray continuation byte moves nothing).
 */
size_t tpo_utf8_cut(const char *s, size_t k);

/*
 * Any bytes as well-formed UTF-8 in out: each ill-formed subsequence (an
 * incomplete one at the end included) becomes U+FFFD, as tpo_utf8_join
 * does, and the text stops before the first character that does not fit
 * in cap. Returns the bytes written. For text from outside (a model
 * server's error body, say) that a client will read as JSON.
 */
size_t tpo_utf8_sanitize(const char *s, size_t n, char *out, size_t cap);

/* ---- stop sequences --------------------------------------------------- */

#define TPO_STOP_MAX     8
#define TPO_STOP_LEN_MAX 128

/*
 * Truncates a token stream right before the stop string that completes
 * first (of two completing at the same byte, the longer), even one split
 * over several chunks: the same text is cut at the same place however it
 * is chunked. Between chunks it withholds
 * only the longest suffix of the text seen so far that is a proper prefix
 * of some stop string (the least it must hold back), and releases those
 * bytes as soon as they can no longer start a match.
 */
struct tpo_stopper {
	int nstop;
	int done;                         /* a stop sequence was found */
	uint32_t held;                    /* bytes withheld in hold[] */
	uint32_t maxlen;                  /* longest stop string */
	uint16_t len[TPO_STOP_MAX];
	char stop[TPO_STOP_MAX][TPO_STOP_LEN_MAX];
	char hold[TPO_STOP_LEN_MAX];
};

/*
 * Sets up to TPO_STOP_MAX stop strings (stops[i] is lens[i] bytes, not
 * NUL-terminated). Empty strings are ignored. Returns 0, or -EINVAL when
 * n > TPO_STOP_MAX or a string is longer than TPO_STOP_LEN_MAX.
 * n == 0 gives a pass-through stopper.
 */
int tpo_stop_init(struct tpo_stopper *st, const char *const stops[],
		  const size_t lens[], int n);

/*
 * Same, from the packed form of struct tpo_msg_req: len bytes holding
 * NUL-terminated strings back to back.
 */
int tpo_stop_init_packed(struct tpo_stopper *st, const char *packed, size_t len);

/*
 * Feeds in[0..n) and writes the releasable text to out, *outn bytes.
 * Returns 1 when a stop sequence completed (out ends right before it; the
 * stopper then swallows everything else fed to it and keeps returning 1),
 * 0 otherwise, or -ENOSPC (nothing consumed) when out cannot hold the
 * withheld bytes plus n; cap >= n + TPO_STOP_LEN_MAX always suffices.
 * out[0..held + n) is also used as scratch.
 */
int tpo_stop_feed(struct tpo_stopper *st, const char *in, size_t n,
		  char *out, size_t cap, size_t *outn);

/*
 * End of stream: releases the withheld tail (nothing after a stop).
 * Returns bytes written or -ENOSPC when cap is below the withheld length
 * (cap >= TPO_STOP_LEN_MAX always suffices).
 */
int tpo_stop_flush(struct tpo_stopper *st, char *out, size_t cap);

/* ---- usage and prompt assembly ---------------------------------------- */

/*
 * An estimate of the number of tokens in s[0..n): ceil(n / 4), at least 1
 * for non-empty text, 0 for empty. It is a rough BPE average for English,
 * used only where no tokenizer reports real counts (prompt_tokens before
 * the model server answers); never use it to enforce limits exactly.
 */
uint32_t tpo_usage_estimate_tokens(const char *s, size_t n);

/*
 * Expands the NUL-terminated template tpl into out: "{context}" becomes
 * context[0..clen), "{messages}" becomes messages[0..mlen), "{{" becomes
 * "{", everything else is copied verbatim (including unknown "{name}").
 * The output is not NUL-terminated. Returns its length, or -E2BIG when it
 * would exceed cap (cap is the prompt budget).
 */
int tpo_template_fill(const char *tpl, const char *context, size_t clen,
		      const char *messages, size_t mlen, char *out, size_t cap);

#endif
