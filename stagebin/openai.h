/*
 * openai.h — the OpenAI-compatible HTTP API as pure functions: parse a
 * /v1/chat/completions or /v1/completions request body, and encode the
 * bodies and SSE events tpo sends back. No I/O, no global state; the
 * parser allocates only a temporary token array (freed before it returns).
 *
 * Validation follows OpenAI's behaviour: unknown fields are ignored, null
 * means "not given" for optional fields, and every error names the field
 * ("Invalid type for 'max_tokens': expected an integer"). Parsing numbers
 * uses strtod, so callers must not change LC_NUMERIC away from "C".
 */
#ifndef TPO_OPENAI_H
#define TPO_OPENAI_H

#include <stddef.h>
#include <stdint.h>

#include "workers/json.h"

enum tpo_oai_kind {
	TPO_OAI_CHAT = 1,          /* POST /v1/chat/completions */
	TPO_OAI_COMPLETION = 2,    /* POST /v1/completions */
};

#define TPO_OAI_MODEL_MAX    64     /* bytes incl. NUL, as TPO_MODEL_MAX */
#define TPO_OAI_USER_MAX     256    /* bytes, excl. NUL */
#define TPO_OAI_STOP_MAX     4      /* OpenAI's limit */
#define TPO_OAI_STOP_LEN     128    /* bytes per stop string, = TPO_STOP_LEN_MAX */
#define TPO_OAI_MESSAGES_MAX 256
#define TPO_OAI_MAX_TOKENS   1000000

/* The SSE event that ends every stream. */
#define TPO_OAI_DONE     "data: [DONE]\n\n"
#define TPO_OAI_DONE_LEN (sizeof(TPO_OAI_DONE) - 1)

/*
 * A parsed request. The caller zeroes it once, then sets text and text_cap;
 * tpo_oai_parse fills the rest, keeping toks (the body's tokens, an array it
 * grows) for the next call: a caller that reuses req allocates nothing per
 * request. An array grown past TPO_OAI_TOKS_KEEP tokens for one large body
 * is freed when that call ends; tpo_oai_req_fini frees the rest. text
 * receives the flattened prompt, NUL-terminated, text_len bytes (may
 * contain NULs from \u0000):
 *   chat         one "role: content\n" line per message, content parts
 *                concatenated (this is what assemble inserts as {messages});
 *   completions  the prompt, an array of prompts joined with "\n".
 */
#define TPO_OAI_TOKS_KEEP 1024

struct tpo_oai_req {
	char *text;                    /* in: caller's buffer */
	size_t text_cap;               /* in */
	jsmntok_t *toks;               /* kept between calls (see above) */
	unsigned toks_cap;
	size_t text_len;
	int kind;                      /* enum tpo_oai_kind */
	int stream;                    /* 0 or 1 */
	int include_usage;             /* stream_options.include_usage */
	int has_temperature;
	int has_top_p;
	int has_seed;
	uint32_t max_tokens;           /* 0 = not given (caller's default) */
	uint32_t nmessages;            /* chat only */
	double temperature;            /* 0..2 when has_temperature */
	double top_p;                  /* 0..1 when has_top_p */
	int64_t seed;
	int nstop;
	uint32_t stop_len[TPO_OAI_STOP_MAX];
	char stop[TPO_OAI_STOP_MAX][TPO_OAI_STOP_LEN + 1];   /* NUL-terminated */
	uint32_t user_len;             /* 0 = not given */
	char user[TPO_OAI_USER_MAX + 1];
	char model[TPO_OAI_MODEL_MAX]; /* "" = not given (caller's default) */
};

/*
 * Parses body[0..len) as a request of the given kind into *req (text and
 * text_cap set by the caller). Returns 0; -EINVAL with a client-facing
 * message in err (NUL-terminated, truncated to errlen) for anything OpenAI
 * would answer with 400; -E2BIG when the flattened prompt does not fit in
 * text_cap (err says so; answer 413); -ENOMEM.
 */
