/*
 * tpo-stream — the front: an OpenAI-compatible HTTP/1.1 server (ingress) and
 * the writer of every response (egress).
 *
 * One epoll loop per process: the HTTP layer's listener (SO_REUSEPORT, one
 * per lane), connections and timer; our doorbell, rung when post_i (any
 * lane) has records for us; a one-shot timerfd for deadlines and heartbeats,
 * armed for the earliest request deadline or the next heartbeat (TICK_MS),
 * whichever comes first, so an idle front wakes ten times a second.
 *
 * A request is admitted to a lane (session hash, routed around lanes whose
 * units are not running), written straight into the stream_j -> rag_i ring,
 * and remembered here by request id until it ends. It ends exactly once:
 * END (response complete), ERROR (status, or one SSE error event once
 * streaming), deadline (504), shed (503), or client gone (CANCEL sent down
 * the lane so every stage forgets it).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/timerfd.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <http_parser.h>

#include "stagebin/fmt.h"
#include "stagebin/http.h"
#include "stagebin/openai.h"
#include "stagebin/stage.h"
#include "stagebin/textproc.h"
#include "stagebin/metrics.h"

#define TAG_BELL  (TPO_TAG_USER + 1)
#define TAG_TICK  (TPO_TAG_USER + 2)
#define TICK_MS   100          /* heartbeat and deadline scan, at the latest */
#define DRAIN_TICK_MS 20       /* while draining: is everything answered? */
#define OUT_MAX   (1 << 17)
#define CHUNK_TEXT_MAX 16384   /* escaped (<= 6x) plus the envelope fits OUT_MAX */

enum rstate { R_FREE = 0, R_QUEUED, R_INFER, R_STREAMING };

/* One per request in flight: kept small, a front may hold 10^5 of them. */
struct sreq {
	uint64_t id;
	uint64_t conn;               /* tpo_http_conn_id */
	uint8_t state;               /* enum rstate */
	uint8_t kind;                /* TPO_OAI_CHAT / TPO_OAI_COMPLETION */
	uint8_t stream;
	uint8_t lane;
	uint8_t corked_batch;        /* its connection is in corked[] */
	uint8_t model_owned;         /* model is ours to free (not configured) */
	uint8_t usage;               /* stream_options.include_usage: end with usage */
	uint32_t last_seq;
	uint64_t admitted_ns;
	uint64_t deadline_ns;
	int64_t created;
	char oid[32];                /* "chatcmpl-<id>": made once, sent per chunk */
	const char *model;           /* a configured name, or a copy */
	char *body;                  /* non-streaming: the answer so far */
	size_t body_len, body_cap;
	struct sreq *prev, *next;    /* admission order, per lane */
};

static struct tpo_stage st;
static struct tpo_http_server *srv;
static int epfd, tickfd;
static uint64_t tick_at;       /* when tickfd fires (CLOCK_MONOTONIC ns) */
static void tick_arm(uint64_t at);
static struct { uint32_t kind; } bell_tag = { TAG_BELL }, tick_tag = { TAG_TICK };

static struct sreq *reqs;            /* open-addressing table by id */
static uint32_t reqs_mask, nactive;
static struct sreq lane_list[TPO_RINGSET_MAX_LANES]; /* sentinels */
static uint32_t lane_active[TPO_RINGSET_MAX_LANES];
static uint64_t id_counter;
static int draining;
static uint64_t drain_deadline_ns;
static char out[OUT_MAX];
/* The head every chunk of request chead_id's stream starts with (see
 * on_token): tokens of one stream mostly come in runs. */
static char chead[TPO_OAI_CHUNK_HEAD_MAX];
static size_t chead_len;
static uint64_t chead_id;
static char api_keys[4096];

/* ---- request table ----
 *
 * A request id names its slot: bits 0..19 slot, 20..55 a counter started at
 * a random value per process incarnation (so a record for a request of a
 * crashed predecessor never matches), 56..62 our lane (tpo_req_origin).
 * Lookup is one comparison. The table is calloc'd and left untouched: slots
 * are handed out from a high-water mark and recycled through a free list
 * linked through the slots themselves, so the pages touched follow the peak
 * number of requests in flight, not the configured budget.
 */
#define SLOT_BITS 20

static struct sreq *free_head;
/* Buffers of ended non-streamed answers, for the next ones: BODY_POOL of
 * BODY_FIRST bytes (128 KiB) at most, so an answer allocates only when it
 * outgrows its first buffer. */
#define BODY_FIRST 4096u
#define BODY_ROOM  (64u << 10)   /* a response's head and JSON around its text */
#define BODY_POOL  32
static char *body_pool[BODY_POOL];
static int nbody_pool;
/* The largest non-streamed answer text: its response must fit the HTTP
 * layer's output bound (out_cap_bytes, less room for the head and the JSON
 * around the text), or the client would get a 200 cut short. */
static size_t body_max;
static uint32_t nslots, hwm;

static void slot_put(struct sreq *r)
{
	r->state = R_FREE;
	r->next = free_head;
	free_head = r;
}

static struct sreq *req_find(uint64_t id)
{
	struct sreq *r;

	if (tpo_req_origin(id) != st.lane)
		return NULL;
	r = &reqs[id & reqs_mask];
	return (r->id == id && r->state != R_FREE) ? r : NULL;
}

static struct sreq *req_new(void)
{
	struct sreq *r;
	uint32_t slot;

	if (free_head) {
		r = free_head;
		free_head = r->next;
	} else if (hwm < nslots) {
		r = &reqs[hwm++];
	} else {
		return NULL;
	}
	slot = (uint32_t)(r - reqs);
	memset(r, 0, sizeof(*r));
	id_counter = (id_counter + 1) & ((1ull << 36) - 1);
	r->id = ((uint64_t)st.lane << 56) | (id_counter << SLOT_BITS) | slot;
	return r;
}

