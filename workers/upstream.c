/*
 * upstream.c — the HTTP model worker engine (see upstream.h).
 *
 * One libcurl multi handle per infer process; every job is one easy handle
 * at a time. Easy handles come from a pool (struct uh). The options that
 * are the same for every attempt are set once per handle (uh_setup); an
 * attempt sets only its body, its timeout and, when the handle last served
 * another endpoint or kind of request, the URL and header list, which are
 * built once per endpoint and kind (struct ep_kind). Curl keeps options
 * across transfers and starts each transfer's state afresh, so a handle
 * whose last attempt succeeded carries nothing into the next that every
 * attempt does not set again. A handle whose attempt failed, was cancelled
 * or was cut off while draining is curl_easy_reset() and set up anew, so
 * nothing of an unusual end survives. The multi's
 * connection cache is as large as the jobs it may run at once: an open-loop
 * burst must not leave more connections behind than curl's default cache
 * (4 per attached handle) keeps, or every burst would open new ones.
 *
 * A stream whose end marker arrived while its HTTP response had not ended
 * (the chunked terminator comes in a later packet) is answered at once; its
 * handle stays attached as a "drain" (no call) until curl reads the
 * terminator and puts the connection back into the cache, or DRAIN_MS
 * passes and the connection is closed. Removing it at once would close a
 * keep-alive connection per streamed answer.
 *
 * The stage drives it from its own loop: drive() runs curl_multi_perform and
 * collects finished transfers; wait() sleeps in curl_multi_poll with the
 * stage's doorbell as an extra fd.
 *
 * Life of a job (struct tpo_up_call):
 *
 *   start ─▶ RUNNING ─(answer complete)──────────────────────▶ done
 *              │ ▲
 *              │ └──(retry timer)── WAIT_RETRY ◀─┐
 *              └─(failure, no token forwarded, attempts left)─┘
 *              └─(failure otherwise)───────────────────────────▶ fail
 *
 * Failures: transport errors, timeouts (connect, first token, idle between
 * tokens, total), HTTP 408/429/5xx, protocol errors. They count against the
 * endpoint's breaker (except 429, a polite "not now") and are retried with
 * full-jitter exponential backoff, or after Retry-After on 429/503, while no
 * token was forwarded and attempts remain. Other 4xx end the job at once
 * with the upstream status and message. The request's deadline is enforced
 * by the stage (it wins: 504), and caps curl's total timeout.
 *
 * Breaker per endpoint: closed; `breaker.failures` consecutive failures
 * open it for `breaker.open_ms`; then half-open, where exactly one request
 * is admitted as a probe: success closes, failure re-opens.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "shm/ring.h"
#include "shm/stats.h"
#include "stagebin/proto.h"
#include "stagebin/textproc.h"
#include "supervisor/config.h"
#include "workers/h1.h"
#include "workers/sse.h"
#include "workers/upstream.h"

#define RESP_MAX     (64u << 20)   /* largest non-streamed answer */
#define ERRBODY_MAX  (64u << 10)   /* kept of an error body */
#define MS           1000000ull
#define DRAIN_MS     200           /* longest wait for a drained stream's end */
#define POOL_MAX     64            /* idle easy handles kept */

/* ---- buffers --------------------------------------------------------- */

int tpo_buf_put(struct tpo_buf *b, const void *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		char *p;
		while (cap < b->len + n + 1)
			cap *= 2;
		p = realloc(b->p, cap);
		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	if (n && s)                  /* s NULL: reserve only (callers fill) */
		memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
	return 0;
}

int tpo_buf_str(struct tpo_buf *b, const char *s)
{
	return tpo_buf_put(b, s, strlen(s));
}

int tpo_buf_json_str(struct tpo_buf *b, const char *s, size_t n)
{
	size_t need = tpo_json_escape(s, n, NULL, 0);
	int err = tpo_buf_put(b, "\"", 1);

	if (err < 0)
		return err;
	err = tpo_buf_put(b, NULL, need + 1);   /* room for the escape and its NUL */
	if (err < 0)
		return err;
	b->len -= need + 1;
	tpo_json_escape(s, n, b->p + b->len, need + 1);
	b->len += need;
	return tpo_buf_put(b, "\"", 1);
}

int tpo_buf_u64(struct tpo_buf *b, const char *prefix, uint64_t v)
{
	char d[20], *e = d + sizeof(d), *q = e;
	int err = tpo_buf_str(b, prefix);

	do
		*--q = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	return err < 0 ? err : tpo_buf_put(b, q, (size_t)(e - q));
}

int tpo_buf_printf(struct tpo_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n, err;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -EINVAL;
	err = tpo_buf_put(b, NULL, (size_t)n + 1);
	if (err < 0)
		return err;
	b->len -= (size_t)n + 1;
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
	return 0;
}

/* Appends one header line to *l. On failure (-ENOMEM) *l is kept whole. */
static int header_add(struct curl_slist **l, const char *line)
{
	struct curl_slist *n = curl_slist_append(*l, line);

	if (!n)
		return -ENOMEM;
	*l = n;
	return 0;
}

/* Appends the header line prefix + value (an API key after its scheme). */
static int header_with(struct curl_slist **l, const char *prefix, const char *value)
{
	struct tpo_buf a = { 0 };
	int err = tpo_buf_printf(&a, "%s%s", prefix, value);

	if (!err)
		err = header_add(l, a.p);
	tpo_buf_free(&a);
	return err < 0 ? -ENOMEM : 0;
}

