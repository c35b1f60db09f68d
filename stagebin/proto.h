/*
 * proto.h — the records stages exchange over the rings.
 *
 *   client ─▶ stream_j ─REQ▶ rag_i ─REQ▶ assemble_i ─PROMPT▶ infer_i
 *                                                              │ BEGIN, TOKEN*, END | ERROR
 *   client ◀─ stream_j ◀─BEGIN, TOKEN*, END | ERROR── post_i ◀┘
 *
 * Every record carries the request id (tpo_rec.req_id) and, in tpo_rec.aux,
 * the lane of the stream process that holds the client (the egress mesh ring
 * post_i uses). tpo_rec.seq numbers a request's TOKEN records from 1, so a
 * redelivered token is recognised and dropped by the stream (dedup by
 * request id + sequence). CANCEL follows a request down the lane in order and
 * tells every stage to forget it; ERROR ends a request with an HTTP status.
 *
 * Payloads (all fixed-width, little-endian host order):
 *   REQ, PROMPT   struct tpo_msg_req, then text_len bytes of text (chat: the
 *                 rendered messages; completions: the prompt; PROMPT: the
 *                 assembled prompt), ctx_len bytes of retrieved context
 *                 (REQ after rag), stop_len bytes of NUL-terminated stop strings
 *   BEGIN         struct tpo_msg_req without text or context: the stops and
 *                 limits post applies; tells stream the request is in inference
 *   TOKEN         the token's text, 1..max bytes, any byte boundary
 *   END           struct tpo_msg_end
 *   ERROR         struct tpo_msg_err, then a message (not NUL-terminated)
 *   CANCEL        struct tpo_msg_cancel
 */
#ifndef TPO_PROTO_H
#define TPO_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "shm/ring.h"

enum tpo_msg_type {
	TPO_MSG_REQ = TPO_REC_USER,
	TPO_MSG_PROMPT,
	TPO_MSG_TOKEN,
	TPO_MSG_END,
	TPO_MSG_ERROR,
	TPO_MSG_CANCEL,
	TPO_MSG_BEGIN,           /* infer -> post -> stream: inference started */
};

enum {
	TPO_REQF_STREAM        = 1u << 0,
	TPO_REQF_CHAT          = 1u << 1,
	TPO_REQF_INCLUDE_USAGE = 1u << 2,
};

#define TPO_MODEL_MAX 64

struct tpo_msg_req {
	uint32_t flags;
	uint32_t max_tokens;
	uint64_t deadline_ns;    /* CLOCK_MONOTONIC; 0 = none */
	uint64_t session_hash;
	uint64_t seed;
	uint32_t text_len;
	uint32_t ctx_len;
	uint32_t stop_len;
	uint32_t nstop;
	uint32_t prompt_tokens;  /* estimate, filled by assemble */
	uint32_t reserved;
	char     model[TPO_MODEL_MAX];
	/* text, ctx, stops follow */
};
_Static_assert(sizeof(struct tpo_msg_req) == 120, "msg_req size");

static inline char *tpo_msg_req_text(const struct tpo_msg_req *m)
{ return (char *)(m + 1); }
static inline char *tpo_msg_req_ctx(const struct tpo_msg_req *m)
{ return (char *)(m + 1) + m->text_len; }
static inline char *tpo_msg_req_stops(const struct tpo_msg_req *m)
{ return (char *)(m + 1) + m->text_len + m->ctx_len; }
static inline uint32_t tpo_msg_req_size(const struct tpo_msg_req *m)
{ return (uint32_t)sizeof(*m) + m->text_len + m->ctx_len + m->stop_len; }

/*
 * Whether rec's payload is a well-formed struct tpo_msg_req and what follows
 * it (REQ, PROMPT, BEGIN): the three lengths add up to the record's, summed
 * in 64 bits (in 32 they can wrap to any value and point the text or stops
 * gigabytes past the record), and the model name is NUL-terminated. Records
 * come from other processes, a user's stage among them: every stage that
 * reads one checks it with this first.
 */
static inline int tpo_msg_req_ok(const struct tpo_rec *rec)
{
	const struct tpo_msg_req *m = tpo_rec_data(rec);

	return rec->len >= sizeof(*m) &&
	       (uint64_t)sizeof(*m) + m->text_len + m->ctx_len + m->stop_len == rec->len &&
	       memchr(m->model, 0, sizeof(m->model)) != NULL;
}

enum tpo_finish {
	TPO_FINISH_STOP = 0,
	TPO_FINISH_LENGTH = 1,
};

struct tpo_msg_end {
	uint32_t finish;         /* enum tpo_finish */
	uint32_t prompt_tokens;
	uint32_t completion_tokens;
	uint32_t flags;          /* TPO_END_EARLY */
	uint64_t infer_start_ns; /* when infer took the request (for TTFT) */
	uint64_t first_token_ns;
};

/* Post ended the answer (stop sequence, max_tokens) before infer did: the
 * front sends CANCEL so the model stops working on it. */
#define TPO_END_EARLY 1u

struct tpo_msg_err {
	uint16_t status;         /* HTTP status for the client */
	uint16_t reserved;
	uint32_t msg_len;
	/* message follows */
};

enum tpo_cancel_reason {
	TPO_CANCEL_CLIENT = 1,   /* client went away */
	TPO_CANCEL_SHED = 2,     /* drop_oldest shed it */
	TPO_CANCEL_DEADLINE = 3,
};

struct tpo_msg_cancel {
	uint32_t reason;
	uint32_t reserved;
};

/* Lane of the stream process that created a request id. */
static inline int tpo_req_origin(uint64_t req_id) { return (int)(req_id >> 56) & 0x7f; }

#endif
