/*
 * stats.c — the per-instance stats segment (see stats.h for the layout and
 * the one-writer-per-word rule).
 *
 * Seqlock protocol (Boehm, "Can seqlocks get along with programming language
 * memory models?", 2012), every protected field being a relaxed atomic:
 *
 *   writer: s = seq (even); seq = s + 1; release fence; data stores;
 *           seq = s + 2 with release
 *   reader: s0 = seq with acquire; data loads; acquire fence;
 *           s1 = seq relaxed; valid iff s0 == s1 and s0 even
 */
#include "shm/stats.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>


#define LD(p)     atomic_load_explicit((p), memory_order_relaxed)
#define ST(p, v)  atomic_store_explicit((p), (v), memory_order_relaxed)

#undef SAME

static uint64_t clock_ns(clockid_t c)
{
	struct timespec ts;

	clock_gettime(c, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- seqlock ----------------------------------------------------------- */

/*
 * Called only by the group's owner. An odd sequence here means the previous
 * owner died between begin and end: step over it so readers can finish.
 */
static uint32_t seq_write_begin(_Atomic uint32_t *seq)
{
	uint32_t s = LD(seq);

	if (s & 1)
		s++;
	ST(seq, s + 1);
	/* Orders the odd sequence before the data stores; pairs with the
	 * acquire fence in seq_read_end. */
	atomic_thread_fence(memory_order_release);
	return s + 2;
}

static void seq_write_end(_Atomic uint32_t *seq, uint32_t s)
{
	/* Pairs with the acquire load in seq_read_begin. */
	atomic_store_explicit(seq, s, memory_order_release);
}

/* Makes a dead writer's odd sequence even; owner only. */
static void seq_repair(_Atomic uint32_t *seq)
{
	uint32_t s = LD(seq);

	if (s & 1)
		atomic_store_explicit(seq, s + 1, memory_order_release); /* pairs with
			the acquire load in seq_read_begin */
}

/* Returns the sequence to check against, or 1 (odd) if a write is open. */
static uint32_t seq_read_begin(const _Atomic uint32_t *seq)
{
	/* Pairs with the release store in seq_write_end. */
	return atomic_load_explicit(seq, memory_order_acquire);
}

static int seq_read_end(const _Atomic uint32_t *seq, uint32_t s0)
{
	/* Orders the data loads before the re-check; pairs with the release
	 * fence in seq_write_begin. */
	atomic_thread_fence(memory_order_acquire);
	return !(s0 & 1) && LD(seq) == s0;
}

static void read_backoff(int tries)
{
	if (tries >= 16)
		sched_yield();
}

/* Strings live in 64-bit words so seqlock readers copy them atomically. */
static void put_str(_Atomic uint64_t *w, size_t nwords, const char *s)
{
	size_t len = s ? strnlen(s, nwords * 8 - 1) : 0;

	for (size_t i = 0; i < nwords; i++) {
		uint64_t v = 0;
		size_t off = i * 8;
		if (off < len)
			memcpy(&v, s + off, len - off < 8 ? len - off : 8);
		ST(&w[i], v);
	}
}

static void get_str(char *out, const _Atomic uint64_t *w, size_t nwords)
{
	for (size_t i = 0; i < nwords; i++) {
		uint64_t v = LD(&w[i]);
		memcpy(out + i * 8, &v, 8);
	}
	out[nwords * 8 - 1] = '\0';
}

/* ---- lifetime ---------------------------------------------------------- */

int tpo_stats_create(struct tpo_stats *st, const char *instance, uint32_t nlanes)
{
	struct tpo_stats_shm *s;
	int err;

	memset(st, 0, sizeof(*st));
	if (nlanes < 1 || nlanes > TPO_MAX_LANES)
		return -EINVAL;
	err = tpo_seg_create(&st->seg, instance, "stats", TPO_SEG_STATS,
			     sizeof(struct tpo_stats_shm));
	if (err < 0)
		return err;
	s = st->shm = st->seg.base;
	/* Nobody can attach before publish: plain layout, no seqlock needed,
	 * the release in tpo_seg_publish covers it. */
	s->hdr.nprocs = TPO_MAX_PROCS;
	s->hdr.nrings = TPO_MAX_RINGS;
	s->hdr.nendpoints = TPO_MAX_ENDPOINTS;
	ST(&s->hdr.sup_pid, (uint32_t)getpid());
	ST(&s->hdr.nlanes, nlanes);
	ST(&s->hdr.start_ns, clock_ns(CLOCK_REALTIME));
	put_str(s->hdr.name, TPO_STATS_NAME_LEN / 8, instance);
	for (int l = 0; l < TPO_MAX_LANES; l++)
		ST(&s->hdr.lane_cpu[l], -1);
	for (int i = 0; i < TPO_MAX_PROCS; i++) {
		struct tpo_stats_sup *p = &s->proc[i].sup;
		ST(&p->stage, (uint32_t)(i == TPO_STATS_SUP_SLOT ? TPO_STATS_SUPERVISOR
								 : i / TPO_MAX_LANES));
		ST(&p->lane, (uint32_t)(i == TPO_STATS_SUP_SLOT ? 0 : i % TPO_MAX_LANES));
		ST(&p->last_status, -1);
		ST(&p->last_exit_code, -1);
	}
	ST(&s->proc[TPO_STATS_SUP_SLOT].sup.pid, (int32_t)getpid());
	ST(&s->proc[TPO_STATS_SUP_SLOT].sup.state, TPO_UNIT_RUNNING);
	ST(&s->proc[TPO_STATS_SUP_SLOT].sup.state_since_ns, clock_ns(CLOCK_MONOTONIC));
	tpo_seg_publish(&st->seg, TPO_STATS_VERSION);
	return 0;
}

int tpo_stats_attach(struct tpo_stats *st, const char *instance, int writable)
{
	int err;

	memset(st, 0, sizeof(*st));
	err = tpo_seg_attach(&st->seg, instance, "stats", TPO_SEG_STATS,
			     TPO_STATS_VERSION, writable, NULL);
	if (err < 0)
		return err;
	if (st->seg.size < sizeof(struct tpo_stats_shm)) {
		tpo_seg_close(&st->seg);
		return -EBADF;
	}
	st->shm = st->seg.base;
	return 0;
}

void tpo_stats_close(struct tpo_stats *st)
{
	tpo_seg_close(&st->seg);
	st->shm = NULL;
}

void tpo_stats_destroy(struct tpo_stats *st)
{
	char path[TPO_SEG_PATH_MAX];
	int mine;

	if (!st->shm)
		return;
	mine = st->shm->seg.owner_pid == (uint32_t)getpid();
	memcpy(path, st->seg.path, sizeof(path));
	if (mine)
		shm_unlink(path);         /* while we hold its lock (seg.h) */
	tpo_stats_close(st);
}

/* ---- supervisor writers ------------------------------------------------ */

static int writable(const struct tpo_stats *st)
{
	return st->shm && st->seg.writable;
}

void tpo_stats_set_instance(struct tpo_stats *st, const char *listen,
			    const int *cpus, int nlanes)
{
	struct tpo_stats_hdr *h;
	uint32_t s;

	if (!writable(st) || nlanes < 1 || nlanes > TPO_MAX_LANES)
		return;
	h = &st->shm->hdr;
	s = seq_write_begin(&h->seq);
	ST(&h->nlanes, (uint32_t)nlanes);
	for (int l = 0; l < TPO_MAX_LANES; l++)
		ST(&h->lane_cpu[l], cpus && l < nlanes ? cpus[l] : -1);
	put_str(h->listen, TPO_STATS_LISTEN_LEN / 8, listen);
	seq_write_end(&h->seq, s);
}

void tpo_stats_set_draining(struct tpo_stats *st, int on)
{
	if (writable(st))
		ST(&st->shm->hdr.draining, on ? 1u : 0u);
}

int tpo_stats_sup_set(struct tpo_stats *st, int stage, int lane,
		      const struct tpo_stats_sup_info *v)
{
	struct tpo_stats_proc *p = tpo_stats_proc_w(st, stage, lane);
	struct tpo_stats_sup *u;
	uint32_t s;

	if (!p || !v)
		return -EINVAL;
	u = &p->sup;
	s = seq_write_begin(&u->seq);
	ST(&u->pid, v->pid);
	ST(&u->state, v->state);
	ST(&u->restarts, v->restarts);
	ST(&u->last_status, v->last_status);
	ST(&u->last_exit_code, v->last_exit_code);
	ST(&u->last_signal, v->last_signal);
	ST(&u->state_since_ns, v->state_since_ns);
	seq_write_end(&u->seq, s);
	return 0;
}

int tpo_stats_ring_set(struct tpo_stats *st, int idx, uint32_t id, int from_stage,
		       int from_lane, int to_stage, int to_lane, uint64_t capacity)
{
	struct tpo_stats_ring *r;
	uint32_t s;

	if (!writable(st) || idx < 0 || idx >= TPO_MAX_RINGS)
		return -EINVAL;
	r = &st->shm->ring[idx];
	s = seq_write_begin(&r->seq);
	ST(&r->id, id);
	ST(&r->from_stage, (uint32_t)from_stage);
	ST(&r->from_lane, (uint32_t)from_lane);
	ST(&r->to_stage, (uint32_t)to_stage);
	ST(&r->to_lane, (uint32_t)to_lane);
	ST(&r->capacity, capacity);
	ST(&r->used, 1u);
	seq_write_end(&r->seq, s);
	return 0;
}

int tpo_stats_set_rings(struct tpo_stats *st, const struct tpo_ringset *rs)
{
	uint32_t n;
	int err;

	if (!rs || !rs->hdr)
		return -EINVAL;
	n = rs->hdr->nrings;
	if (n > TPO_MAX_RINGS)
		return -ENOSPC;
	for (uint32_t i = 0; i < n; i++) {
		const struct tpo_ringset_ent *e = &rs->ent[i];
		err = tpo_stats_ring_set(st, (int)i, e->id, e->from_stage, e->from_lane,
					 e->to_stage, e->to_lane, e->capacity);
		if (err < 0)
			return err;
	}
	return 0;
}

/* ---- child writers ----------------------------------------------------- */

int tpo_stats_proc_claim(struct tpo_stats *st, int stage, int lane)
{
	struct tpo_stats_proc *p = tpo_stats_proc_w(st, stage, lane);
	struct tpo_stats_child *c;
	uint64_t now = clock_ns(CLOCK_MONOTONIC);
	uint32_t s;

	if (!p)
		return -EINVAL;
	c = &p->child;
	seq_repair(&c->seq);
	s = seq_write_begin(&c->seq);
	ST(&c->pid, (int32_t)getpid());
	ST(&c->claims, LD(&c->claims) + 1);
	ST(&c->claimed_ns, now);
	seq_write_end(&c->seq, s);
	ST(&c->in_flight, 0);
	ST(&c->heartbeat_ns, now);
	return 0;
}

void tpo_stats_ring_update(struct tpo_stats *st, int idx, uint64_t enqueued,
			   uint64_t dequeued, uint64_t head, uint64_t tail, uint64_t hwm)
{
	struct tpo_stats_ring *r;

	if (!writable(st) || idx < 0 || idx >= TPO_MAX_RINGS)
		return;
	r = &st->shm->ring[idx];
	ST(&r->enqueued, enqueued);
	ST(&r->dequeued, dequeued);
	ST(&r->head, head);
	ST(&r->tail, tail);
	ST(&r->hwm, hwm);
}

static uint32_t ep_key(int lane, int ep)
{
	return ((uint32_t)(lane + 1) << 16) | (uint32_t)(ep + 1);
}

int tpo_stats_ep_claim(struct tpo_stats *st, int lane, int ep, const char *name,
		       const char *url)
{
	uint32_t key, s;
	struct tpo_stats_ep *e = NULL;
	int i;

	if (!writable(st) || lane < 0 || lane >= TPO_MAX_LANES || ep < 0 || ep >= 0xffff)
		return -EINVAL;
	key = ep_key(lane, ep);
	/* Our own slot first: a restarted infer process takes it back. */
	for (i = 0; i < TPO_MAX_ENDPOINTS; i++)
		if (LD(&st->shm->ep[i].owner) == key)
			break;
	if (i == TPO_MAX_ENDPOINTS) {
		for (i = 0; i < TPO_MAX_ENDPOINTS; i++) {
			uint32_t expect = 0;
			/* Infer processes of other lanes race for free slots;
			 * the data is published by the seqlock, not by this. */
			if (atomic_compare_exchange_strong_explicit(&st->shm->ep[i].owner,
					&expect, key, memory_order_relaxed,
					memory_order_relaxed))
				break;
		}
		if (i == TPO_MAX_ENDPOINTS)
			return -ENOSPC;
	}
	e = &st->shm->ep[i];
	seq_repair(&e->seq);
	s = seq_write_begin(&e->seq);
	ST(&e->lane, (uint32_t)lane);
	ST(&e->index, (uint32_t)ep);
	ST(&e->state, (uint32_t)TPO_EP_CLOSED);
	ST(&e->pid, (int32_t)getpid());
	ST(&e->state_since_ns, clock_ns(CLOCK_MONOTONIC));
	put_str(e->name, TPO_STATS_EP_NAME_LEN / 8, name);
	put_str(e->url, TPO_STATS_EP_URL_LEN / 8, url);
	seq_write_end(&e->seq, s);
	ST(&e->in_flight, 0);
	return i;
}

int tpo_stats_ep_set_state(struct tpo_stats *st, int slot, enum tpo_ep_state state,
			   uint64_t now_ns)
{
	struct tpo_stats_ep *e;
	uint32_t s;

	if (!writable(st) || slot < 0 || slot >= TPO_MAX_ENDPOINTS ||
	    (unsigned)state >= TPO_EP_NSTATES)
		return -EINVAL;
	e = &st->shm->ep[slot];
	s = seq_write_begin(&e->seq);
	ST(&e->state, (uint32_t)state);
	ST(&e->state_since_ns, now_ns);
	seq_write_end(&e->seq, s);
	return 0;
}

/* ---- readers ----------------------------------------------------------- */

int tpo_stats_read_info(const struct tpo_stats *st, struct tpo_stats_info *out)
{
	const struct tpo_stats_hdr *h;

	if (!st->shm)
		return -EINVAL;
	h = &st->shm->hdr;
	for (int t = 0; t < TPO_STATS_READ_TRIES; t++) {
		uint32_t s0 = seq_read_begin(&h->seq);
		out->sup_pid = (int32_t)LD(&h->sup_pid);
		out->nlanes = LD(&h->nlanes);
		out->start_ns = LD(&h->start_ns);
		for (int l = 0; l < TPO_MAX_LANES; l++)
			out->lane_cpu[l] = LD(&h->lane_cpu[l]);
		get_str(out->name, h->name, TPO_STATS_NAME_LEN / 8);
		get_str(out->listen, h->listen, TPO_STATS_LISTEN_LEN / 8);
		if (seq_read_end(&h->seq, s0)) {
			out->draining = (int)LD(&h->draining);
			return 0;
		}
		read_backoff(t);
	}
	return -EAGAIN;
}

int tpo_stats_read_proc(const struct tpo_stats *st, int stage, int lane,
			struct tpo_proc_snapshot *out)
{
	const struct tpo_stats_sup *u;
	const struct tpo_stats_child *c;
	int i = tpo_stats_proc_index(stage, lane), t;

	if (!st->shm || i < 0)
		return -EINVAL;
	u = &st->shm->proc[i].sup;
	c = &st->shm->proc[i].child;
	for (t = 0; t < TPO_STATS_READ_TRIES; t++) {
		uint32_t s0 = seq_read_begin(&u->seq);
		out->stage = LD(&u->stage);
		out->lane = LD(&u->lane);
		out->pid = LD(&u->pid);
		out->state = LD(&u->state);
		out->restarts = LD(&u->restarts);
		out->last_status = LD(&u->last_status);
		out->last_exit_code = LD(&u->last_exit_code);
		out->last_signal = LD(&u->last_signal);
		out->state_since_ns = LD(&u->state_since_ns);
		if (seq_read_end(&u->seq, s0))
			break;
		read_backoff(t);
	}
	if (t == TPO_STATS_READ_TRIES)
		return -EAGAIN;
	for (t = 0; t < TPO_STATS_READ_TRIES; t++) {
		uint32_t s0 = seq_read_begin(&c->seq);
		out->child_pid = LD(&c->pid);
		out->claims = LD(&c->claims);
		out->claimed_ns = LD(&c->claimed_ns);
		if (seq_read_end(&c->seq, s0))
			break;
		read_backoff(t);
	}
	if (t == TPO_STATS_READ_TRIES)
		return -EAGAIN;
	out->heartbeat_ns = LD(&c->heartbeat_ns);
	out->in_flight = LD(&c->in_flight);
	out->req_in = LD(&c->req_in);
	out->req_out = LD(&c->req_out);
	out->shed_reject = LD(&c->shed_reject);
	out->shed_drop_oldest = LD(&c->shed_drop_oldest);
	out->timeouts = LD(&c->timeouts);
	out->errors = LD(&c->errors);
	out->tokens = LD(&c->tokens);
	for (int k = 0; k < TPO_STATUS_NCLASSES; k++)
		out->http[k] = LD(&c->http[k]);
	return 0;
}

int tpo_stats_read_ring(const struct tpo_stats *st, int idx, struct tpo_ring_snapshot *out)
{
	const struct tpo_stats_ring *r;
	uint32_t used = 0;
	int t;

	if (!st->shm || idx < 0 || idx >= TPO_MAX_RINGS)
		return -EINVAL;
	r = &st->shm->ring[idx];
	for (t = 0; t < TPO_STATS_READ_TRIES; t++) {
		uint32_t s0 = seq_read_begin(&r->seq);
		used = LD(&r->used);
		out->id = LD(&r->id);
		out->from_stage = LD(&r->from_stage);
		out->from_lane = LD(&r->from_lane);
		out->to_stage = LD(&r->to_stage);
		out->to_lane = LD(&r->to_lane);
		out->capacity = LD(&r->capacity);
		if (seq_read_end(&r->seq, s0))
			break;
		read_backoff(t);
	}
	if (t == TPO_STATS_READ_TRIES)
		return -EAGAIN;
	if (!used)
		return -ENOENT;
	out->enqueued = LD(&r->enqueued);
	out->dequeued = LD(&r->dequeued);
	out->head = LD(&r->head);
	out->tail = LD(&r->tail);
	out->hwm = LD(&r->hwm);
	/* head and tail are read apart: a tail that overtook the head read
	 * before it means an empty ring, not a huge one. */
	out->depth = out->head - out->tail <= out->capacity ? out->head - out->tail : 0;
	return 0;
}

int tpo_stats_read_ep(const struct tpo_stats *st, int slot, struct tpo_ep_snapshot *out)
{
	const struct tpo_stats_ep *e;
	int t;

	if (!st->shm || slot < 0 || slot >= TPO_MAX_ENDPOINTS)
		return -EINVAL;
	e = &st->shm->ep[slot];
	if (!LD(&e->owner))
		return -ENOENT;
	for (t = 0; t < TPO_STATS_READ_TRIES; t++) {
		uint32_t s0 = seq_read_begin(&e->seq);
		out->lane = LD(&e->lane);
		out->index = LD(&e->index);
		out->state = LD(&e->state);
		out->pid = LD(&e->pid);
		out->state_since_ns = LD(&e->state_since_ns);
		get_str(out->name, e->name, TPO_STATS_EP_NAME_LEN / 8);
		get_str(out->url, e->url, TPO_STATS_EP_URL_LEN / 8);
		if (seq_read_end(&e->seq, s0))
			break;
		read_backoff(t);
	}
	if (t == TPO_STATS_READ_TRIES)
		return -EAGAIN;
	/* Owned but never written (owner died between the CAS and the
	 * seqlock): nothing to show yet. */
	if (!out->pid)
		return -ENOENT;
	out->in_flight = LD(&e->in_flight);
	out->requests = LD(&e->requests);
	out->errors = LD(&e->errors);
	return 0;
}

const struct tpo_hist *tpo_stats_hist(const struct tpo_stats *st, int stage, int lane,
				      enum tpo_stats_hist_kind kind)
{
	int i = tpo_stats_proc_index(stage, lane);

	if (!st->shm || i < 0 || (unsigned)kind >= TPO_STATS_NHIST)
		return NULL;
	return &st->shm->proc[i].hist[kind];
}

int tpo_stats_merge_hist(const struct tpo_stats *st, int stage,
			 enum tpo_stats_hist_kind kind, struct tpo_hist *out)
{
	if (!st->shm || stage < 0 || stage > TPO_STATS_SUPERVISOR ||
	    (unsigned)kind >= TPO_STATS_NHIST || !out)
		return -EINVAL;
	for (int l = 0; l < TPO_MAX_LANES; l++) {
		const struct tpo_hist *h = tpo_stats_hist(st, stage, l, kind);
		if (h)
			tpo_hist_merge(out, h);
	}
	return 0;
}

/* ---- names ------------------------------------------------------------- */

const char *tpo_stats_stage_name(int stage)
{
	static const char *const names[] = {
		"stream", "rag", "assemble", "infer", "post", "supervisor"
	};

	return stage >= 0 && stage <= TPO_STATS_SUPERVISOR ? names[stage] : "?";
}

const char *tpo_unit_state_name(int state)
{
	static const char *const names[TPO_UNIT_NSTATES] = {
		"stopped", "running", "backoff", "open", "half-open", "failed", "stopping", "off"
	};

	return state >= 0 && state < TPO_UNIT_NSTATES ? names[state] : "?";
}

const char *tpo_ep_state_name(int state)
{
	static const char *const names[TPO_EP_NSTATES] = { "closed", "open", "half-open" };

	return state >= 0 && state < TPO_EP_NSTATES ? names[state] : "?";
}

static const int status_codes[TPO_STATUS_NCLASSES] = {
	200, 400, 401, 404, 405, 408, 413, 429, 431, 500, 502, 503, 504, 0
};

int tpo_stats_status_class(int status)
{
	for (int k = 0; k < TPO_STATUS_OTHER; k++)
		if (status_codes[k] == status)
			return k;
	return TPO_STATUS_OTHER;
}

int tpo_stats_status_code(int cls)
{
	return cls >= 0 && cls < TPO_STATUS_NCLASSES ? status_codes[cls] : 0;
}