void tpo_buf_free(struct tpo_buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* ---- state ----------------------------------------------------------- */

/* What every request of one kind (chat << 1 | stream) to an endpoint
 * sends alike, built on its first use: the URL and the header list (the
 * protocol's, then ours). Handles point at both while a transfer runs. */
struct ep_kind {
	char *url;
	struct curl_slist *hdrs;
	struct tpo_h1_target *h1;        /* for our client: address and head */
};

struct ep {
	char url[TPO_CONFIG_URL_LEN];    /* trailing '/' removed */
	char model[TPO_CONFIG_MODEL_LEN];
	char *key;                       /* API key (strdup), NULL: none */
	uint32_t weight;
	uint32_t inflight;
	uint32_t fails;                  /* consecutive */
	int state;                       /* enum tpo_ep_state */
	uint64_t open_until;
	int probe_busy;                  /* half-open: the probe is out */
	int slot;                        /* stats slot, -1 none */
	uint32_t slots;                  /* "#slots=N" of the URL, 0 none */
	int h1;                          /* served by workers/h1.c, not libcurl */
	struct ep_kind kind[4];
};

/*
 * An easy handle with what curl points into: it outlives calls. c is the
 * call it serves, NULL while it drains or idles in the pool.
 */
struct uh {
	struct up *u;
	CURL *easy;                      /* made on the first curl attempt */
	struct tpo_h1_xfer x;            /* an attempt through workers/h1.c */
	int via_h1;                      /* the attempt running is x */
	struct tpo_up_call *c;
	struct uh *next;                 /* pool or drain list */
	uint64_t drain_until;
	/* What curl reads while the transfer runs, so a drain outlives its
	 * call safely: the request's body (its URL and header list belong to
	 * the endpoint, which outlives every handle). */
	struct tpo_buf body;
	int ready;                       /* the constant options are set */
	int ok;                          /* the attempt succeeded: no reset */
	const struct ep_kind *set;       /* URL and headers set, NULL: none */
	char errbuf[CURL_ERROR_SIZE];
};

/* Ended calls kept for the next (no allocation per request), each with
 * its five buffers of at most CALL_KEEP bytes: at most ~170 KiB held. */
#define CALL_SPARES 16
#define CALL_KEEP   2048

struct up {
	const struct tpo_proto *proto;
	struct tpo_config_timeouts to;
	struct tpo_config_retries re;
	struct tpo_config_breaker br;
	int balance;
	CURLM *multi;                    /* NULL: every endpoint is h1's */
	struct tpo_h1 *h1;               /* NULL: no endpoint is h1's */
	int ncurl;                       /* easy handles attached to multi */
	struct ep ep[TPO_CONFIG_ENDPOINTS_MAX];
	int nep;
	struct tpo_stats *stats;
	uint64_t rng;
	int running;                     /* easy handles attached (drains too) */
	struct uh *pool;                 /* idle handles, reset */
	int npool;
	struct uh *drains;               /* attached handles without a call */
	jsmntok_t *toks;                 /* tpo_up_json_parse's tokens */
	unsigned ntoks_cap;
	int no_proxy;                    /* no proxy variable set (see create) */
	struct tpo_up_call *spare[CALL_SPARES];   /* ended calls, buffers kept */
	int nspare;
};

enum { C_RUNNING = 1, C_WAIT_RETRY, C_ENDED };
enum { XF_OK, XF_FAILED, XF_TIMEOUT };     /* how a transfer ended */
enum { F_TRANSIENT, F_TIMEOUT, F_THROTTLE };

struct tpo_up_call {
	struct up *u;
	struct tpo_job *job;
	struct uh *h;                    /* the attempt's handle, NULL between */
	CURL *easy;                      /* h->easy */
	struct tpo_buf resp, scratch;
	struct tpo_buf shape;            /* tpo_up_shape_learn's chunk */
	uint32_t shape_pre, shape_suf;   /* bytes before and after its token */
	unsigned carry;                  /* a high surrogate the last token ended with */
	struct tpo_sse sse;
	int state;
	int xfer_done;                   /* curl reported the transfer's end */
	int ep, probe, stream, sse_mode;
	uint32_t attempts, tokens, attempt_tokens;
	uint64_t sent_ns, last_ns, retry_at;
	long status;
	long retry_after_ms;             /* -1: none given */
	int ended, finish, finish_hint;
	int perr_set, perr_status;
	char perr[256];
	int abort_rc;                    /* the token sink refused */
};

static uint64_t rnd(struct up *u)
{
	u->rng ^= u->rng << 13;
	u->rng ^= u->rng >> 7;
	u->rng ^= u->rng << 17;
	return u->rng;
}

static void ep_state(struct up *u, struct ep *e, int state, uint64_t now)
{
	if (e->state == state)
		return;
	e->state = state;
	if (u->stats && e->slot >= 0)
		tpo_stats_ep_set_state(u->stats, e->slot, state, now);
}

/* 0 no, 1 yes, 2 yes as the half-open probe. */
static int ep_admit(struct up *u, struct ep *e, uint64_t now)
{
	if (e->state == TPO_EP_OPEN) {
		if (now < e->open_until)
			return 0;
		ep_state(u, e, TPO_EP_HALF_OPEN, now);
		e->probe_busy = 0;
	}
	if (e->state == TPO_EP_HALF_OPEN)
		return e->probe_busy ? 0 : 2;
	return 1;
}

static void ep_ok(struct up *u, struct ep *e, uint64_t now)
{
	e->fails = 0;
	e->probe_busy = 0;
	ep_state(u, e, TPO_EP_CLOSED, now);
}

static void ep_fail(struct up *u, struct ep *e, uint64_t now)
{
	e->fails++;
	e->probe_busy = 0;
	if (e->state == TPO_EP_HALF_OPEN || e->fails >= u->br.failures) {
		e->open_until = now + (uint64_t)u->br.open_ms * MS;
		ep_state(u, e, TPO_EP_OPEN, now);
	}
}

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

/*
 * The endpoint for an attempt, or -1. least_inflight: fewest in flight
 * relative to weight; session_hash: weighted rendezvous hashing of the
 * session, so a session stays on its endpoint and only the sessions of an
 * endpoint that goes away move. avoid (the endpoint that just failed) is
 * taken only when nothing else is admissible.
 */
static int ep_pick(struct up *u, uint64_t session, int avoid, uint64_t now, int *probe)
{
	int best = -1, best_adm = 0;
	double best_score = 0;

	for (int pass = 0; pass < 2 && best < 0; pass++) {
		for (int i = 0; i < u->nep; i++) {
			struct ep *e = &u->ep[i];
			double score;

			if (pass == 0 && i == avoid && u->nep > 1)
				continue;
			/* ep_admit() moves open -> half-open; only ask once a
			 * candidate would win, so no probe slot is taken in vain. */
			if (e->state == TPO_EP_OPEN && now < e->open_until)
				continue;
			if (e->state == TPO_EP_HALF_OPEN && e->probe_busy)
				continue;
			if (u->balance == TPO_BALANCE_SESSION_HASH) {
				uint64_t h = mix64(session ^ mix64((uint64_t)i + 1));
				double x = ((double)(h >> 11) + 0.5) / 9007199254740992.0;
				score = (double)e->weight / -log(x);
			} else {
				score = (double)e->weight / (double)(e->inflight + 1);
			}
			if (best < 0 || score > best_score) {
				best = i;
				best_score = score;
			}
		}
	}
	if (best >= 0) {
		best_adm = ep_admit(u, &u->ep[best], now);
		if (best_adm == 2)
			u->ep[best].probe_busy = 1;
	}
	*probe = best_adm == 2;
	return best_adm ? best : -1;
}

/* ---- protocol callbacks ---------------------------------------------- */

int tpo_up_token(struct tpo_up_call *c, const char *text, size_t len)
{
	int err;

	if (c->ended || len == 0)
		return 0;
	err = c->job->sink->token(c->job, text, len);
	if (err < 0) {
		c->abort_rc = err;
		return err;
	}
	c->tokens++;
	c->attempt_tokens++;
	c->last_ns = tpo_now_ns();
	c->job->wake_ns = c->last_ns + (uint64_t)c->u->to.idle_ms * MS;
	return 0;
}

void tpo_up_end(struct tpo_up_call *c, int finish)
{
	if (c->ended)
		return;
	if (c->carry) {
		/* Half a character the answer never completed. */
		c->carry = 0;
		tpo_up_token(c, "\xef\xbf\xbd", 3);
	}
	c->ended = 1;
	c->finish = finish >= 0 ? finish : c->finish_hint >= 0 ? c->finish_hint : TPO_FINISH_STOP;
	c->job->wake_ns = 1;      /* poll() finishes it outside curl's callbacks */
}

void tpo_up_usage(struct tpo_up_call *c, uint32_t prompt, uint32_t completion)
{
	if (prompt)
		c->job->usage_prompt = prompt;
	if (completion)
		c->job->usage_completion = completion;
}

void tpo_up_finish_hint(struct tpo_up_call *c, int finish)
{
	c->finish_hint = finish;
}

int tpo_up_error(struct tpo_up_call *c, int status, const char *fmt, ...)
{
	va_list ap;

	if (!c->perr_set) {
		va_start(ap, fmt);
		vsnprintf(c->perr, sizeof(c->perr), fmt, ap);
		va_end(ap);
		c->perr_set = 1;
		c->perr_status = status;
	}
	return -EPROTO;
}

int tpo_up_json_parse(struct tpo_up_call *c, const char *js, size_t len,
		      const jsmntok_t **toks)
{
	struct up *u = c->u;
	int n = tpo_json_tokenize_into(js, len, &u->toks, &u->ntoks_cap, NULL);

	*toks = u->toks;
	return n;
}

/* String token t decoded into the call's scratch buffer: strict (carry
 * NULL), or as text in pieces (tpo_json_unescape_text). */
static int scratch_str(struct tpo_up_call *c, const char *js, const jsmntok_t *t,
		       const char **out, unsigned *carry)
{
	size_t raw;
	int n, err;

	if (t->type != JSMN_STRING)
		return -ENOENT;
	raw = (size_t)(t->end - t->start);
	c->scratch.len = 0;
	err = tpo_buf_put(&c->scratch, NULL, raw + 5);
	if (err < 0)
		return err;
	n = carry ? tpo_json_unescape_text(js + t->start, raw, c->scratch.p, raw + 5, carry)
		  : tpo_json_unescape(js + t->start, raw, c->scratch.p, raw + 5);
	if (n < 0)
		return n;
	*out = c->scratch.p;
	return n;
}

int tpo_up_json_tokstr(struct tpo_up_call *c, const char *js, const jsmntok_t *t,
		       const char **out)
{
	return scratch_str(c, js, t, out, NULL);
}

int tpo_up_json_text(struct tpo_up_call *c, const char *js, const jsmntok_t *t,
		     const char **out)
{
	return scratch_str(c, js, t, out, &c->carry);
}

/* The string at path, decoded as scratch_str does. */
static int scratch_str_at(struct tpo_up_call *c, const char *js, const jsmntok_t *toks,
			  int ntoks, const char *path, const char **out, unsigned *carry)
{
	int i = tpo_json_find(js, toks, ntoks, 0, path);

	if (i < 0)
		return i;
	return scratch_str(c, js, &toks[i], out, carry);
}

int tpo_up_json_text_at(struct tpo_up_call *c, const char *js, const jsmntok_t *toks,
			int ntoks, const char *path, const char **out)
{
	return scratch_str_at(c, js, toks, ntoks, path, out, &c->carry);
}

/* A chunk is remembered up to this size (a stream's are ~200 bytes). */
#define SHAPE_MAX CALL_KEEP

int tpo_up_shape_token(struct tpo_up_call *c, const char *js, size_t len, const char **out)
{
	size_t pre = c->shape_pre, suf = c->shape_suf;
	const char *p = c->shape.p;
	unsigned carry;
	jsmntok_t t;
	int n;

	/* The prefix ends with the string's opening quote, the suffix starts
	 * with its closing one: the bytes between must be one JSON string. */
	if (!c->shape.len || len <= pre + suf || memcmp(js, p, pre) != 0 ||
	    memcmp(js + len - suf, p + c->shape.len - suf, suf) != 0 ||
	    tpo_json_string_end(js, len, pre - 1) != len - suf)
		return 0;
	t = (jsmntok_t){ JSMN_STRING, (int)pre, (int)(len - suf), 0 };
	carry = c->carry;
	n = tpo_up_json_text(c, js, &t, out);
	if (n > 0)
		return n;
	c->carry = carry;    /* the caller parses the chunk whole, and decodes it again */
	return 0;
}

void tpo_up_shape_learn(struct tpo_up_call *c, const char *js, size_t len, const jsmntok_t *t)
{
	c->shape.len = 0;
	if (!c->stream || len > SHAPE_MAX || t->type != JSMN_STRING || t->start < 1 ||
	    (size_t)t->end >= len || js[t->start - 1] != '"' || js[t->end] != '"' ||
	    tpo_buf_put(&c->shape, js, len) < 0)
		return;
	c->shape_pre = (uint32_t)t->start;
	c->shape_suf = (uint32_t)(len - (size_t)t->end);
}

void tpo_up_shape_forget(struct tpo_up_call *c)
{
	c->shape.len = 0;
}

int tpo_up_json_str(struct tpo_up_call *c, const char *js, const jsmntok_t *toks,
		    int ntoks, const char *path, const char **out)
{
	return scratch_str_at(c, js, toks, ntoks, path, out, NULL);
}

int tpo_up_finish_of(const char *reason)
{
	if (reason && (!strcmp(reason, "length") || !strcmp(reason, "max_tokens") ||
		       !strcmp(reason, "limit")))
		return TPO_FINISH_LENGTH;
	return TPO_FINISH_STOP;
}

/* ---- transfers ------------------------------------------------------- */

static int on_sse(void *arg, const char *event, const char *data, size_t len)
{
	struct tpo_up_call *c = arg;

	if (c->ended)
		return 0;
	return c->u->proto->event(c, event, data, len);
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
	struct tpo_up_call *c = ((struct uh *)arg)->c;
	size_t len = size * n;

	if (!c)
		return len;                    /* a drain */
	if (len >= 5 && !memcmp(p, "HTTP/", 5))
		c->retry_after_ms = -1;        /* a new response (after 100 Continue) */
	else if (len > 12 && !strncasecmp(p, "Retry-After:", 12)) {
		char tmp[32];
		size_t k = len - 12 < sizeof(tmp) - 1 ? len - 12 : sizeof(tmp) - 1;
		char *e;
		double v;
		memcpy(tmp, p + 12, k);
		tmp[k] = 0;
		v = strtod(tmp, &e);
		if (e != tmp && v >= 0 && v < 86400)
			c->retry_after_ms = (long)(v * 1000);
	}
	return len;
}

static size_t on_data(char *p, size_t size, size_t n, void *arg)
{
	struct tpo_up_call *c = ((struct uh *)arg)->c;
	size_t len = size * n;
	int err;

	if (!c)
		return len;                    /* a drain: bytes after the end marker */
	if (!c->status) {
		const char *ct = NULL;
		if (c->h->via_h1) {
			c->status = c->h->x.status;
			if (c->h->x.ctype[0])
				ct = c->h->x.ctype;
		} else {
			curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
			curl_easy_getinfo(c->easy, CURLINFO_CONTENT_TYPE, &ct);
		}
		c->sse_mode = c->stream && c->status >= 200 && c->status < 300 &&
			      (!ct || strcasestr(ct, "event-stream"));
	}
	if (c->ended)
		return len;                    /* trailing bytes after the end marker */
	if (c->perr_set)
		return 0;
	if (c->status < 200 || c->status >= 300) {
		if (c->resp.len < ERRBODY_MAX)
			tpo_buf_put(&c->resp, p, len < ERRBODY_MAX ? len : ERRBODY_MAX);
		return len;
	}
	if (c->sse_mode) {
		err = tpo_sse_feed(&c->sse, p, len);
		if (err == -E2BIG)
			tpo_up_error(c, 0, "an event-stream line longer than %u bytes",
				     TPO_SSE_LINE_MAX);
		else if (err < 0 && err != -EPROTO && !c->abort_rc)
			c->abort_rc = err;
		return err < 0 ? 0 : len;
	}
	if (c->resp.len + len > RESP_MAX) {
		tpo_up_error(c, 0, "an answer larger than %u bytes", RESP_MAX);
		return 0;
	}
	if (tpo_buf_put(&c->resp, p, len) < 0) {
		c->abort_rc = -ENOMEM;
		return 0;
	}
	return len;
}

static size_t on_h1_data(void *arg, const char *p, size_t len)
{
	return on_data((char *)p, 1, len, arg);
}

static void on_h1_done(struct tpo_h1_xfer *x, int result, const char *err);

/* ---- easy handles --------------------------------------------------- */

/* A handle from the pool (reset), or a new one; NULL: out of memory. */
static struct uh *uh_get(struct up *u)
{
	struct uh *h = u->pool;

	if (h) {
		u->pool = h->next;
		u->npool--;
	} else {
		h = calloc(1, sizeof(*h));
		if (!h)
			return NULL;
		h->u = u;
	}
	h->next = NULL;
	h->c = NULL;
	h->errbuf[0] = 0;
	return h;
}

static void uh_free(struct uh *h)
{
	if (h->easy)
		curl_easy_cleanup(h->easy);
	tpo_buf_free(&h->body);
	free(h);
}

/* The options every attempt shares. The handle is fresh or reset. */
static void uh_setup(struct up *u, struct uh *h)
{
	CURL *e = h->easy;

	curl_easy_setopt(e, CURLOPT_POST, 1L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, h);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, h);
	curl_easy_setopt(e, CURLOPT_PRIVATE, h);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, h->errbuf);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)u->to.connect_ms);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	/* Receive buffer per transfer: 8 KiB instead of curl's 16 holds many
	 * SSE events per read and halves what max_inflight transfers pin. */
	curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 8192L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	if (u->no_proxy) {
		/* No proxy: what curl would find in the environment anyway (see
		 * tpo_upstream_create), without reading it per transfer. */
		curl_easy_setopt(e, CURLOPT_PROXY, "");
		curl_easy_setopt(e, CURLOPT_NOPROXY, "");
	}
	h->ready = 1;
	h->set = NULL;
}