/*
 * The model name answers carry: a configured name is pointed at, any other
 * (what the client sent, up to TPO_MODEL_MAX - 1 bytes) copied.
 */
static int model_set(struct sreq *r, const char *name)
{
	size_t n = strnlen(name, TPO_MODEL_MAX - 1);
	char *copy;

	for (int i = 0; i < st.cfg.nmodels; i++)
		if (strlen(st.cfg.models[i]) == n && memcmp(st.cfg.models[i], name, n) == 0) {
			r->model = st.cfg.models[i];
			return 0;
		}
	copy = malloc(n + 1);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, name, n);
	copy[n] = '\0';
	r->model = copy;
	r->model_owned = 1;
	return 0;
}

static void model_clear(struct sreq *r)
{
	if (r->model_owned)
		free((char *)r->model);
	r->model = NULL;
	r->model_owned = 0;
}

/* Ends our memory of r (the client has had, or will get, its answer). */
static void req_free(struct sreq *r)
{
	r->prev->next = r->next;
	r->next->prev = r->prev;
	lane_active[r->lane]--;
	nactive--;
	tpo_stats_inflight(&st.stats, st.stage, st.lane, nactive);
	atomic_store_explicit(&st.rs.load[st.lane][r->lane], lane_active[r->lane],
			      memory_order_relaxed);
	/* A buffered answer ends with its request: a first-size buffer goes
	 * back to the pool (at most BODY_POOL of them, 128 KiB, held idle),
	 * a grown one is freed. */
	model_clear(r);
	if (r->body_cap == BODY_FIRST && nbody_pool < BODY_POOL)
		body_pool[nbody_pool++] = r->body;
	else
		free(r->body);
	r->body = NULL;
	r->body_len = r->body_cap = 0;
	slot_put(r);
}

/* ---- small helpers ---- */

static void req_headers(char *buf, size_t cap, const struct sreq *r, const char *more)
{
	size_t mlen = more ? strlen(more) : 0, n = 0;

	/* "X-Request-Id: " 16 hex "\r\nX-Tpo-Lane: " up to 20 digits "\r\n",
	 * more, NUL; a buffer too small gets as much as fits. */
	if (67 + mlen > cap) {
		snprintf(buf, cap, "X-Request-Id: %016llx\r\nX-Tpo-Lane: %d\r\n%s",
			 (unsigned long long)r->id, r->lane, more ? more : "");
		return;
	}
	memcpy(buf, "X-Request-Id: ", 14);
	n = 14 + tpo_fmt_hex(buf + 14, r->id, 16);
	memcpy(buf + n, "\r\nX-Tpo-Lane: ", 14);
	n += 14;
	n += tpo_fmt_i64(buf + n, r->lane);
	memcpy(buf + n, "\r\n", 2);
	n += 2;
	memcpy(buf + n, more ? more : "", mlen);
	buf[n + mlen] = '\0';
}

static void count_status(int status)
{
	tpo_stats_count_status(&st.stats, st.stage, st.lane, status);
}

static void send_error(struct tpo_http_conn *c, int status, const char *msg,
		       const char *extra)
{
	count_status(status);
	tpo_http_error_ex(c, status, msg, extra);
}

static int send_cancel_id(int lane, uint64_t id, uint32_t reason)
{
	struct tpo_msg_cancel m = { .reason = reason };
	struct tpo_rec *rec;

	/* A cancel must not block the front: if the lane's ring is full the
	 * stages still see the request's deadline. */
	if (tpo_ring_reserve(&st.out[lane], sizeof(m), &rec) < 0)
		return -EAGAIN;
	rec->type = TPO_MSG_CANCEL;
	rec->req_id = id;
	rec->aux = (uint32_t)st.lane;
	rec->ts_ns = tpo_now_ns();
	memcpy(tpo_rec_data(rec), &m, sizeof(m));
	tpo_ring_commit(&st.out[lane]);
	return 0;
}

static int send_cancel(struct sreq *r, uint32_t reason)
{
	return send_cancel_id(r->lane, r->id, reason);
}

/*
 * Output for a request this process does not hold: one of ours that ended
 * already (its cancel went down the lane then), or one a predecessor admitted
 * before it was killed with its clients. Nobody will read it: tell lane to
 * stop the work, once per request (the last ORPHANS ids are remembered).
 */
#define ORPHANS 64
static uint64_t orphan_ids[ORPHANS];
static unsigned orphan_next;

static void cancel_orphan(int lane, const struct tpo_rec *rec)
{
	if (rec->type != TPO_MSG_BEGIN && rec->type != TPO_MSG_TOKEN)
		return;              /* it has ended, or it is not work */
	for (unsigned i = 0; i < ORPHANS; i++)
		if (orphan_ids[i] == rec->req_id)
			return;
	if (send_cancel_id(lane, rec->req_id, TPO_CANCEL_CLIENT) == 0)
		orphan_ids[orphan_next++ % ORPHANS] = rec->req_id;
}

/* Ends r with an error: an HTTP status, or one SSE error event once streaming. */
static void req_fail(struct sreq *r, int status, const char *msg, const char *extra)
{
	struct tpo_http_conn *c = tpo_http_conn_lookup(srv, r->conn);
	char hdr[256];
	int n;

	if (c) {
		if (r->state == R_STREAMING) {
			n = tpo_oai_error_event(out, sizeof(out), msg,
				status >= 500 ? "server_error" : "invalid_request_error",
				NULL, NULL);
			if (n > 0)
				tpo_http_stream_write(c, out, (size_t)n);
			tpo_http_stream_end(c);
			count_status(status);
		} else {
			req_headers(hdr, sizeof(hdr), r, extra);
			send_error(c, status, msg, hdr);
		}
	}
	if (status == 504)
		tpo_stats_count_timeout(&st.stats, st.stage, st.lane, 1);
	else
		tpo_stats_count_error(&st.stats, st.stage, st.lane, 1);
	req_free(r);
}