int tpo_oai_parse(struct tpo_oai_req *req, const char *body, size_t len, int kind,
		  char *err, size_t errlen);
void tpo_oai_req_fini(struct tpo_oai_req *req);

/*
 * Response id for request req_id: "chatcmpl-<16 hex>" or "cmpl-<16 hex>".
 * Returns its length or -ENOSPC (cap >= 32 always suffices).
 */
int tpo_oai_make_id(char *buf, size_t cap, int kind, uint64_t req_id);

/*
 * Encoders. Each writes a complete body or SSE event into buf,
 * NUL-terminated, and returns its length without the NUL, or -ENOSPC if
 * buf cannot hold it (buf then holds garbage). Strings passed in (id,
 * model, text, message) must be valid UTF-8; they are JSON-escaped here.
 */

/*
 * One streamed chunk:
 *   data: {"id":...,"object":"chat.completion.chunk","created":...,
 *          "model":...,"choices":[{"index":0,"delta":{"content":"..."},
 *          "finish_reason":null}]}\n\n
 * first != 0 adds "role":"assistant" to the chat delta (OpenAI sends it in
 * the first chunk). Completions: "object":"text_completion",
 * "choices":[{"text":"...","index":0,"finish_reason":null}].
 */
int tpo_oai_chunk(char *buf, size_t cap, int kind, const char *id, int64_t created,
		  const char *model, const char *delta, size_t dlen, int first);

/*
 * The same chunk in two parts, for a caller that keeps the part every chunk
 * of a stream shares. tpo_oai_chunk_head writes `data: {"id":...,"object":
 * ...,"created":...,"model":...,"choices":[` into buf; tpo_oai_chunk_tail
 * writes the token's part after buf[0..len). Both return the length of what
 * buf then holds (NUL-terminated), or -ENOSPC.
 */
int tpo_oai_chunk_head(char *buf, size_t cap, int kind, const char *id, int64_t created,
		       const char *model);
/* Room for any head: a TPO_OAI_MODEL_MAX name escaped sixfold and an id
 * from tpo_oai_make_id. */
#define TPO_OAI_CHUNK_HEAD_MAX 640
int tpo_oai_chunk_tail(char *buf, size_t cap, size_t len, int kind, const char *delta,
		       size_t dlen, int first);

/*
 * The chunk that ends a stream: empty delta (chat) or text (completions)
 * and finish_reason ("stop", "length"; NULL means "stop"). With
 * include_usage, it is followed by one more event, as OpenAI does: a chunk
 * with "choices":[] and "usage":{prompt_tokens, completion_tokens,
 * total_tokens}. The caller then sends TPO_OAI_DONE.
 */
int tpo_oai_final_chunk(char *buf, size_t cap, int kind, const char *id, int64_t created,
			const char *model, const char *finish_reason,
			uint32_t prompt_tokens, uint32_t completion_tokens, int include_usage);

/*
 * The whole body of a stream:false answer: a "chat.completion" with
 * message {role:"assistant", content}, or a "text_completion" with text;
 * finish_reason and usage as above.
 */
int tpo_oai_full_response(char *buf, size_t cap, int kind, const char *id, int64_t created,
			  const char *model, const char *content, size_t clen,
			  const char *finish_reason, uint32_t prompt_tokens,
			  uint32_t completion_tokens);

/*
 * {"error":{"message":...,"type":...,"param":...,"code":...}}. type NULL
 * means "invalid_request_error"; param and code NULL are encoded as null.
 */
int tpo_oai_error_body(char *buf, size_t cap, const char *message, const char *type,
		       const char *param, const char *code);

/* The same object as an SSE event, for errors after streaming started. */
int tpo_oai_error_event(char *buf, size_t cap, const char *message, const char *type,
			const char *param, const char *code);

/*
 * GET /v1/models: {"object":"list","data":[{"id":...,"object":"model",
 * "created":...,"owned_by":"tpo"}, ...]}.
 */
int tpo_oai_models(char *buf, size_t cap, const char *const names[], int n, int64_t created);

#endif