/* Back to the pool, detached from the multi: the body goes, and every
 * option unless the attempt succeeded (see the top); the connection stays
 * in the multi's cache. */
static void uh_put(struct up *u, struct uh *h)
{
	if (u->npool >= POOL_MAX) {
		uh_free(h);
		return;
	}
	if (!h->ok && h->easy && !h->via_h1) {
		curl_easy_reset(h->easy);
		h->ready = 0;
		h->set = NULL;
	}
	h->ok = 0;
	h->via_h1 = 0;
	h->body.len = 0;
	if (h->body.cap > (64u << 10))
		tpo_buf_free(&h->body);   /* a rare huge prompt keeps no memory */
	h->c = NULL;
	h->next = u->pool;
	u->pool = h;
	u->npool++;
}

/* Detaches h from the multi (closing its connection if the response has not
 * ended) and pools it. */
static void uh_remove(struct up *u, struct uh *h)
{
	if (h->via_h1) {
		tpo_h1_abort(u->h1, &h->x);
	} else {
		curl_multi_remove_handle(u->multi, h->easy);
		u->ncurl--;
	}
	u->running--;
	uh_put(u, h);
}

static void drain_unlink(struct up *u, struct uh *h)
{
	for (struct uh **pp = &u->drains; *pp; pp = &(*pp)->next) {
		if (*pp == h) {
			*pp = h->next;
			h->next = NULL;
			return;
		}
	}
}