/* ---- admission ---- */

static uint64_t hash64(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
	return h ^ (h >> 29);
}

/* A lane can take requests when every stage unit of it is running (or
 * runs no process: rag without retrieval). */
static int lane_up(int lane)
{
	for (int s = 0; s < TPO_ST_COUNT; s++) {
		int u = tpo_stats_unit_state(&st.stats, s, lane);
		if (u != TPO_UNIT_RUNNING && u != TPO_UNIT_OFF)
			return 0;
	}
	return 1;
}

/* The first stage of lane past the front whose unit will not run again
 * without a probe (circuit open) or at all (failed), or -1. The requests
 * that still have to pass it would wait for their deadlines: the front
 * ends them (on_tick). */
static int lane_stage_out(int lane)
{
	for (int s = TPO_ST_STREAM + 1; s < TPO_ST_COUNT; s++) {
		int u = tpo_stats_unit_state(&st.stats, s, lane);
		if (u == TPO_UNIT_OPEN || u == TPO_UNIT_FAILED)
			return s;
	}
	return -1;
}

/* The session's lane, or the next healthy one; -1 if none is up. */
static int pick_lane(uint64_t h)
{
	int first = (int)(h % (uint64_t)st.nlanes);

	for (int i = 0; i < st.nlanes; i++) {
		int l = (first + i) % st.nlanes;
		if (lane_up(l))
			return l;
	}
	return -1;
}

static int authorized(const struct tpo_http_req *req)
{
	const char *h, *p, *e;
	size_t n;

	if (!api_keys[0])
		return 1;
	h = tpo_http_header(req, "authorization");
	if (!h || strncasecmp(h, "Bearer ", 7) != 0)
		return 0;
	h += 7;
	n = strlen(h);
	for (p = api_keys; *p; p = *e ? e + 1 : e) {
		e = strchr(p, ',');
		if (!e)
			e = p + strlen(p);
		if ((size_t)(e - p) == n && memcmp(p, h, n) == 0)
			return 1;
	}
	return 0;
}

/* X-Request-Timeout: milliseconds, or a number with "ms" or "s". */
static int parse_timeout(const char *v, uint64_t *ns)
{
	char *e;
	double d = strtod(v, &e);

	if (e == v || !(d > 0)) /* !(d > 0): NaN too */
		return -EINVAL;
	while (*e == ' ')
		e++;
	if (*e == 's' && e[1] == 0)
		d *= 1000;
	else if (*e && strcmp(e, "ms") != 0)
		return -EINVAL;
	if (!(d <= 86400000))   /* at most a day, in any unit; not inf */
		return -EINVAL;
	*ns = (uint64_t)(d * 1e6);
	return 0;
}

/* Requests in flight in lane i, admitted by any front process. */
static uint32_t lane_load(int lane)
{
	uint32_t n = lane_active[lane];

	for (int j = 0; j < st.nlanes; j++)
		if (j != st.lane)
			n += atomic_load_explicit(&st.rs.load[j][lane], memory_order_relaxed);
	return n;
}

/* The healthy lane with the fewest requests in flight, or -1. */
static int least_loaded_lane(void)
{
	uint32_t best_load = UINT32_MAX;
	int best = -1;

	for (int l = 0; l < st.nlanes; l++) {
		uint32_t n;
		if (!lane_up(l))
			continue;
		n = lane_load(l);
		if (n < best_load) {
			best_load = n;
			best = l;
		}
	}
	return best;
}

static int all_lanes_full(uint32_t budget)
{
	for (int l = 0; l < st.nlanes; l++)
		if (lane_load(l) < budget)
			return 0;
	return 1;
}

/* drop_oldest: the oldest request of the lane not yet in inference. */
static struct sreq *oldest_queued(int lane)
{
	for (struct sreq *r = lane_list[lane].next; r != &lane_list[lane]; r = r->next)
		if (r->state == R_QUEUED)
			return r;
	return NULL;
}

