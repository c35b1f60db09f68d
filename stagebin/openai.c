/*
 * openai.c — OpenAI-compatible request parsing and response encoding.
 * See openai.h for the contracts.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stagebin/fmt.h"
#include "stagebin/openai.h"
#include "stagebin/textproc.h"
#include "workers/json.h"

_Static_assert(TPO_OAI_STOP_LEN == TPO_STOP_LEN_MAX, "stop length limits agree");

/* ---- parsing ----------------------------------------------------------- */

struct pctx {
	struct tpo_oai_req *req;
	const char *js;
	const jsmntok_t *t;
	int nt;
	char *err;
	size_t errlen;
};

static const char *const roles[] = { "system", "user", "assistant", "tool", "developer" };

__attribute__((format(printf, 2, 3)))
static int fail(struct pctx *c, const char *fmt, ...)
{
	va_list ap;

	if (c->err && c->errlen) {
		va_start(ap, fmt);
		vsnprintf(c->err, c->errlen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

static int fail_type(struct pctx *c, const char *field, const char *expected)
{
	return fail(c, "Invalid type for '%s': expected %s", field, expected);
}

static int too_big(struct pctx *c)
{
	if (c->err && c->errlen)
		snprintf(c->err, c->errlen,
			 "Request too large: the prompt exceeds %zu bytes", c->req->text_cap);
	return -E2BIG;
}

static bool is_null(const struct pctx *c, int i)
{
	return tpo_json_is_null(c->js, &c->t[i]) == 1;
}

static int tok_len(const jsmntok_t *t)
{
	return t->end - t->start;
}

/* Appends raw bytes to the flattened text, keeping room for the NUL. */
static int text_put(struct pctx *c, const char *s, size_t n)
{
	struct tpo_oai_req *r = c->req;

	if (r->text_cap == 0 || n > r->text_cap - 1 - r->text_len)
		return too_big(c);
	memcpy(r->text + r->text_len, s, n);
	r->text_len += n;
	r->text[r->text_len] = '\0';
	return 0;
}

/* Appends the decoded string token i to the flattened text. */
static int text_put_tok(struct pctx *c, int i, const char *field)
{
	struct tpo_oai_req *r = c->req;
	const jsmntok_t *t = &c->t[i];
	int n;

	if (r->text_cap == 0)
		return too_big(c);
	n = tpo_json_unescape(c->js + t->start, (size_t)tok_len(t), r->text + r->text_len,
			      r->text_cap - r->text_len);
	if (n == -ENOSPC)
		return too_big(c);
	if (n < 0)
		return fail(c, "Invalid '%s': string contains an unpaired surrogate escape", field);
	r->text_len += (size_t)n;
	return 0;
}

/* Decodes string token i into dst[cap]; max is the length limit reported. */
static int get_str(struct pctx *c, int i, const char *field, char *dst, size_t cap,
		   uint32_t *outlen)
{
	const jsmntok_t *t = &c->t[i];
	int n;

	if (t->type != JSMN_STRING)
		return fail_type(c, field, "a string");
	n = tpo_json_unescape(c->js + t->start, (size_t)tok_len(t), dst, cap);
	if (n == -ENOSPC)
		return fail(c, "Invalid '%s': string too long. Expected a string with "
			    "maximum length %zu", field, cap - 1);
	if (n < 0)
		return fail(c, "Invalid '%s': string contains an unpaired surrogate escape", field);
	if (outlen)
		*outlen = (uint32_t)n;
	return 0;
}

static int get_bool(struct pctx *c, int i, const char *field, int *out)
{
	bool b;

	if (is_null(c, i))
		return 0;
	if (tpo_json_get_bool(c->js, &c->t[i], &b) < 0)
		return fail_type(c, field, "a boolean");
	*out = b;
	return 0;
}

/* An integer in [lo, hi]; *given stays 0 for null. */
static int get_int(struct pctx *c, int i, const char *field, int64_t lo, int64_t hi,
		   int64_t *out, int *given)
{
	int64_t v;
	int rc;

	if (is_null(c, i))
		return 0;
	rc = tpo_json_get_int64(c->js, &c->t[i], &v);
	if (rc == -ERANGE)
		return fail(c, "Invalid '%s': integer out of range", field);
	if (rc < 0)
		return fail_type(c, field, "an integer");
	if (v < lo)
		return fail(c, "Invalid '%s': integer below minimum value. Expected a value "
			    ">= %" PRId64 ", but got %" PRId64 " instead.", field, lo, v);
	if (v > hi)
		return fail(c, "Invalid '%s': integer above maximum value. Expected a value "
			    "<= %" PRId64 ", but got %" PRId64 " instead.", field, hi, v);
	*out = v;
	*given = 1;
	return 0;
}

/* A number in [lo, hi]; *given stays 0 for null. */
static int get_num(struct pctx *c, int i, const char *field, double lo, double hi,
		   double *out, int *given)
{
	const jsmntok_t *t = &c->t[i];
	char tmp[64];
	double v;
	int n = tok_len(t);

	if (is_null(c, i))
		return 0;
	if (t->type != JSMN_PRIMITIVE || n == 0 ||
	    !(c->js[t->start] == '-' || (c->js[t->start] >= '0' && c->js[t->start] <= '9')))
		return fail_type(c, field, "a number");
	if (n >= (int)sizeof(tmp))
		return fail(c, "Invalid '%s': number too long", field);
	memcpy(tmp, c->js + t->start, (size_t)n);
	tmp[n] = '\0';
	v = strtod(tmp, NULL);
	if (v < lo)
		return fail(c, "Invalid '%s': decimal below minimum value. Expected a value "
			    ">= %g, but got %g instead.", field, lo, v);
	if (v > hi)
		return fail(c, "Invalid '%s': decimal above maximum value. Expected a value "
			    "<= %g, but got %g instead.", field, hi, v);
	*out = v;
	*given = 1;
	return 0;
}

/* Index of the value of key `name` in object token obj, or -1. */
static int obj_find(const struct pctx *c, int obj, const char *name)
{
	int i = obj + 1, found = -1;

	for (int k = 0; k < c->t[obj].size && i > 0 && i < c->nt; k++) {
		if (tpo_json_tok_eq(c->js, &c->t[i], name))
			found = i + 1;          /* last duplicate wins */
		i = tpo_json_skip(c->t, c->nt, i);
	}
	return found;
}

static int parse_content(struct pctx *c, int ci, int m)
{
	char field[64];
	int i, rc;

	snprintf(field, sizeof(field), "messages[%d].content", m);
	if (c->t[ci].type == JSMN_STRING)
		return text_put_tok(c, ci, field);
	if (c->t[ci].type != JSMN_ARRAY)
		return fail_type(c, field, "a string or an array of content parts");

	i = ci + 1;
	for (int p = 0; p < c->t[ci].size; p++) {
		int ty, tx;

		snprintf(field, sizeof(field), "messages[%d].content[%d]", m, p);
		if (c->t[i].type != JSMN_OBJECT)
			return fail_type(c, field, "an object");
		ty = obj_find(c, i, "type");
		if (ty < 0)
			return fail(c, "'%s.type' is a required property", field);
		if (c->t[ty].type != JSMN_STRING)
			return fail(c, "Invalid type for '%s.type': expected a string", field);
		if (!tpo_json_tok_eq(c->js, &c->t[ty], "text"))
			return fail(c, "Invalid value for '%s.type': only 'text' content "
				    "parts are supported", field);
		tx = obj_find(c, i, "text");
		if (tx < 0)
			return fail(c, "'%s.text' is a required property", field);
		if (c->t[tx].type != JSMN_STRING)
			return fail(c, "Invalid type for '%s.text': expected a string", field);
		rc = text_put_tok(c, tx, field);
		if (rc < 0)
			return rc;
		i = tpo_json_skip(c->t, c->nt, i);
	}
	return 0;
}

static int parse_messages(struct pctx *c, int ai)
{
	struct tpo_oai_req *r = c->req;
	int i, rc, n = c->t[ai].size;

	if (c->t[ai].type != JSMN_ARRAY)
		return fail_type(c, "messages", "an array");
	if (n == 0)
		return fail(c, "Invalid 'messages': empty array. Expected an array with "
			    "minimum length 1, but got an empty array instead.");
	if (n > TPO_OAI_MESSAGES_MAX)
		return fail(c, "Invalid 'messages': array too long. Expected an array with "
			    "maximum length %d, but got an array with length %d instead.",
			    TPO_OAI_MESSAGES_MAX, n);

	r->text_len = 0;
	i = ai + 1;
	for (int m = 0; m < n; m++) {
		const char *role = NULL;
		int ri, ci;

		if (c->t[i].type != JSMN_OBJECT) {
			char field[32];

			snprintf(field, sizeof(field), "messages[%d]", m);
			return fail_type(c, field, "an object");
		}
		ri = obj_find(c, i, "role");
		if (ri < 0)
			return fail(c, "'messages[%d].role' is a required property", m);
		if (c->t[ri].type != JSMN_STRING)
			return fail(c, "Invalid type for 'messages[%d].role': expected a string", m);
		for (size_t k = 0; k < sizeof(roles) / sizeof(roles[0]); k++)
			if (tpo_json_tok_eq(c->js, &c->t[ri], roles[k]))
				role = roles[k];
		if (!role)
			return fail(c, "Invalid value for 'messages[%d].role': supported values "
				    "are 'system', 'user', 'assistant', 'tool' and 'developer'", m);

		rc = text_put(c, role, strlen(role));
		if (rc == 0)
			rc = text_put(c, ": ", 2);
		if (rc < 0)
			return rc;
		ci = obj_find(c, i, "content");
		if (ci < 0 || is_null(c, ci)) {
			/* Assistant turns that only carried tool calls have none. */
			if (strcmp(role, "assistant") != 0)
				return fail(c, "'messages[%d].content' is a required property", m);
		} else {
			rc = parse_content(c, ci, m);
			if (rc < 0)
				return rc;
		}
		rc = text_put(c, "\n", 1);
		if (rc < 0)
			return rc;
		i = tpo_json_skip(c->t, c->nt, i);
	}
	r->nmessages = (uint32_t)n;
	return 0;
}

static int parse_prompt(struct pctx *c, int pi)
{
	int i, rc;

	c->req->text_len = 0;
	if (c->t[pi].type == JSMN_STRING) {
		rc = text_put(c, "", 0);
		return rc < 0 ? rc : text_put_tok(c, pi, "prompt");
	}
	if (c->t[pi].type != JSMN_ARRAY)
		return fail_type(c, "prompt", "a string or an array of strings");
	if (c->t[pi].size == 0)
		return fail(c, "Invalid 'prompt': empty array. Expected an array with minimum "
			    "length 1, but got an empty array instead.");
	rc = text_put(c, "", 0);
	i = pi + 1;
	for (int k = 0; k < c->t[pi].size && rc == 0; k++) {
		if (c->t[i].type != JSMN_STRING)
			return fail_type(c, "prompt", "a string or an array of strings");
		if (k > 0)
			rc = text_put(c, "\n", 1);
		if (rc == 0)
			rc = text_put_tok(c, i, "prompt");
		i++;
	}
	return rc;
}

static int add_stop(struct pctx *c, int i)
{
	struct tpo_oai_req *r = c->req;
	uint32_t n;
	int rc;

	if (c->t[i].type != JSMN_STRING)
		return fail_type(c, "stop", "a string or an array of strings");
	rc = get_str(c, i, "stop", r->stop[r->nstop], sizeof(r->stop[0]), &n);
	if (rc < 0)
		return rc;
	if (memchr(r->stop[r->nstop], '\0', n))
		return fail(c, "Invalid 'stop': stop sequences must not contain NUL");
	if (n == 0)
		return 0;               /* an empty stop sequence would end every answer */
	r->stop_len[r->nstop++] = n;
	return 0;
}

static int parse_stop(struct pctx *c, int si)
{
	int rc = 0;

	c->req->nstop = 0;
	if (is_null(c, si))
		return 0;
	if (c->t[si].type == JSMN_STRING)
		return add_stop(c, si);
	if (c->t[si].type != JSMN_ARRAY)
		return fail_type(c, "stop", "a string or an array of strings");
	if (c->t[si].size > TPO_OAI_STOP_MAX)
		return fail(c, "Invalid 'stop': array too long. Expected an array with maximum "
			    "length %d, but got an array with length %d instead.",
			    TPO_OAI_STOP_MAX, c->t[si].size);
	for (int k = 0; k < c->t[si].size && rc == 0; k++)
		rc = add_stop(c, si + 1 + k);
	return rc;
}

static int parse_stream_options(struct pctx *c, int oi)
{
	int ii;

	if (is_null(c, oi))
		return 0;
	if (c->t[oi].type != JSMN_OBJECT)
		return fail_type(c, "stream_options", "an object");
	ii = obj_find(c, oi, "include_usage");
	if (ii < 0)
		return 0;
	return get_bool(c, ii, "stream_options.include_usage", &c->req->include_usage);
}

/* Dispatches one top-level member; unknown keys are ignored like OpenAI. */
static int parse_member(struct pctx *c, int key, int kind, int64_t *maxt, int *has_maxt,
			int64_t *maxct, int *has_maxct, int *seen_body)
{
	struct tpo_oai_req *r = c->req;
	const jsmntok_t *k = &c->t[key];
	int v = key + 1;
	int64_t n64;
	int given = 0, rc;

#define KEY(s) tpo_json_tok_eq(c->js, k, s)
	if (KEY("model")) {
		if (is_null(c, v)) {
			r->model[0] = '\0';
			return 0;
		}
		return get_str(c, v, "model", r->model, sizeof(r->model), NULL);
	}
	if (kind == TPO_OAI_CHAT && KEY("messages")) {
		*seen_body = 1;
		return parse_messages(c, v);
	}
	if (kind == TPO_OAI_COMPLETION && KEY("prompt")) {
		*seen_body = 1;
		return parse_prompt(c, v);
	}
	if (KEY("stream"))
		return get_bool(c, v, "stream", &r->stream);
	if (KEY("max_tokens"))
		return get_int(c, v, "max_tokens", 1, TPO_OAI_MAX_TOKENS, maxt, has_maxt);
	if (KEY("max_completion_tokens"))
		return get_int(c, v, "max_completion_tokens", 1, TPO_OAI_MAX_TOKENS, maxct,
			       has_maxct);
	if (KEY("temperature"))
		return get_num(c, v, "temperature", 0, 2, &r->temperature, &r->has_temperature);
	if (KEY("top_p"))
		return get_num(c, v, "top_p", 0, 1, &r->top_p, &r->has_top_p);
	if (KEY("n")) {
		rc = get_int(c, v, "n", 1, INT64_MAX, &n64, &given);
		if (rc == 0 && given && n64 > 1)
			return fail(c, "n > 1 is not supported");
		return rc;
	}
	if (KEY("stop"))
		return parse_stop(c, v);
	if (KEY("user")) {
		r->user_len = 0;
		if (is_null(c, v))
			return 0;
		return get_str(c, v, "user", r->user, sizeof(r->user), &r->user_len);
	}
	if (KEY("seed"))
		return get_int(c, v, "seed", INT64_MIN, INT64_MAX, &r->seed, &r->has_seed);
	if (KEY("stream_options"))
		return parse_stream_options(c, v);
#undef KEY
	return 0;
}

int tpo_oai_parse(struct tpo_oai_req *req, const char *body, size_t len, int kind,
		  char *err, size_t errlen)
{
	struct tpo_json_error jerr;
	struct pctx c = { .req = req, .js = body, .err = err, .errlen = errlen };
	jsmntok_t *toks = req->toks;
	unsigned toks_cap = req->toks_cap;
	char *text = req->text;
	size_t text_cap = req->text_cap;
	int64_t maxt = 0, maxct = 0;
	int has_maxt = 0, has_maxct = 0, seen_body = 0;
	int n, i, rc;

	memset(req, 0, sizeof(*req));
	req->text = text;
	req->text_cap = text_cap;
	req->kind = kind;
	req->toks = toks;
	req->toks_cap = toks_cap;
	if (text && text_cap)
		text[0] = '\0';
	if (err && errlen)
		err[0] = '\0';
	if (kind != TPO_OAI_CHAT && kind != TPO_OAI_COMPLETION)
		return fail(&c, "unsupported request kind");

	if (!tpo_utf8_valid(body, len))
		return fail(&c, "body is not valid UTF-8");
	n = tpo_json_tokenize_into(body, len, &req->toks, &req->toks_cap, &jerr);
	toks = req->toks;
	if (n == -ENOMEM) {
		rc = -ENOMEM;
		goto out_free;
	}
	if (n < 0) {
		rc = fail(&c, "body is not valid JSON: %s at byte %zu",
			  n == -EINVAL ? jerr.msg : "too large", n == -EINVAL ? jerr.off : len);
		goto out_free;
	}
	c.t = toks;
	c.nt = n;
	if (toks[0].type != JSMN_OBJECT) {
		rc = fail(&c, "body must be a JSON object");
		goto out_free;
	}

	i = 1;
	for (int k = 0; k < toks[0].size; k++) {
		rc = parse_member(&c, i, kind, &maxt, &has_maxt, &maxct, &has_maxct, &seen_body);
		if (rc < 0)
			goto out_free;
		i = tpo_json_skip(toks, n, i);
		if (i < 0) {
			rc = fail(&c, "body is not valid JSON");
			goto out_free;
		}
	}
	if (!seen_body) {
		rc = fail(&c, "'%s' is a required property",
			  kind == TPO_OAI_CHAT ? "messages" : "prompt");
		goto out_free;
	}
	if (has_maxct)
		req->max_tokens = (uint32_t)maxct;
	else if (has_maxt)
		req->max_tokens = (uint32_t)maxt;
	rc = 0;
out_free:
	if (req->toks_cap > TPO_OAI_TOKS_KEEP)
		tpo_oai_req_fini(req);
	return rc;
}

void tpo_oai_req_fini(struct tpo_oai_req *req)
{
	free(req->toks);
	req->toks = NULL;
	req->toks_cap = 0;
}

/* ---- encoding ---------------------------------------------------------- */

/* Appends into buf[cap], always keeping room for the final NUL. */
struct wr {
	char *buf;
	size_t cap, len;
	int full;
};

static void w_raw(struct wr *w, const char *s, size_t n)
{
	if (w->full || w->cap == 0 || n > w->cap - 1 - w->len) {
		w->full = 1;
		return;
	}
	memcpy(w->buf + w->len, s, n);
	w->len += n;
}

static void w_lit(struct wr *w, const char *s)
{
	w_raw(w, s, strlen(s));
}

/* A string literal: its length known at compile time. */
#define W_LIT(w, lit) w_raw((w), "" lit, sizeof("" lit) - 1)   /* "" lit: literals only */

static void w_u64(struct wr *w, uint64_t v)
{
	char d[TPO_FMT_U64_MAX];

	w_raw(w, d, tpo_fmt_u64(d, v));
}

static void w_i64(struct wr *w, int64_t v)
{
	char d[TPO_FMT_I64_MAX];

	w_raw(w, d, tpo_fmt_i64(d, v));
}

__attribute__((format(printf, 2, 3)))
static void w_fmt(struct wr *w, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (w->full || w->cap == 0)
		goto full;
	va_start(ap, fmt);
	n = vsnprintf(w->buf + w->len, w->cap - w->len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= w->cap - w->len)
		goto full;
	w->len += (size_t)n;
	return;
full:
	w->full = 1;
}

/* A quoted, escaped JSON string. */
static void w_jstr(struct wr *w, const char *s, size_t n)
{
	size_t r;

	w_raw(w, "\"", 1);
	if (w->full)
		return;
	r = tpo_json_escape(s, n, w->buf + w->len, w->cap - w->len);
	if (r >= w->cap - w->len) {
		w->full = 1;
		return;
	}
	w->len += r;
	w_raw(w, "\"", 1);
}

static void w_jcstr(struct wr *w, const char *s)
{
	w_jstr(w, s, strlen(s));
}

static void w_jstr_or_null(struct wr *w, const char *s)
{
	if (s)
		w_jcstr(w, s);
	else
		W_LIT(w, "null");
}

static int w_end(struct wr *w)
{
	if (w->full || w->len > (size_t)INT32_MAX)
		return -ENOSPC;
	w->buf[w->len] = '\0';
	return (int)w->len;
}

int tpo_oai_make_id(char *buf, size_t cap, int kind, uint64_t req_id)
{
	const char *pre = kind == TPO_OAI_CHAT ? "chatcmpl-" : "cmpl-";
	size_t n = strlen(pre);

	if (n + 16 >= cap)
		return -ENOSPC;
	memcpy(buf, pre, n);
	n += tpo_fmt_hex(buf + n, req_id, 16);
	buf[n] = '\0';
	return (int)n;
}

/* {"id":..,"object":..,"created":..,"model":..,"choices":[ */
static void w_head(struct wr *w, const char *object, const char *id, int64_t created,
		   const char *model)
{
	W_LIT(w, "{\"id\":");
	w_jcstr(w, id);
	W_LIT(w, ",\"object\":\"");
	w_lit(w, object);
	W_LIT(w, "\",\"created\":");
	w_i64(w, created);
	W_LIT(w, ",\"model\":");
	w_jcstr(w, model);
	W_LIT(w, ",\"choices\":[");
}

static void w_usage(struct wr *w, uint32_t prompt_tokens, uint32_t completion_tokens)
{
	W_LIT(w, "\"usage\":{\"prompt_tokens\":");
	w_u64(w, prompt_tokens);
	W_LIT(w, ",\"completion_tokens\":");
	w_u64(w, completion_tokens);
	W_LIT(w, ",\"total_tokens\":");
	w_u64(w, (uint64_t)prompt_tokens + completion_tokens);
	W_LIT(w, "}");
}

static const char *chunk_object(int kind)
{
	return kind == TPO_OAI_CHAT ? "chat.completion.chunk" : "text_completion";
}

int tpo_oai_chunk_head(char *buf, size_t cap, int kind, const char *id, int64_t created,
		       const char *model)
{
	struct wr w = { buf, cap, 0, 0 };

	W_LIT(&w, "data: ");
	w_head(&w, chunk_object(kind), id, created, model);
	return w_end(&w);
}

int tpo_oai_chunk_tail(char *buf, size_t cap, size_t len, int kind, const char *delta,
		       size_t dlen, int first)
{
	struct wr w = { buf, cap, len, len >= cap };

	if (kind == TPO_OAI_CHAT) {
		W_LIT(&w, "{\"index\":0,\"delta\":{");
		if (first)
			W_LIT(&w, "\"role\":\"assistant\",");
		W_LIT(&w, "\"content\":");
		w_jstr(&w, delta, dlen);
		W_LIT(&w, "},\"finish_reason\":null}]}\n\n");
	} else {
		W_LIT(&w, "{\"text\":");
		w_jstr(&w, delta, dlen);
		W_LIT(&w, ",\"index\":0,\"finish_reason\":null}]}\n\n");
	}
	return w_end(&w);
}

int tpo_oai_chunk(char *buf, size_t cap, int kind, const char *id, int64_t created,
		  const char *model, const char *delta, size_t dlen, int first)
{
	int n = tpo_oai_chunk_head(buf, cap, kind, id, created, model);

	if (n < 0)
		return n;
	return tpo_oai_chunk_tail(buf, cap, (size_t)n, kind, delta, dlen, first);
}

int tpo_oai_final_chunk(char *buf, size_t cap, int kind, const char *id, int64_t created,
			const char *model, const char *finish_reason,
			uint32_t prompt_tokens, uint32_t completion_tokens, int include_usage)
{
	struct wr w = { buf, cap, 0, 0 };

	if (!finish_reason)
		finish_reason = "stop";
	W_LIT(&w, "data: ");
	w_head(&w, chunk_object(kind), id, created, model);
	if (kind == TPO_OAI_CHAT)
		W_LIT(&w, "{\"index\":0,\"delta\":{},\"finish_reason\":");
	else
		W_LIT(&w, "{\"text\":\"\",\"index\":0,\"finish_reason\":");
	w_jcstr(&w, finish_reason);
	W_LIT(&w, "}]}\n\n");
	if (include_usage) {
		W_LIT(&w, "data: ");
		w_head(&w, chunk_object(kind), id, created, model);
		W_LIT(&w, "],");
		w_usage(&w, prompt_tokens, completion_tokens);
		W_LIT(&w, "}\n\n");
	}
	return w_end(&w);
}

int tpo_oai_full_response(char *buf, size_t cap, int kind, const char *id, int64_t created,
			  const char *model, const char *content, size_t clen,
			  const char *finish_reason, uint32_t prompt_tokens,
			  uint32_t completion_tokens)
{
	struct wr w = { buf, cap, 0, 0 };

	if (!finish_reason)
		finish_reason = "stop";
	if (kind == TPO_OAI_CHAT) {
		w_head(&w, "chat.completion", id, created, model);
		W_LIT(&w, "{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
		w_jstr(&w, content, clen);
		W_LIT(&w, "},\"logprobs\":null,\"finish_reason\":");
	} else {
		w_head(&w, "text_completion", id, created, model);
		W_LIT(&w, "{\"text\":");
		w_jstr(&w, content, clen);
		W_LIT(&w, ",\"index\":0,\"logprobs\":null,\"finish_reason\":");
	}
	w_jcstr(&w, finish_reason);
	W_LIT(&w, "}],");
	w_usage(&w, prompt_tokens, completion_tokens);
	W_LIT(&w, "}");
	return w_end(&w);
}

static void w_error(struct wr *w, const char *message, const char *type,
		    const char *param, const char *code)
{
	char text[1024];
	size_t n = message ? strlen(message) : 0;

	/* Messages may quote a model server's bytes: valid UTF-8 whatever
	 * they were, cut at a character. */
	n = tpo_utf8_sanitize(message ? message : "", n, text, sizeof(text));
	W_LIT(w, "{\"error\":{\"message\":");
	w_jstr(w, text, n);
	W_LIT(w, ",\"type\":");
	w_jcstr(w, type ? type : "invalid_request_error");
	W_LIT(w, ",\"param\":");
	w_jstr_or_null(w, param);
	W_LIT(w, ",\"code\":");
	w_jstr_or_null(w, code);
	W_LIT(w, "}}");
}

int tpo_oai_error_body(char *buf, size_t cap, const char *message, const char *type,
		       const char *param, const char *code)
{
	struct wr w = { buf, cap, 0, 0 };

	w_error(&w, message, type, param, code);
	return w_end(&w);
}

int tpo_oai_error_event(char *buf, size_t cap, const char *message, const char *type,
			const char *param, const char *code)
{
	struct wr w = { buf, cap, 0, 0 };

	W_LIT(&w, "data: ");
	w_error(&w, message, type, param, code);
	W_LIT(&w, "\n\n");
	return w_end(&w);
}

int tpo_oai_models(char *buf, size_t cap, const char *const names[], int n, int64_t created)
{
	struct wr w = { buf, cap, 0, 0 };

	W_LIT(&w, "{\"object\":\"list\",\"data\":[");
	for (int i = 0; i < n; i++) {
		w_lit(&w, i ? ",{\"id\":" : "{\"id\":");
		w_jcstr(&w, names[i]);
		w_fmt(&w, ",\"object\":\"model\",\"created\":%" PRId64 ",\"owned_by\":\"tpo\"}",
		      created);
	}
	W_LIT(&w, "]}");
	return w_end(&w);
}