/*
 * The attempt gives up its handle. drain: the answer is complete but curl
 * has not seen the response end: the handle stays attached without a call
 * (see the file comment). Otherwise it is removed (a running transfer's
 * connection is closed, so the upstream stops generating).
 */
static void detach(struct tpo_up_call *c, int drain)
{
	struct up *u = c->u;
	struct uh *h = c->h;

	if (!h)
		return;
	c->h = NULL;
	c->easy = NULL;
	h->c = NULL;
	if (drain) {
		h->drain_until = tpo_now_ns() + (uint64_t)DRAIN_MS * MS;
		h->next = u->drains;
		u->drains = h;
	} else {
		uh_remove(u, h);
	}
	if (c->ep >= 0) {
		struct ep *e = &u->ep[c->ep];
		e->inflight--;
		if (c->probe)
			e->probe_busy = 0;   /* no verdict: let another probe go */
		if (u->stats)
			tpo_stats_ep_add(u->stats, e->slot, -1, 0, 0);
	}
	c->probe = 0;
}

/* Ends the job with an error; c is freed by the stage's cancel(). */
static void final_fail(struct tpo_up_call *c, int status, const char *msg)
{
	detach(c, 0);
	c->state = C_ENDED;
	c->job->wake_ns = 0;
	c->job->sink->fail(c->job, status, msg);
}

/* clean: the transfer itself ended well (its handle needs no reset). */
static void succeed(struct tpo_up_call *c, uint64_t now, int clean)
{
	struct up *u = c->u;

	if (c->ep >= 0)
		ep_ok(u, &u->ep[c->ep], now);
	if (c->h)
		c->h->ok = clean;
	detach(c, !c->xfer_done);
	c->state = C_ENDED;
	c->job->wake_ns = 0;
	c->job->sink->done(c->job, c->finish);
}