static void admit(struct tpo_http_conn *c, struct tpo_http_req *req, int kind)
{
	static struct tpo_oai_req oai;
	static char text[1 << 20];
	const struct tpo_config_admission *adm = &st.cfg.admission;
	struct tpo_msg_req *m;
	struct tpo_rec *rec;
	const char *sid, *h;
	char err[256], hdr[256];
	uint64_t now = tpo_now_ns(), timeout_ns, sh;
	uint32_t stop_len = 0, len;
	struct sreq *r, *victim = NULL;
	int lane;

	tpo_stats_count_in(&st.stats, st.stage, st.lane, 1);
	if (draining) {
		send_error(c, 503, "the server is shutting down", "Retry-After: 1\r\n");
		return;
	}
	/* Under a surge, a request no lane can take is shed before its body
	 * is parsed: shedding must cost much less than serving. */
	if (adm->policy == TPO_POLICY_REJECT_NEW && all_lanes_full(adm->max_inflight_per_lane)) {
		snprintf(hdr, sizeof(hdr), "Retry-After: %u\r\n", adm->retry_after_s);
		tpo_stats_count_shed_reject(&st.stats, st.stage, st.lane, 1);
		send_error(c, 429, "too many requests in flight: try again later", hdr);
		return;
	}
	oai.text = text;
	oai.text_cap = sizeof(text);
	if (tpo_oai_parse(&oai, req->body, req->body_len, kind, err, sizeof(err)) < 0) {
		send_error(c, 400, err, NULL);
		return;
	}
	timeout_ns = (uint64_t)adm->request_timeout_ms * 1000000ull;
	if ((h = tpo_http_header(req, "x-request-timeout")) && parse_timeout(h, &timeout_ns) < 0) {
		send_error(c, 400, "X-Request-Timeout: expected milliseconds (e.g. 5000, 5000ms or 5s)", NULL);
		return;
	}
	sid = tpo_http_header(req, "x-session-id");
	if (sid && *sid)
		sh = hash64(sid, strlen(sid));
	else if (oai.user_len)
		sh = hash64(oai.user, oai.user_len);
	else
		sh = (uint64_t)st.lane;
	/* A request without a session has no cache to follow: keep it on our
	 * own lane, so its hops never cross cores (rings-notes.md: a cross-core
	 * wake-up costs 6x a same-core one); unless that lane is full. */
	if (!(sid && *sid) && !oai.user_len)
		lane = lane_up(st.lane) && lane_load(st.lane) < adm->max_inflight_per_lane ?
			st.lane : least_loaded_lane();
	else
		lane = pick_lane(sh);
	if (lane < 0) {
		tpo_stats_count_shed_reject(&st.stats, st.stage, st.lane, 1);
		send_error(c, 503, "no pipeline lane is available (stages are restarting)",
			   "Retry-After: 1\r\n");
		return;
	}
	for (int i = 0; i < oai.nstop; i++)
		stop_len += oai.stop_len[i] + 1;
	if (oai.text_len + sizeof(*m) + stop_len > st.out[lane].max_len) {
		char msg[160];
		snprintf(msg, sizeof(msg), "request too large: %zu bytes of prompt exceed the "
			 "record limit of %u bytes", oai.text_len, st.out[lane].max_len);
		send_error(c, 413, msg, NULL);
		return;
	}
	/* drop_oldest picks its victim here but ends it only once the new
	 * request is in the ring: a new request refused below (no slot, the
	 * ring full) must not have cost a queued one its answer. */
	if (lane_load(lane) >= adm->max_inflight_per_lane) {
		victim = adm->policy == TPO_POLICY_DROP_OLDEST ? oldest_queued(lane) : NULL;
		if (!victim) {
			snprintf(hdr, sizeof(hdr), "Retry-After: %u\r\n", adm->retry_after_s);
			tpo_stats_count_shed_reject(&st.stats, st.stage, st.lane, 1);
			send_error(c, 429, "too many requests in flight: try again later", hdr);
			return;
		}
	}
	r = req_new();
	if (!r) {
		tpo_stats_count_shed_reject(&st.stats, st.stage, st.lane, 1);
		send_error(c, 503, "too many requests in this front process", "Retry-After: 1\r\n");
		return;
	}
	if (model_set(r, oai.model[0] ? oai.model : st.cfg.models[0]) < 0) {
		slot_put(r);
		send_error(c, 503, "out of memory", "Retry-After: 1\r\n");
		return;
	}
	len = (uint32_t)(sizeof(*m) + oai.text_len + stop_len);
	if (tpo_ring_reserve(&st.out[lane], len, &rec) < 0) {
		/* The lane's input ring is full: shed rather than block the front. */
		model_clear(r);
		slot_put(r);
		tpo_stats_count_shed_reject(&st.stats, st.stage, st.lane, 1);
		snprintf(hdr, sizeof(hdr), "Retry-After: %u\r\n", adm->retry_after_s);
		send_error(c, 429, "pipeline lane is full: try again later", hdr);
		return;
	}
	r->conn = tpo_http_conn_id(c);
	r->state = R_QUEUED;
	r->kind = (uint8_t)kind;
	r->stream = oai.stream != 0;
	r->usage = oai.include_usage != 0;
	r->lane = (uint8_t)lane;
	r->admitted_ns = now;
	r->deadline_ns = now + timeout_ns;
	if (r->deadline_ns < tick_at)
		tick_arm(r->deadline_ns);   /* a short X-Request-Timeout */
	r->created = (int64_t)time(NULL);
	tpo_oai_make_id(r->oid, sizeof(r->oid), kind, r->id);
	r->prev = lane_list[lane].prev;
	r->next = &lane_list[lane];
	r->prev->next = r;
	lane_list[lane].prev = r;
	lane_active[lane]++;
	nactive++;
	tpo_stats_inflight(&st.stats, st.stage, st.lane, nactive);
	atomic_store_explicit(&st.rs.load[st.lane][lane], lane_active[lane],
			      memory_order_relaxed);

	rec->type = TPO_MSG_REQ;
	rec->req_id = r->id;
	rec->aux = (uint32_t)st.lane;
	rec->ts_ns = now;
	m = tpo_rec_data(rec);
	memset(m, 0, sizeof(*m));
	m->flags = (oai.stream ? TPO_REQF_STREAM : 0) | (kind == TPO_OAI_CHAT ? TPO_REQF_CHAT : 0) |
		   (oai.include_usage ? TPO_REQF_INCLUDE_USAGE : 0);
	/* The limit every stage and the model get: the request's, at most
	 * post's cap (with none asked for, the cap): a model answering whole
	 * (not streamed) is one record to post, which cannot count it. */
	{
		uint32_t cap = st.cfg.stages.post.max_tokens;

		m->max_tokens = oai.max_tokens && oai.max_tokens < cap ? oai.max_tokens : cap;
	}
	m->deadline_ns = r->deadline_ns;
	m->session_hash = sh;
	m->seed = oai.has_seed ? (uint64_t)oai.seed : 0;
	m->text_len = (uint32_t)oai.text_len;
	m->stop_len = stop_len;
	m->nstop = (uint32_t)oai.nstop;
	memcpy(m->model, r->model, strlen(r->model));   /* m is zeroed: NUL-padded */
	memcpy(tpo_msg_req_text(m), oai.text, oai.text_len);
	{
		char *p = tpo_msg_req_stops(m);
		for (int i = 0; i < oai.nstop; i++) {
			memcpy(p, oai.stop[i], oai.stop_len[i]);
			p[oai.stop_len[i]] = 0;
			p += oai.stop_len[i] + 1;
		}
	}
	tpo_ring_commit(&st.out[lane]);
	tpo_http_conn_set_user64(c, r->id);
	if (victim) {
		tpo_stats_count_shed_drop_oldest(&st.stats, st.stage, st.lane, 1);
		send_cancel(victim, TPO_CANCEL_SHED);
		req_fail(victim, 503, "request shed under overload (drop_oldest)", "Retry-After: 1\r\n");
	}
}

