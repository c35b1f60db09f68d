/*
 * upstream.h — the HTTP model worker engine (upstream.c) and the protocol
 * modules it drives (proto_openai.c, proto_llamacpp.c, proto_tgi.c,
 * proto_anthropic.c).
 *
 * The engine owns everything that is the same for every model server:
 * libcurl multi transfers on the infer loop, endpoint choice, circuit
 * breakers, timeouts, retries, error mapping, SSE framing and stats. A
 * protocol only says how a request looks and what an event means:
 *
 *   path()     the path (appended to the endpoint URL) of a kind of request,
 *              with header and key_header: the engine builds the URL and the
 *              header list once per endpoint and kind and reuses them
 *   request()  the JSON body of one request
 *   event()    one SSE event of a streamed answer
 *   body()     a whole non-streamed answer
 *
 * event() and body() report through tpo_up_token() and tpo_up_end(); a
 * protocol error (an error event, garbage JSON) is tpo_up_error().
 */
#ifndef TPO_UPSTREAM_H
#define TPO_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

#include "workers/curl_dl.h"   /* libcurl, loaded at run time */

#include "workers/json.h"
#include "workers/worker.h"

/* A growable byte buffer; the holder frees p. */
struct tpo_buf {
	char *p;
	size_t len, cap;
};

int tpo_buf_put(struct tpo_buf *b, const void *s, size_t n);
int tpo_buf_str(struct tpo_buf *b, const char *s);
/* A JSON string literal, quotes included. */
int tpo_buf_json_str(struct tpo_buf *b, const char *s, size_t n);
/* prefix, then v in decimal: a request's numbers without printf. */
int tpo_buf_u64(struct tpo_buf *b, const char *prefix, uint64_t v);
int tpo_buf_printf(struct tpo_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void tpo_buf_free(struct tpo_buf *b);

/* What a protocol needs to build one request. */
struct tpo_up_req {
	const char *prompt;
	size_t prompt_len;
	const char *model;           /* endpoint's model, else the request's; may be "" */
	uint32_t max_tokens;         /* 0: the server's default */
	uint64_t seed;
	uint64_t session_hash;
	int stream;                  /* ask for a streamed answer */
	int chat;                    /* a chat request (else a plain completion) */
	uint32_t slots;              /* server slots ("#slots=N" in the URL), 0: unknown */
};

struct tpo_up_call;   /* one request in flight (opaque to protocols) */

struct tpo_proto {
	const char *name;
	/* The path of every request of one kind (chat or not, streamed or
	 * not), e.g. "/v1/chat/completions". */
	const char *(*path)(int chat, int stream);
	/* A header line every request carries, NULL: none. */
	const char *header;
	/* The header line an endpoint's API key is sent in, before the key
	 * (e.g. "Authorization: Bearer "). */
	const char *key_header;
	/* Appends the JSON body of one request to body. 0 or -errno. */
	int (*request)(const struct tpo_up_req *r, struct tpo_buf *body);
	/* One SSE event. 0 or -errno (the same as tpo_up_error). */
	int (*event)(struct tpo_up_call *c, const char *name, const char *data, size_t len);
	/* A whole non-streamed 2xx body. 0 or -errno. */
	int (*body)(struct tpo_up_call *c, const char *data, size_t len);
};

extern const struct tpo_proto tpo_proto_openai;
extern const struct tpo_proto tpo_proto_llamacpp;
extern const struct tpo_proto tpo_proto_tgi;
extern const struct tpo_proto tpo_proto_anthropic;

/* Forwards a token's text. 0, or -errno: return it from event()/body(). */
int tpo_up_token(struct tpo_up_call *c, const char *text, size_t len);
/* The answer is complete (finish: enum tpo_finish, or -1: the last hint, else
 * stop); later events are ignored. */
void tpo_up_end(struct tpo_up_call *c, int finish);
/* The finish reason seen so far, for streams that end without a marker. */
void tpo_up_finish_hint(struct tpo_up_call *c, int finish);
/* An error inside a 2xx answer. status 0: the engine picks (502). Returns -EPROTO. */
int tpo_up_error(struct tpo_up_call *c, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Protocol helpers: the string at path below the root of js (tokens toks,
 * see tpo_json_find) unescaped into a fresh scratch buffer of the call.
 * Returns its length and sets *out, -ENOENT if absent or not a string, or
 * -errno.
 */
int tpo_up_json_str(struct tpo_up_call *c, const char *js, const jsmntok_t *toks,
		    int ntoks, const char *path, const char **out);

/*
 * Validates and tokenizes js[0..len) into the worker's shared token array
 * (no allocation once it is large enough): *toks is valid until the next
 * call, from any call. Returns the token count, or -errno (-EINVAL: not
 * JSON).
 */
int tpo_up_json_parse(struct tpo_up_call *c, const char *js, size_t len,
		      const jsmntok_t **toks);

/* The string token t unescaped into the call's scratch buffer, as
 * tpo_up_json_str. */
int tpo_up_json_tokstr(struct tpo_up_call *c, const char *js, const jsmntok_t *t,
		       const char **out);

/*
 * A token's text: as tpo_up_json_tokstr, but a surrogate pair split between
 * this token and the next (a server slicing UTF-16 text) is joined, and any
 * other unpaired surrogate escape becomes U+FFFD (tpo_json_unescape_text):
 * nothing of the text is refused. May return 0 (the text was half a
 * character, held for the next token); what an answer ends holding is
 * forwarded as U+FFFD by tpo_up_end. _at: the string at path, as
 * tpo_up_json_str.
 */
int tpo_up_json_text(struct tpo_up_call *c, const char *js, const jsmntok_t *t,
		     const char **out);
int tpo_up_json_text_at(struct tpo_up_call *c, const char *js, const jsmntok_t *toks,
			int ntoks, const char *path, const char **out);

/*
 * Streams send chunks of one shape: the same bytes but for the token's
 * text. tpo_up_shape_learn() records js, valid JSON whose only effect was
 * the token in string t; tpo_up_shape_token() then takes a chunk that
 * differs from it only inside that string, and is valid JSON because the
 * string is: the text unescaped (as tpo_up_json_tokstr), without parsing
 * the rest again. 0: not of that shape, or an empty text (parse it).
 * tpo_up_shape_forget() after a chunk that did more than give a token.
 */
int tpo_up_shape_token(struct tpo_up_call *c, const char *js, size_t len, const char **out);
void tpo_up_shape_learn(struct tpo_up_call *c, const char *js, size_t len, const jsmntok_t *t);
void tpo_up_shape_forget(struct tpo_up_call *c);

/* Token counts the upstream reported (a usage object); 0 leaves one alone. */
void tpo_up_usage(struct tpo_up_call *c, uint32_t prompt, uint32_t completion);

/* A finish_reason / stop_reason word into enum tpo_finish. */
int tpo_up_finish_of(const char *reason);

/* Engine creation for worker "openai" etc. (tpo_worker_create calls it). */
struct tpo_config_infer;
struct tpo_stats;
extern const struct tpo_worker_ops tpo_upstream_ops;
int tpo_upstream_create(const struct tpo_config_infer *cfg, const struct tpo_proto *proto,
			struct tpo_stats *stats, int lane, void **w, char *err, size_t errcap);

#endif