static void schedule(struct tpo_up_call *c, uint64_t now, int kind, long status)
{
	struct up *u = c->u;
	uint64_t delay_ms;

	if ((status == 429 || status == 503) && c->retry_after_ms >= 0) {
		delay_ms = (uint64_t)c->retry_after_ms;
	} else {
		uint64_t cap = u->re.base_ms;
		for (uint32_t i = 1; i < c->attempts && cap < u->re.cap_ms; i++)
			cap *= 2;
		if (cap > u->re.cap_ms)
			cap = u->re.cap_ms;
		delay_ms = rnd(u) % (cap + 1);     /* full jitter */
	}
	(void)kind;
	c->state = C_WAIT_RETRY;
	c->retry_at = now + delay_ms * MS;
	c->job->wake_ns = c->retry_at ? c->retry_at : 1;
}

static int launch(struct tpo_up_call *c, uint64_t now);

/* For an endpoint of our client: the target and request head of a kind
 * (url: its whole URL, taken). 0, or -errno. */
static int ep_kind_h1(struct up *u, struct ep *e, struct ep_kind *k, struct tpo_buf *url,
		      int stream, const struct ep_kind **out)
{
	struct tpo_h1_target *t = calloc(1, sizeof(*t));
	struct tpo_buf hd = { 0 };
	const char *path;
	int err = -ENOMEM;

	if (!t)
		goto fail;
	if (tpo_h1_target_parse(t, url->p, &path) < 0) {
		err = -EINVAL;               /* create() parsed the endpoint: not here */
		goto fail;
	}
	if (tpo_buf_printf(&hd, "POST %s%s HTTP/1.1\r\nHost: %s\r\n", *path == '/' ? "" : "/",
			   path, t->name) < 0 ||
	    (u->proto->header && tpo_buf_printf(&hd, "%s\r\n", u->proto->header) < 0) ||
	    (e->key && tpo_buf_printf(&hd, "%s%s\r\n", u->proto->key_header, e->key) < 0) ||
	    tpo_buf_printf(&hd, "Content-Type: application/json\r\nAccept: %s\r\n"
			   "Content-Length: ", stream ? "text/event-stream" : "*/*") < 0)
		goto fail;
	t->head = hd.p;
	t->head_len = hd.len;
	k->h1 = t;
	k->url = url->p;
	*out = k;
	return 0;
fail:
	tpo_buf_free(&hd);
	tpo_buf_free(url);
	free(t);
	return err;
}

/* The URL and header list of requests of a kind to e (built on first use)
 * into *out. 0, or -errno. */
static int ep_kind_get(struct up *u, struct ep *e, int chat, int stream,
		       const struct ep_kind **out)
{
	struct ep_kind *k = &e->kind[(chat ? 2 : 0) | (stream ? 1 : 0)];
	struct curl_slist *hdrs = NULL;
	struct tpo_buf url = { 0 };
	const char *p = u->proto->path(chat, stream);
	size_t ul = strlen(e->url);

	if (k->url) {
		*out = k;
		return 0;
	}
	if (ul >= 3 && !strcmp(e->url + ul - 3, "/v1") && !strncmp(p, "/v1/", 4))
		p += 3;
	if (tpo_buf_str(&url, e->url) < 0 || tpo_buf_str(&url, p) < 0)
		goto fail;
	if (e->h1)
		return ep_kind_h1(u, e, k, &url, stream, out);
	if ((u->proto->header && header_add(&hdrs, u->proto->header) < 0) ||
	    (e->key && header_with(&hdrs, u->proto->key_header, e->key) < 0))
		goto fail;
	/* No "Expect: 100-continue" round trip before a large body. */
	if (header_add(&hdrs, "Content-Type: application/json") < 0 ||
	    header_add(&hdrs, "Expect:") < 0 ||
	    (stream && header_add(&hdrs, "Accept: text/event-stream") < 0))
		goto fail;
	k->url = url.p;
	k->hdrs = hdrs;
	*out = k;
	return 0;
fail:
	curl_slist_free_all(hdrs);
	tpo_buf_free(&url);
	return -ENOMEM;
}

/*
 * One attempt failed. Retries if no token went out, attempts remain and
 * the retry would start before the deadline; otherwise ends the job.
 */
static void attempt_fail(struct tpo_up_call *c, int kind, long status, int count,
			 const char *what)
{
	struct up *u = c->u;
	uint64_t now = tpo_now_ns();
	const char *url = c->ep >= 0 ? u->ep[c->ep].url : "?";
	char msg[512];
	int final_status;

	if (c->ep >= 0) {
		if (count)
			ep_fail(u, &u->ep[c->ep], now);
		else if (c->probe)
			u->ep[c->ep].probe_busy = 0;
		if (u->stats)
			tpo_stats_ep_add(u->stats, u->ep[c->ep].slot, 0, 0, 1);
	}
	detach(c, 0);
	final_status = kind == F_TIMEOUT ? 504 : (status == 429 ? 429 : 502);
	if (c->tokens > 0) {
		snprintf(msg, sizeof(msg), "upstream %s failed after %u tokens: %s", url,
			 c->tokens, what);
		final_fail(c, final_status, msg);
		return;
	}
	if (c->attempts < u->re.max_attempts) {
		schedule(c, now, kind, status);
		if (!c->job->deadline_ns || c->retry_at < c->job->deadline_ns)
			return;
	}
	snprintf(msg, sizeof(msg), "upstream %s: %s (%u attempt%s)", url, what, c->attempts,
		 c->attempts == 1 ? "" : "s");
	final_fail(c, final_status, msg);
}

/* The message of an upstream error body: error.message, message, error,
 * detail, else the text itself. */