/* ---- egress: records from post_i ---- */

/* Connections corked while a batch is drained (see tpo_http_cork). */
static struct { uint64_t conn, req; } corked[256];
static int ncorked;

static void uncork_all(void)
{
	for (int i = 0; i < ncorked; i++) {
		struct tpo_http_conn *c = tpo_http_conn_lookup(srv, corked[i].conn);
		struct sreq *r = req_find(corked[i].req);
		if (c)
			tpo_http_uncork(c);
		if (r)
			r->corked_batch = 0;
	}
	ncorked = 0;
}

static void cork(struct sreq *r, struct tpo_http_conn *c)
{
	if (!r->stream || r->corked_batch)
		return;
	if (ncorked == (int)(sizeof(corked) / sizeof(corked[0])))
		uncork_all();
	tpo_http_cork(c);
	corked[ncorked].conn = r->conn;
	corked[ncorked++].req = r->id;
	r->corked_batch = 1;
}


/* Room for need more bytes of a non-streamed answer: 0 or -ENOMEM. */
static int grow_body(struct sreq *r, size_t need)
{
	size_t cap = r->body_cap ? r->body_cap : BODY_FIRST;
	char *b;

	while (cap < r->body_len + need)
		cap *= 2;
	if (cap == r->body_cap)
		return 0;
	if (!r->body && cap == BODY_FIRST && nbody_pool) {
		r->body = body_pool[--nbody_pool];
		r->body_cap = cap;
		return 0;
	}
	b = realloc(r->body, cap);
	if (!b)
		return -ENOMEM;
	r->body = b;
	r->body_cap = cap;
	return 0;
}

static void start_streaming(struct sreq *r, struct tpo_http_conn *c)
{
	char hdr[256];

	req_headers(hdr, sizeof(hdr), r, "Cache-Control: no-cache\r\n");
	tpo_http_stream_begin(c, 200, "text/event-stream", hdr);
	r->state = R_STREAMING;
}

static void on_token(struct sreq *r, struct tpo_http_conn *c, const struct tpo_rec *rec)
{
	int n;

	if (rec->seq <= r->last_seq)
		return;              /* redelivered: already sent */
	r->last_seq = rec->seq;
	if (!r->stream) {
		if (r->body_len + rec->len > body_max) {
			char msg[160];

			send_cancel(r, TPO_CANCEL_CLIENT);
			snprintf(msg, sizeof(msg), "the answer exceeds the %zu bytes a non-streamed "
				 "response may carry: ask for it with \"stream\": true", body_max);
			req_fail(r, 500, msg, NULL);
			return;
		}
		if (grow_body(r, rec->len) < 0) {
			/* Never answer 200 with tokens missing. */
			send_cancel(r, TPO_CANCEL_CLIENT);
			req_fail(r, 500, "out of memory buffering the answer", NULL);
			return;
		}
		memcpy(r->body + r->body_len, tpo_rec_data(rec), rec->len);
		r->body_len += rec->len;
		return;
	}
	if (r->state != R_STREAMING)
		start_streaming(r, c);
	/* One chunk per token; a token too long to encode in `out` (escaping
	 * can grow text 6x) goes out as several chunks, cut between UTF-8
	 * characters. */
	for (const char *p = tpo_rec_data(rec), *end = p + rec->len; p < end;) {
		size_t len = (size_t)(end - p);
		int first = rec->seq == 1 && p == (const char *)tpo_rec_data(rec);

		if (len > CHUNK_TEXT_MAX) {
			len = CHUNK_TEXT_MAX;
			while (len > 1 && ((uint8_t)p[len] & 0xc0) == 0x80)
				len--;
		}
		if (chead_id != r->id || !chead_len) {
			/* A head too long for chead is made with each chunk. */
			n = tpo_oai_chunk_head(chead, sizeof(chead), r->kind, r->oid, r->created,
					       r->model);
			chead_id = r->id;
			chead_len = n > 0 ? (size_t)n : 0;
		}
		if (chead_len) {
			memcpy(out, chead, chead_len);
			n = tpo_oai_chunk_tail(out, sizeof(out), chead_len, r->kind, p, len, first);
		} else {
			n = tpo_oai_chunk(out, sizeof(out), r->kind, r->oid, r->created, r->model,
					  p, len, first);
		}
		if (n <= 0) {
			send_cancel(r, TPO_CANCEL_CLIENT);
			req_fail(r, 500, "unable to encode a token of the answer", NULL);
			return;
		}
		tpo_http_stream_write(c, out, (size_t)n);
		p += len;
	}
}

static void on_end(struct sreq *r, struct tpo_http_conn *c, const struct tpo_rec *rec)
{
	const struct tpo_msg_end *e = rec->len >= sizeof(*e) ? tpo_rec_data(rec) : NULL;
	const char *finish = e && e->finish == TPO_FINISH_LENGTH ? "length" : "stop";
	uint32_t pt = e ? e->prompt_tokens : 0, ct = e ? e->completion_tokens : 0;
	uint64_t now = tpo_now_ns();
	char hdr[256];
	int n;

	if (e && (e->flags & TPO_END_EARLY))
		send_cancel(r, TPO_CANCEL_CLIENT);
	if (r->stream) {
		if (r->state != R_STREAMING)
			start_streaming(r, c);
		n = tpo_oai_final_chunk(out, sizeof(out), r->kind, r->oid, r->created, r->model,
					finish, pt, ct, r->usage);
		if (n > 0)
			tpo_http_stream_write(c, out, (size_t)n);
		tpo_http_stream_write(c, TPO_OAI_DONE, TPO_OAI_DONE_LEN);
		tpo_http_stream_end(c);
	} else {
		char *buf = out, *big = NULL;
		size_t cap = sizeof(out);
		n = tpo_oai_full_response(buf, cap, r->kind, r->oid, r->created, r->model,
					  r->body ? r->body : "", r->body_len, finish, pt, ct);
		if (n < 0) {
			/* Larger than the shared buffer: escaping at most sixfolds
			 * the text (\u00XX). tpo_http_respond copies what it cannot
			 * send at once. */
			cap = r->body_len * 6 + 4096;
			big = malloc(cap);
			if (big)
				n = tpo_oai_full_response(buf = big, cap, r->kind, r->oid, r->created,
							  r->model, r->body ? r->body : "",
							  r->body_len, finish, pt, ct);
		}
		req_headers(hdr, sizeof(hdr), r, NULL);
		if (n > 0 && (size_t)n <= body_max + BODY_ROOM)
			tpo_http_respond(c, 200, "application/json", hdr, buf, (size_t)n);
		else /* escaping grew it past the bound, or no memory */
			tpo_http_error_ex(c, 500, "response too large to encode: ask for it "
					  "with \"stream\": true", hdr);
		free(big);
	}
	count_status(200);
	tpo_stats_count_out(&st.stats, st.stage, st.lane, 1);
	tpo_stats_service(&st.stats, st.stage, st.lane, now - r->admitted_ns);
	if (e && e->first_token_ns > r->admitted_ns)
		tpo_stats_ttft(&st.stats, st.stage, st.lane, e->first_token_ns - r->admitted_ns);
	req_free(r);
}

static void on_record(int lane, const struct tpo_rec *rec)
{
	struct sreq *r = req_find(rec->req_id);
	struct tpo_http_conn *c;

	if (!r) {
		cancel_orphan(lane, rec);
		return;
	}
	c = tpo_http_conn_lookup(srv, r->conn);
	if (!c) {
		/* The client went away and we learnt it from a failed write:
		 * stop the work in the lane as on_close would have. */
		if (rec->type != TPO_MSG_END && rec->type != TPO_MSG_ERROR)
			send_cancel(r, TPO_CANCEL_CLIENT);
		req_free(r);
		return;
	}
	switch (rec->type) {
	case TPO_MSG_BEGIN:
		if (r->state == R_QUEUED)
			r->state = R_INFER;
		/* Stamped by infer when inference began (the record itself may
		 * reach us later: infer defers the wake-up for it). */
		if (rec->ts_ns > r->admitted_ns)
			tpo_stats_queue_wait(&st.stats, st.stage, st.lane,
					     rec->ts_ns - r->admitted_ns);
		break;
	case TPO_MSG_TOKEN:
		if (r->state == R_QUEUED)
			r->state = R_INFER;
		cork(r, c);
		on_token(r, c, rec);
		break;
	case TPO_MSG_END:
		on_end(r, c, rec);
		break;
	case TPO_MSG_ERROR: {
		const struct tpo_msg_err *e = tpo_rec_data(rec);
		char msg[512];
		int status = 500;
		size_t n = 0;
		if (rec->len >= sizeof(*e)) {
			status = e->status >= 400 && e->status <= 599 ? e->status : 500;
			n = e->msg_len < rec->len - sizeof(*e) ? e->msg_len : rec->len - sizeof(*e);
			if (n >= sizeof(msg))
				n = sizeof(msg) - 1;
			memcpy(msg, e + 1, n);
		}
		msg[n] = 0;
		/* The stage that failed it may not be the one running it (post
		 * restarted mid-stream): make sure inference stops too. */
		send_cancel(r, TPO_CANCEL_CLIENT);
		req_fail(r, status, n ? msg : "internal error", NULL);
		break;
	}
	default:
		break;
	}
}

#define DRAIN_BATCHES 4

static int drain_rings(void)
{
	const struct tpo_rec *recs[64];
	int total = 0;

	for (int k = 0; k < st.nin; k++) {
		struct tpo_ring *ring = &st.in[k];
		/* A few batches before the sends (uncork_all): the 66 records of
		 * a 64-token answer leave in one send(2), not two, while sockets
		 * still wait at most DRAIN_BATCHES batches for their events. */
		for (int b = 0; b < DRAIN_BATCHES; b++) {
			int n = tpo_ring_peek_batch(ring, recs, 64);
			if (n < 0) {
				tpo_log(LOG_CRIT, "fatal: ring from post[%d] is corrupt", k);
				return n;
			}
			for (int i = 0; i < n; i++)
				on_record(k, recs[i]);
			if (n)
				tpo_ring_release(ring);
			total += n;
			if (n < 64)
				break;
		}
	}
	uncork_all();
	return total;
}

/* ---- HTTP routes ---- */

static void respond_json(struct tpo_http_conn *c, int status, const char *body, size_t n)
{
	count_status(status);
	tpo_http_respond(c, status, "application/json", NULL, body, n);
}

static int ready(void)
{
	for (int l = 0; l < st.nlanes; l++)
		if (lane_up(l))
			return 1;
	return 0;
}