static void error_text(struct tpo_up_call *c, char *out, size_t cap)
{
	static const char *const paths[] = { "error.message", "message", "error", "detail" };
	const jsmntok_t *t;
	int nt;
	const char *s;
	size_t n = 0;

	out[0] = 0;
	if (!c->resp.len)
		return;
	nt = tpo_up_json_parse(c, c->resp.p, c->resp.len, &t);
	if (nt > 0) {
		for (size_t k = 0; k < sizeof(paths) / sizeof(paths[0]); k++) {
			int len = tpo_up_json_str(c, c->resp.p, t, nt, paths[k], &s);
			if (len > 0) {
				n = tpo_utf8_sanitize(s, (size_t)len, out, cap - 1);
				out[n] = 0;
				return;
			}
		}
	}
	/* The body itself, whatever its bytes: the message reaches a client
	 * inside JSON, so as valid UTF-8 (U+FFFD for the rest), cut at a
	 * character. */
	char raw[300];
	size_t m = 0;
	for (size_t i = 0; i < c->resp.len && m < sizeof(raw); i++) {
		unsigned char ch = (unsigned char)c->resp.p[i];
		raw[m++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
	}
	n = tpo_utf8_sanitize(raw, m, out, cap - 1);
	while (n && out[n - 1] == ' ')
		n--;
	out[n] = 0;
}

/* A transfer ended: rc XF_*, xerr what went wrong unless XF_OK. */
static void complete(struct tpo_up_call *c, int rc, const char *xerr)
{
	struct up *u = c->u;
	uint64_t now = tpo_now_ns();
	char what[400], body[320];

	c->xfer_done = 1;
	if (c->h->via_h1) {
		if (!c->status)
			c->status = c->h->x.status;
		c->retry_after_ms = c->h->x.retry_after_ms;
	}
	if (c->abort_rc) {
		/* The stage is stopping or out of memory: nobody to answer. */
		final_fail(c, 500, "the infer stage could not forward the answer");
		return;
	}
	if (c->ended) {
		/* The answer was whole; a transfer that failed after it still
		 * gets its handle reset, as the top says. */
		succeed(c, now, rc == XF_OK);
		return;
	}
	if (!c->status && !c->h->via_h1)
		curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
	if (c->perr_set) {
		snprintf(what, sizeof(what), "%s", c->perr);
		/* A rate limit reported in the stream is not an endpoint failure. */
		attempt_fail(c, F_TRANSIENT, c->perr_status, c->perr_status != 429, what);
		return;
	}
	if (rc != XF_OK) {
		attempt_fail(c, rc == XF_TIMEOUT ? F_TIMEOUT : F_TRANSIENT, 0, 1, xerr);
		return;
	}
	if (c->status >= 200 && c->status < 300) {
		if (!c->sse_mode) {
			int err = c->resp.len ? u->proto->body(c, c->resp.p, c->resp.len)
					      : tpo_up_error(c, 0, "an empty answer");
			if (c->abort_rc) {
				final_fail(c, 500, "the infer stage could not forward the answer");
				return;
			}
			if (err < 0 && !c->perr_set)
				tpo_up_error(c, 0, "an answer it could not read");
			if (!c->ended && !c->perr_set && c->finish_hint >= 0)
				tpo_up_end(c, c->finish_hint);
		} else if (!c->ended && !c->perr_set && c->finish_hint >= 0) {
			tpo_up_end(c, c->finish_hint);   /* no end marker, but a finish reason */
		}
		if (c->ended) {
			succeed(c, now, 1);
			return;
		}
		attempt_fail(c, F_TRANSIENT, 0, 1, c->perr_set ? c->perr :
			     "the answer stream ended before it was complete");
		return;
	}
	error_text(c, body, sizeof(body));
	snprintf(what, sizeof(what), "HTTP %ld%s%s", c->status, body[0] ? ": " : "", body);
	if (c->status >= 400 && c->status < 500 && c->status != 408 && c->status != 429) {
		/* The request itself is wrong (model, key, size): say so as is. */
		if (c->ep >= 0)
			ep_ok(u, &u->ep[c->ep], now);
		snprintf(what, sizeof(what), "%s", body[0] ? body : "upstream rejected the request");
		final_fail(c, (int)c->status, what);
		return;
	}
	attempt_fail(c, c->status == 429 ? F_THROTTLE : F_TRANSIENT, c->status,
		     c->status != 429, what);
}

static void complete_curl(struct tpo_up_call *c, CURLcode rc)
{
	char what[400] = "";

	if (rc != CURLE_OK)
		snprintf(what, sizeof(what), "%s%s%s", curl_easy_strerror(rc),
			 c->h->errbuf[0] ? ": " : "", c->h->errbuf);
	complete(c, rc == CURLE_OK ? XF_OK : rc == CURLE_OPERATION_TIMEDOUT ? XF_TIMEOUT : XF_FAILED,
		 what);
}

static void drain_ended(struct up *u, struct uh *h, int ok)
{
	if (!ok)
		h->ok = 0;
	drain_unlink(u, h);
	uh_remove(u, h);
}

static void on_h1_done(struct tpo_h1_xfer *x, int result, const char *err)
{
	struct uh *h = x->arg;

	if (h->c)
		complete(h->c, result == TPO_H1_OK ? XF_OK :
			 result == TPO_H1_TIMEOUT ? XF_TIMEOUT : XF_FAILED, err);
	else
		drain_ended(h->u, h, result == TPO_H1_OK);
}

static int launch(struct tpo_up_call *c, uint64_t now)
{
	struct up *u = c->u;
	struct tpo_job *job = c->job;
	struct tpo_up_req r;
	struct ep *e;
	const struct ep_kind *k;
	struct uh *h = NULL;
	int probe, i, err;
	uint64_t total_ms;

	c->attempts++;
	i = ep_pick(u, job->session_hash, c->ep, now, &probe);
	if (i < 0) {
		if (c->attempts < u->re.max_attempts) {
			schedule(c, now, F_TRANSIENT, 0);
			if (!job->deadline_ns || c->retry_at < job->deadline_ns)
				return 0;
		}
		final_fail(c, 503, "no upstream model endpoint is available: every endpoint's "
			   "circuit breaker is open");
		return 0;
	}
	e = &u->ep[i];
	c->ep = i;
	c->probe = probe;
	memset(&r, 0, sizeof(r));
	r.prompt = job->prompt;
	r.prompt_len = job->prompt_len;
	r.model = e->model[0] ? e->model : (job->model ? job->model : "");
	r.max_tokens = job->max_tokens;
	r.seed = job->seed;
	r.session_hash = job->session_hash;
	r.stream = c->stream;
	r.chat = !!(job->flags & TPO_REQF_CHAT);
	r.slots = e->slots;
	err = ep_kind_get(u, e, r.chat, r.stream, &k);
	if (err < 0)
		goto fail;
	h = uh_get(u);
	if (!h) {
		err = -ENOMEM;
		goto fail;
	}
	err = u->proto->request(&r, &h->body);
	if (err < 0)
		goto fail;
	total_ms = u->to.total_ms;
	if (job->deadline_ns) {
		uint64_t left = job->deadline_ns > now ? (job->deadline_ns - now) / MS + 1 : 1;
		if (left < total_ms)
			total_ms = left;
	}
	h->c = c;
	if (e->h1) {
		struct tpo_h1_xfer *x = &h->x;
		x->t = k->h1;
		x->body = h->body.p;
		x->body_len = h->body.len;
		x->connect_ns = now + (uint64_t)u->to.connect_ms * MS;
		x->deadline_ns = now + total_ms * MS;
		x->on_data = on_h1_data;
		x->done = on_h1_done;
		x->arg = h;
		h->via_h1 = 1;
		err = tpo_h1_start(u->h1, x);
		if (err < 0)
			goto fail;
	} else {
		if (!h->easy && !(h->easy = curl_easy_init())) {
			err = -ENOMEM;
			goto fail;
		}
		/* What differs between attempts is set here; the rest is kept
		 * on the handle (see the top). */
		if (!h->ready)
			uh_setup(u, h);
		if (h->set != k) {
			curl_easy_setopt(h->easy, CURLOPT_URL, k->url);
			curl_easy_setopt(h->easy, CURLOPT_HTTPHEADER, k->hdrs);
			h->set = k;
		}
		curl_easy_setopt(h->easy, CURLOPT_POSTFIELDS, h->body.p);
		curl_easy_setopt(h->easy, CURLOPT_POSTFIELDSIZE, (long)h->body.len);
		curl_easy_setopt(h->easy, CURLOPT_TIMEOUT_MS, (long)total_ms);
		if (curl_multi_add_handle(u->multi, h->easy) != CURLM_OK) {
			err = -ENOMEM;
			goto fail;
		}
		u->ncurl++;
	}
	c->h = h;
	c->easy = h->easy;
	u->running++;
	e->inflight++;
	if (u->stats)
		tpo_stats_ep_add(u->stats, e->slot, 1, 1, 0);
	c->state = C_RUNNING;
	c->sent_ns = now;
	c->attempt_tokens = 0;
	c->carry = 0;
	c->status = 0;
	c->retry_after_ms = -1;
	c->perr_set = 0;
	c->finish_hint = -1;
	c->sse_mode = 0;
	c->xfer_done = 0;
	c->resp.len = 0;
	tpo_sse_reset(&c->sse);
	job->wake_ns = now + (uint64_t)u->to.first_token_ms * MS;
	return 0;
fail:
	/* Never added to the multi: detach() must not see it, it would count
	 * a transfer that never ran. */
	if (h)
		uh_put(u, h);
	if (probe)
		e->probe_busy = 0;
	c->probe = 0;
	final_fail(c, 500, "the infer stage could not build the upstream request");
	return err;
}

/* ---- worker ops ------------------------------------------------------ */

/* A call as calloc makes it, from the spares when there is one: its
 * buffers are kept, empty. */
static struct tpo_up_call *call_get(struct up *u)
{
	struct tpo_up_call *c;
	struct tpo_buf resp, scratch, shape;
	struct tpo_sse sse;

	if (!u->nspare)
		return calloc(1, sizeof(*c));
	c = u->spare[--u->nspare];
	resp = c->resp, scratch = c->scratch, shape = c->shape, sse = c->sse;
	memset(c, 0, sizeof(*c));
	c->resp = (struct tpo_buf){ resp.p, 0, resp.cap };
	c->scratch = (struct tpo_buf){ scratch.p, 0, scratch.cap };
	c->shape = (struct tpo_buf){ shape.p, 0, shape.cap };
	c->sse.line = sse.line, c->sse.line_cap = sse.line_cap;
	c->sse.data = sse.data, c->sse.data_cap = sse.data_cap;
	return c;
}

static void call_free(struct tpo_up_call *c)
{
	tpo_sse_fini(&c->sse);
	tpo_buf_free(&c->resp);
	tpo_buf_free(&c->scratch);
	tpo_buf_free(&c->shape);
	free(c);
}

static void call_put(struct up *u, struct tpo_up_call *c)
{
	if (c->resp.cap > CALL_KEEP)
		tpo_buf_free(&c->resp);
	if (c->scratch.cap > CALL_KEEP)
		tpo_buf_free(&c->scratch);
	if (c->shape.cap > CALL_KEEP)
		tpo_buf_free(&c->shape);
	if (c->sse.line_cap > CALL_KEEP || c->sse.data_cap > CALL_KEEP)
		tpo_sse_fini(&c->sse);
	if (u->nspare < CALL_SPARES)
		u->spare[u->nspare++] = c;
	else
		call_free(c);
}

static int up_start(void *w, struct tpo_job *job)
{
	struct up *u = w;
	struct tpo_up_call *c = call_get(u);

	if (!c)
		return -ENOMEM;
	c->u = u;
	c->job = job;
	c->ep = -1;
	c->finish_hint = -1;
	c->stream = !!(job->flags & TPO_REQF_STREAM);
	tpo_sse_rearm(&c->sse, on_sse, c);
	job->worker_state = c;
	launch(c, tpo_now_ns());
	return 0;
}

static void up_poll(void *w, struct tpo_job *job, uint64_t now)
{
	struct up *u = w;
	struct tpo_up_call *c = job->worker_state;
	char what[128];

	if (!c)
		return;
	if (c->state == C_WAIT_RETRY) {
		if (now >= c->retry_at)
			launch(c, now);
		else
			job->wake_ns = c->retry_at;
		return;
	}
	if (c->state != C_RUNNING)
		return;
	if (c->ended) {
		succeed(c, now, 1);
		return;
	}
	if (c->attempt_tokens == 0 && now >= c->sent_ns + (uint64_t)u->to.first_token_ms * MS) {
		snprintf(what, sizeof(what), "no token within %u ms (timeouts.first_token_ms)",
			 u->to.first_token_ms);
		attempt_fail(c, F_TIMEOUT, 0, 1, what);
		return;
	}
	if (c->attempt_tokens > 0 && now >= c->last_ns + (uint64_t)u->to.idle_ms * MS) {
		snprintf(what, sizeof(what), "no token for %u ms (timeouts.idle_ms)",
			 u->to.idle_ms);
		attempt_fail(c, F_TIMEOUT, 0, 1, what);
		return;
	}
	job->wake_ns = c->attempt_tokens ? c->last_ns + (uint64_t)u->to.idle_ms * MS
					 : c->sent_ns + (uint64_t)u->to.first_token_ms * MS;
}

static void up_cancel(void *w, struct tpo_job *job)
{
	struct tpo_up_call *c = job->worker_state;

	(void)w;
	if (!c)
		return;
	detach(c, 0);
	call_put(c->u, c);
	job->worker_state = NULL;
	job->wake_ns = 0;
}

static void up_drive(void *w, uint64_t now)
{
	struct up *u = w;
	CURLMsg *m;
	int still, left;

	if (u->h1)
		tpo_h1_run(u->h1, now);   /* idle connections too: a close is read */
	if (!u->running)
		return;
	if (u->ncurl)
		curl_multi_perform(u->multi, &still);
	while (u->ncurl && (m = curl_multi_info_read(u->multi, &left))) {
		struct uh *h = NULL;
		if (m->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&h);
		if (!h)
			continue;
		if (h->c)
			complete_curl(h->c, m->data.result);
		else    /* its connection is back in the cache (unless it failed) */
			drain_ended(u, h, m->data.result == CURLE_OK);
	}
	for (struct uh **pp = &u->drains; *pp;) {
		struct uh *h = *pp;
		if (now < h->drain_until) {
			pp = &h->next;
			continue;
		}
		*pp = h->next;           /* the response never ended: close it */
		h->ok = 0;
		uh_remove(u, h);
	}
}

static int up_wait(void *w, int bell, int timeout_ms)
{
	struct up *u = w;
	struct curl_waitfd wfd[2];
	unsigned nw = 0;
	int n;
	CURLMcode rc;

	if (!u->multi) {
		int err = tpo_h1_wait(u->h1, bell, timeout_ms);
		return err < 0 ? err : 1;   /* bell is edge-triggered there */
	}
	if (bell >= 0)
		wfd[nw++] = (struct curl_waitfd){ .fd = bell, .events = CURL_WAIT_POLLIN };
	if (u->h1) {
		/* Both clients: ours is one more fd to curl, its timers ours. */
		wfd[nw++] = (struct curl_waitfd){ .fd = tpo_h1_fd(u->h1),
						  .events = CURL_WAIT_POLLIN };
		timeout_ms = tpo_h1_timeout(u->h1, timeout_ms);
	}
	rc = curl_multi_poll(u->multi, nw ? wfd : NULL, nw, timeout_ms, &n);
	return rc == CURLM_OK ? 0 : -EIO;
}

static void up_destroy(void *w)
{
	struct up *u = w;

	if (!u)
		return;
	while (u->drains) {
		struct uh *h = u->drains;
		u->drains = h->next;
		if (h->via_h1)
			tpo_h1_abort(u->h1, &h->x);
		else
			curl_multi_remove_handle(u->multi, h->easy);
		uh_free(h);
	}
	while (u->pool) {
		struct uh *h = u->pool;
		u->pool = h->next;
		uh_free(h);
	}
	for (int i = 0; i < u->nep; i++) {
		free(u->ep[i].key);
		for (int k = 0; k < 4; k++) {
			struct ep_kind *kd = &u->ep[i].kind[k];
			free(kd->url);
			if (kd->hdrs)
				curl_slist_free_all(kd->hdrs);
			if (kd->h1)
				free(kd->h1->head);
			free(kd->h1);
		}
	}
	if (u->multi)
		curl_multi_cleanup(u->multi);
	tpo_h1_free(u->h1);
	free(u->toks);
	while (u->nspare)
		call_free(u->spare[--u->nspare]);
	free(u);
}

const struct tpo_worker_ops tpo_upstream_ops = {
	.name = "upstream",
	.start = up_start,
	.poll = up_poll,
	.cancel = up_cancel,
	.drive = up_drive,
	.wait = up_wait,
	.destroy = up_destroy,
};

int tpo_upstream_create(const struct tpo_config_infer *cfg, const struct tpo_proto *proto,
			struct tpo_stats *stats, int lane, void **w, char *err, size_t errcap)
{
	static int curl_ready;
	struct up *u;
	int need_curl = 0, need_h1 = 0;
	unsigned maxconns;

	if (cfg->nendpoints < 1) {
		snprintf(err, errcap, "stages.infer.endpoints: worker \"%s\" needs at least one "
			 "endpoint", proto->name);
		return -EINVAL;
	}
	u = calloc(1, sizeof(*u));
	if (!u)
		goto nomem;
	u->proto = proto;
	u->to = cfg->timeouts;
	u->re = cfg->retries;
	u->br = cfg->breaker;
	if (!u->re.max_attempts)
		u->re.max_attempts = 1;
	if (!u->br.failures)
		u->br.failures = 1;
	u->balance = cfg->balance;
	u->stats = stats;
	u->rng = mix64((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ tpo_now_ns()) | 1;
	/*
	 * The variables libcurl 7.88 reads per transfer to find a proxy for
	 * an http or https URL: <scheme>_proxy (http_proxy only in lower case:
	 * curl never reads HTTP_PROXY), HTTPS_PROXY, all_proxy, ALL_PROXY.
	 * When none is set (an empty one counts as set), curl would use no
	 * proxy, so handles say so (CURLOPT_PROXY and CURLOPT_NOPROXY "") and
	 * curl skips these lookups and no_proxy's. When one is set, curl's own
	 * handling stays.
	 */
	u->no_proxy = 1;
	{
		static const char *const vars[] = { "http_proxy", "https_proxy", "HTTPS_PROXY",
						    "all_proxy", "ALL_PROXY" };
		for (size_t k = 0; k < sizeof(vars) / sizeof(vars[0]); k++)
			if (getenv(vars[k]))
				u->no_proxy = 0;
	}
	u->nep = cfg->nendpoints;
	for (int i = 0; i < u->nep; i++) {
		const struct tpo_config_endpoint *ce = &cfg->endpoints[i];
		struct ep *e = &u->ep[i];
		size_t n;
		char name[TPO_STATS_EP_NAME_LEN];

		snprintf(e->url, sizeof(e->url), "%s", ce->url);
		{
			char *frag = strchr(e->url, '#');
			if (frag) {
				if (!strncmp(frag, "#slots=", 7))
					e->slots = (uint32_t)strtoul(frag + 7, NULL, 10);
				*frag = 0;
			}
		}
		n = strlen(e->url);
		while (n && e->url[n - 1] == '/')
			e->url[--n] = 0;
		{
			struct tpo_h1_target t;
			const char *path;
			e->h1 = u->no_proxy && tpo_h1_target_parse(&t, e->url, &path) == 0;
			need_curl |= !e->h1;
			need_h1 |= e->h1;
		}
		snprintf(e->model, sizeof(e->model), "%s", ce->model);
		e->weight = ce->weight ? ce->weight : 1;
		e->slot = -1;
		if (ce->api_key_env[0]) {
			const char *k = getenv(ce->api_key_env);
			if (!k || !*k)
				fprintf(stderr, "<4>tpo-infer: stages.infer.endpoints[%d]: environment "
					"variable %s is not set: sending no API key\n", i,
					ce->api_key_env);
			else if (strpbrk(k, "\r\n")) {
				snprintf(err, errcap, "stages.infer.endpoints[%d]: the API key in %s "
					 "holds a line break", i, ce->api_key_env);
				up_destroy(u);
				return -EINVAL;
			} else if (!(e->key = strdup(k)))
				goto nomem;
		}
		if (stats) {
			snprintf(name, sizeof(name), "%s/%d", proto->name, i);
			e->slot = tpo_stats_ep_claim(stats, lane, i, name, e->url);
			if (e->slot < 0)
				e->slot = -1;
		}
	}
	/* Room for a connection per job that can run at once (see the top). */
	maxconns = cfg->max_inflight > 4 ? cfg->max_inflight : 4;
	if (need_h1 && !(u->h1 = tpo_h1_new(maxconns)))
		goto nomem;
	if (need_curl) {
		if (!curl_ready) {
			int e = tpo_curl_load(err, errcap);
			if (e < 0) {
				up_destroy(u);
				return e;
			}
			if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
				up_destroy(u);
				snprintf(err, errcap, "libcurl initialisation failed");
				return -EIO;
			}
			curl_ready = 1;
		}
		u->multi = curl_multi_init();
		if (!u->multi)
			goto nomem;
		curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, (long)maxconns);
	}
	*w = u;
	return 0;
nomem:
	up_destroy(u);
	snprintf(err, errcap, "out of memory");
	return -ENOMEM;
}