static void on_request(struct tpo_http_conn *c, struct tpo_http_req *req, void *arg)
{
	const char *p = req->path;
	int get = req->method == HTTP_GET || req->method == HTTP_HEAD;
	int post = req->method == HTTP_POST;
	int n;

	(void)arg;
	tpo_http_conn_set_user64(c, 0);
	if (!strcmp(p, "/healthz")) {
		if (!get)
			return send_error(c, 405, "method not allowed: use GET", "Allow: GET, HEAD\r\n");
		return respond_json(c, 200, "{\"status\":\"ok\"}\n", 16);
	}
	if (!strcmp(p, "/readyz")) {
		if (!get)
			return send_error(c, 405, "method not allowed: use GET", "Allow: GET, HEAD\r\n");
		if (draining)
			return respond_json(c, 503, "{\"status\":\"draining\"}\n", 22);
		if (!ready())
			return respond_json(c, 503, "{\"status\":\"no lane ready\"}\n", 27);
		return respond_json(c, 200, "{\"status\":\"ready\"}\n", 19);
	}
	if (!strcmp(p, "/metrics")) {
		if (!get)
			return send_error(c, 405, "method not allowed: use GET", "Allow: GET, HEAD\r\n");
		static char *mbuf;
		if (!mbuf && !(mbuf = malloc(TPO_METRICS_MAX_BYTES)))
			return send_error(c, 500, "out of memory", NULL);
		n = tpo_metrics_render(&st.stats, mbuf, TPO_METRICS_MAX_BYTES);
		if (n < 0)
			return send_error(c, 500, "metrics too large", NULL);
		count_status(200);
		tpo_http_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", NULL,
				 mbuf, (size_t)n);
		return;
	}
	if (!strncmp(p, "/v1/", 4) && !authorized(req))
		return send_error(c, 401, "invalid or missing API key (Authorization: Bearer ...)",
				  "WWW-Authenticate: Bearer\r\n");
	if (!strcmp(p, "/v1/models")) {
		const char *names[TPO_CONFIG_MODELS_MAX];
		if (!get)
			return send_error(c, 405, "method not allowed: use GET", "Allow: GET, HEAD\r\n");
		for (int i = 0; i < st.cfg.nmodels; i++)
			names[i] = st.cfg.models[i];
		n = tpo_oai_models(out, sizeof(out), names, st.cfg.nmodels, 1700000000);
		return respond_json(c, 200, out, n > 0 ? (size_t)n : 0);
	}
	if (!strcmp(p, "/v1/chat/completions") || !strcmp(p, "/v1/completions")) {
		if (!post)
			return send_error(c, 405, "method not allowed: use POST", "Allow: POST\r\n");
		admit(c, req, p[4] == 'c' && p[5] == 'h' ? TPO_OAI_CHAT : TPO_OAI_COMPLETION);
		/* Everything needed is in the ring record and our sreq: a
		 * request waiting for its answer holds no request buffers. */
		tpo_http_req_done(c);
		return;
	}
	send_error(c, 404, "unknown path: see /v1/chat/completions, /v1/completions, "
		   "/v1/models, /healthz, /readyz, /metrics", NULL);
}

/* Client gone: forget its request everywhere in the lane. */
static void on_close(struct tpo_http_conn *c, void *arg)
{
	uint64_t id = tpo_http_conn_user64(c);
	struct sreq *r;

	(void)arg;
	if (!id || !(r = req_find(id)))
		return;
	send_cancel(r, TPO_CANCEL_CLIENT);
	req_free(r);
}

/* Arms tickfd (one-shot) for at (CLOCK_MONOTONIC, never 0: that would
 * disarm it); a time passed fires at once. */
static void tick_arm(uint64_t at)
{
	struct itimerspec its = { { 0, 0 }, { (time_t)(at / 1000000000ull),
					       (long)(at % 1000000000ull) } };

	timerfd_settime(tickfd, TFD_TIMER_ABSTIME, &its, NULL);
	tick_at = at;
}

static void on_tick(void)
{
	uint64_t now = tpo_now_ns(), next = now + TICK_MS * 1000000ull;

	for (int l = 0; l < st.nlanes; l++) {
		struct sreq *r = lane_list[l].next;
		int down = r != &lane_list[l] ? lane_stage_out(l) : -1;

		if (down >= 0) {
			char msg[128];

			/* Past a stage before infer, a request in inference or
			 * streaming no longer needs it: only queued ones end. */
			snprintf(msg, sizeof(msg), "pipeline lane %d is out of service (its %s "
				 "stage keeps failing): try again", l, tpo_stage_name(down));
			while (r != &lane_list[l]) {
				struct sreq *nx = r->next;
				if (down >= TPO_ST_INFER || r->state == R_QUEUED) {
					send_cancel(r, TPO_CANCEL_SHED);
					req_fail(r, 503, msg, "Retry-After: 1\r\n");
				}
				r = nx;
			}
			r = lane_list[l].next;
		}
		while (r != &lane_list[l]) {
			struct sreq *nx = r->next;
			if (now >= r->deadline_ns) {
				send_cancel(r, TPO_CANCEL_DEADLINE);
				req_fail(r, 504, "request timed out (deadline passed)", NULL);
			} else if (r->deadline_ns < next) {
				next = r->deadline_ns;
			}
			r = nx;
		}
	}
	if (draining && next > now + DRAIN_TICK_MS * 1000000ull)
		next = now + DRAIN_TICK_MS * 1000000ull;
	tick_arm(next);
	if (draining && (nactive == 0 || now >= drain_deadline_ns)) {
		for (int l = 0; l < st.nlanes; l++)
			while (lane_list[l].next != &lane_list[l]) {
				struct sreq *r = lane_list[l].next;
				send_cancel(r, TPO_CANCEL_DEADLINE);
				req_fail(r, 503, "the server shut down before this request finished", NULL);
			}
		tpo_stage_stopping = 2;
	}
	tpo_stage_tick(&st);
}

static int setup(void)
{
	const struct tpo_config_admission *adm = &st.cfg.admission;
	struct tpo_http_callbacks cb = { .on_request = on_request, .on_close = on_close };
	struct tpo_http_config hc;
	struct epoll_event ev = { .events = EPOLLIN };
	uint64_t rnd = 0;
	int err;

	nslots = 1;
	while (nslots < adm->max_inflight_per_lane * (uint32_t)st.nlanes * 2 + 64 &&
	       nslots < (1u << SLOT_BITS))
		nslots <<= 1;
	reqs = calloc(nslots, sizeof(*reqs));
	if (!reqs)
		return -ENOMEM;
	reqs_mask = nslots - 1;
	if (getrandom(&rnd, sizeof(rnd), 0) < 0)
		rnd = tpo_now_ns();
	id_counter = rnd & ((1ull << 36) - 1);
	for (int l = 0; l < TPO_RINGSET_MAX_LANES; l++)
		atomic_store_explicit(&st.rs.load[st.lane][l], 0, memory_order_relaxed);
	for (int l = 0; l < TPO_RINGSET_MAX_LANES; l++)
		lane_list[l].next = lane_list[l].prev = &lane_list[l];
	if (st.cfg.auth_api_keys_env[0]) {
		const char *k = getenv(st.cfg.auth_api_keys_env);
		if (!k || !*k) {
			tpo_log(LOG_ERR, "fatal: auth.api_keys_env: environment variable %s is "
				"not set or empty", st.cfg.auth_api_keys_env);
			return -EINVAL;
		}
		snprintf(api_keys, sizeof(api_keys), "%s", k);
	}

	epfd = epoll_create1(EPOLL_CLOEXEC);
	tickfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (epfd < 0 || tickfd < 0)
		return -errno;
	tick_arm(tpo_now_ns() + TICK_MS * 1000000ull);
	ev.data.ptr = &tick_tag;
	epoll_ctl(epfd, EPOLL_CTL_ADD, tickfd, &ev);
	/* Edge-triggered: every ring of the eventfd queues one event, so it is
	 * never drained (a read(2) per wake-up saved); a poll(2) on it in
	 * tpo_ring_wait_space drains it then. */
	ev.events = EPOLLIN | EPOLLET;
	ev.data.ptr = &bell_tag;
	epoll_ctl(epfd, EPOLL_CTL_ADD, st.bell, &ev);

	tpo_http_config_default(&hc);
	body_max = hc.out_cap_bytes - 2 * BODY_ROOM;
	hc.max_conns = adm->max_connections;
	hc.max_headers = adm->max_headers;
	hc.max_header_bytes = adm->max_header_bytes;
	hc.max_body_bytes = adm->max_body_bytes;
	hc.header_timeout_ms = adm->header_timeout_ms;
	hc.idle_timeout_ms = adm->idle_timeout_ms;
	err = tpo_http_create(&srv, epfd, &hc, &cb, NULL);
	if (err < 0)
		return err;
	err = tpo_http_listen(srv, st.cfg.listen);
	if (err < 0) {
		tpo_log(LOG_ERR, "fatal: unable to listen on %s: %s", st.cfg.listen, strerror(-err));
		/* An address in use or not ours: restarting cannot help, exit 78
		 * so the supervisor does not crash-loop us. */
		if (err == -EADDRINUSE || err == -EADDRNOTAVAIL || err == -EACCES ||
		    err == -EINVAL)
			return -EINVAL;
		return err;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct epoll_event evs[64];
	int rc = tpo_stage_init(&st, TPO_ST_STREAM, argc, argv), err;

	if (rc)
		return rc;
	err = setup();
	if (err < 0) {
		if (err != -EINVAL)
			tpo_log(LOG_ERR, "fatal: %s", strerror(-err));
		return err == -EINVAL ? 78 : 111;
	}
	while (tpo_stage_stopping < 2) {
		int n, busy;

		if (tpo_stage_stopping && !draining) {
			draining = 1;
			drain_deadline_ns = tpo_now_ns() +
				(uint64_t)st.cfg.drain_timeout_ms * 1000000ull;
			tpo_http_stop_accepting(srv);
			tpo_http_close_idle(srv);
			tick_arm(tpo_now_ns());    /* check at once, then every DRAIN_TICK_MS */
		}
		busy = drain_rings();
		if (busy < 0)
			return 111;
		/* Sleep only after announcing it on our input rings: also after a
		 * drain that emptied them (epoll_wait returns at once if a socket
		 * is ready; a zero-timeout look after each drain was a third
		 * epoll_wait per request). */
		if (tpo_ring_sleep_begin(st.inp, st.nin)) {
			n = epoll_wait(epfd, evs, 64, 0);
		} else {
			n = epoll_wait(epfd, evs, 64, TPO_STAGE_WAIT_MS);
			tpo_ring_sleep_end(st.inp, st.nin);
		}
		for (int i = 0; i < n; i++) {
			struct tpo_http_tag *t = evs[i].data.ptr;
			if (tpo_http_tag_ours(t)) {
				tpo_http_on_event(srv, &evs[i]);
			} else if (t->kind == TAG_TICK) {
				uint64_t x;
				if (read(tickfd, &x, sizeof(x)) > 0)
					on_tick();
			}
		}
	}
	/* The last answers may still sit in output buffers: let them leave
	 * (connections close after their response while draining), briefly. */
	for (uint64_t end = tpo_now_ns() + 1000000000ull;
	     tpo_http_conns(srv) && tpo_now_ns() < end;) {
		int n = epoll_wait(epfd, evs, 64, 20);
		for (int i = 0; i < n; i++) {
			struct tpo_http_tag *t = evs[i].data.ptr;
			uint64_t x;
			if (tpo_http_tag_ours(t))
				tpo_http_on_event(srv, &evs[i]);
			else if (t->kind == TAG_TICK && read(tickfd, &x, sizeof(x)) < 0)
				break;
		}
	}
	tpo_http_destroy(srv);
	tpo_stage_fini(&st);
	return 0;
}
