/*
 * stats.h — the stats segment of one instance: identity, state, counters and
 * latency histograms of every process, ring and upstream endpoint, read live
 * by tpo-top and /metrics.
 *
 * /tpo.<instance>.stats, kind TPO_SEG_STATS, version TPO_STATS_VERSION,
 * fixed size (3990848 bytes, mostly histograms; tmpfs allocates a page
 * only when it is first touched):
 *
 *   offset   size          field
 *   0        64            struct tpo_seg_hdr (seg.h)
 *   64       256           struct tpo_stats_hdr       supervisor
 *   320      128 * 640     struct tpo_stats_ring[640] identity: supervisor,
 *                                                     counters: ring consumer
 *   82240    320 * 32      struct tpo_stats_ep[32]    the infer process of
 *                                                     the owning lane
 *   92480    48128 * 81    struct tpo_stats_proc[81]  see below
 *
 * Process slot i = stage * TPO_MAX_LANES + lane; slot TPO_STATS_SUP_SLOT (80)
 * is the supervisor itself (stage TPO_STATS_SUPERVISOR, lane 0).
 *
 * struct tpo_stats_hdr (256 bytes):
 *   0    4   seq            seqlock over the fields marked (s)
 *   4    4   sup_pid    (s)
 *   8    4   nlanes     (s) lanes in use, 1..TPO_MAX_LANES
 *   12   4   draining       0/1, atomic on its own
 *   16   8   start_ns   (s) CLOCK_REALTIME at creation
 *   24   4   nprocs         capacities, constant: 81, 640, 32
 *   28   4   nrings
 *   32   4   nendpoints
 *   36   4   reserved
 *   40   40  name       (s) instance name, NUL-padded
 *   80   64  lane_cpu   (s) int32[16]: OS cpu index of each lane, -1 unpinned
 *   144  64  listen     (s) listen address as configured, NUL-padded
 *   208  48  reserved
 *
 * struct tpo_stats_proc (48128 bytes) — two parts, two writers:
 *   0      64     sup:   seqlock'd by the SUPERVISOR: seq, stage, lane, pid,
 *                        state, restarts, last_status, last_exit_code,
 *                        last_signal, state_since_ns
 *   64     64     child: seqlock'd by the CHILD: seq, pid, claims,
 *                        claimed_ns; atomic on their own: heartbeat_ns,
 *                        in_flight
 *   128    64     child counters: req_in, req_out, shed_reject,
 *                        shed_drop_oldest, timeouts, errors, tokens
 *   192    128    child: http[16] responses by status class (stream stage)
 *   320    15936  child: hist service time      (struct tpo_hist, hist.h)
 *   16256  15936  child: hist queue wait
 *   32192  15936  child: hist time to first token
 *
 * struct tpo_stats_ring (128 bytes):
 *   0    64  seqlock'd by the SUPERVISOR (tpo_stats_ring_set): seq, id,
 *            from_stage, from_lane, to_stage, to_lane, used, capacity
 *   64   64  written by the ring's CONSUMER (tpo_stats_ring_update):
 *            enqueued, dequeued, head, tail (byte positions; depth = head -
 *            tail), hwm (highest depth in bytes)
 *
 * struct tpo_stats_ep (320 bytes), owned by one (lane, endpoint) pair:
 *   0    4   owner       0 free, else ((lane + 1) << 16 | (endpoint + 1)),
 *                        taken once by compare-and-swap
 *   4    60  seqlock'd by the owner: seq, lane, index, state, pid,
 *            state_since_ns
 *   64   64  name        (seqlock'd) NUL-padded
 *   128  128 url         (seqlock'd) NUL-padded
 *   256  64  in_flight, requests, errors (atomic on their own)
 *
 * The rule. Every word has exactly one writing process. A group of fields
 * that must be read together (identity, state) is written under its own
 * seqlock by that writer; readers copy the group and retry if the sequence
 * was odd or changed, giving up with -EAGAIN after TPO_STATS_READ_TRIES.
 * Counters, gauges, heartbeats and histograms are single values (or, for
 * histograms, monotonic sums) updated outside any seqlock with relaxed
 * atomic loads and stores: readers see each one whole, not all of them at
 * one instant. Every shared word is accessed atomically, so a seqlock
 * reader's racing copy is well defined (strings are stored as 64-bit words).
 *
 * Writer death. A writer killed inside a seqlock write leaves the sequence
 * odd. Only a slot's owner writes it, and a new owner exists only after the
 * old one is dead (the supervisor reaps a child before respawning it), so
 * the replacement makes the sequence even when it takes the slot over
 * (tpo_stats_proc_claim, tpo_stats_ep_claim) and at every write begin.
 * Until then readers get -EAGAIN for that group, never a stall.
 */
#ifndef TPO_STATS_H
#define TPO_STATS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "shm/hist.h"
#include "shm/ringset.h"
#include "shm/seg.h"

#define TPO_STATS_VERSION     1
#define TPO_MAX_LANES         16
#define TPO_NSTAGES           5
#define TPO_STATS_SUPERVISOR  TPO_NSTAGES                  /* pseudo-stage */
#define TPO_STATS_SUP_SLOT    (TPO_NSTAGES * TPO_MAX_LANES)
#define TPO_MAX_PROCS         (TPO_NSTAGES * TPO_MAX_LANES + 1)
#define TPO_MAX_RINGS         640
#define TPO_MAX_ENDPOINTS     32
#define TPO_STATS_READ_TRIES  256
#define TPO_STATS_NAME_LEN    40
#define TPO_STATS_LISTEN_LEN  64
#define TPO_STATS_EP_NAME_LEN 64
#define TPO_STATS_EP_URL_LEN  128

enum tpo_stats_stage {
	TPO_STAGE_STREAM = 0,
	TPO_STAGE_RAG,
	TPO_STAGE_ASSEMBLE,
	TPO_STAGE_INFER,
	TPO_STAGE_POST,
};
_Static_assert(TPO_NSTAGES == TPO_ST_COUNT, "stats stages = ringset stages");
_Static_assert(TPO_MAX_LANES == TPO_RINGSET_MAX_LANES, "lanes");
_Static_assert(TPO_MAX_RINGS >= 2 * TPO_MAX_LANES * TPO_MAX_LANES + 3 * TPO_MAX_LANES,
	       "a ring slot for every ring of a full ring set");

/* Values 0..5 are shared with supervisor/fsm.h enum tpo_fsm_state. */
enum tpo_unit_state {
	TPO_UNIT_STOPPED = 0,
	TPO_UNIT_RUNNING,
	TPO_UNIT_BACKOFF,
	TPO_UNIT_OPEN,
	TPO_UNIT_HALF_OPEN,
	TPO_UNIT_FAILED,
	TPO_UNIT_STOPPING,      /* the supervisor's transient state */
	TPO_UNIT_OFF,           /* the configuration runs no process here (rag) */
	TPO_UNIT_NSTATES
};

enum tpo_ep_state {
	TPO_EP_CLOSED = 0,
	TPO_EP_OPEN,
	TPO_EP_HALF_OPEN,
	TPO_EP_NSTATES
};

/* Response counters of the stream stage; tpo_stats_status_class() maps a
 * status code, anything unlisted is TPO_STATUS_OTHER. */
enum tpo_status_class {
	TPO_STATUS_200 = 0,
	TPO_STATUS_400,
	TPO_STATUS_401,
	TPO_STATUS_404,
	TPO_STATUS_405,
	TPO_STATUS_408,
	TPO_STATUS_413,
	TPO_STATUS_429,
	TPO_STATUS_431,
	TPO_STATUS_500,
	TPO_STATUS_502,
	TPO_STATUS_503,
	TPO_STATUS_504,
	TPO_STATUS_OTHER,
	TPO_STATUS_NCLASSES
};
#define TPO_STATUS_SLOTS 16   /* room in the layout for new classes */
_Static_assert(TPO_STATUS_NCLASSES <= TPO_STATUS_SLOTS, "status slots");

/* The three latency histograms of a process slot. */
enum tpo_stats_hist_kind {
	TPO_STATS_SERVICE = 0,   /* receive of a record .. its output committed */
	TPO_STATS_QUEUE_WAIT,    /* enqueue (rec ts_ns) .. dequeue */
	TPO_STATS_TTFT,          /* request admitted .. first token (infer, stream) */
	TPO_STATS_NHIST
};

struct tpo_stats_hdr {
	_Atomic uint32_t seq;
	_Atomic uint32_t sup_pid;
	_Atomic uint32_t nlanes;
	_Atomic uint32_t draining;
	_Atomic uint64_t start_ns;
	uint32_t         nprocs;
	uint32_t         nrings;
	uint32_t         nendpoints;
	uint32_t         reserved0;
	_Atomic uint64_t name[TPO_STATS_NAME_LEN / 8];
	_Atomic int32_t  lane_cpu[TPO_MAX_LANES];
	_Atomic uint64_t listen[TPO_STATS_LISTEN_LEN / 8];
	uint8_t          reserved1[48];
};
_Static_assert(sizeof(struct tpo_stats_hdr) == 256, "stats hdr size");
_Static_assert(offsetof(struct tpo_stats_hdr, draining) == 12, "draining");
_Static_assert(offsetof(struct tpo_stats_hdr, start_ns) == 16, "start_ns");
_Static_assert(offsetof(struct tpo_stats_hdr, nprocs) == 24, "nprocs");
_Static_assert(offsetof(struct tpo_stats_hdr, nendpoints) == 32, "nendpoints");
_Static_assert(offsetof(struct tpo_stats_hdr, name) == 40, "name");
_Static_assert(offsetof(struct tpo_stats_hdr, lane_cpu) == 80, "lane_cpu");
_Static_assert(offsetof(struct tpo_stats_hdr, listen) == 144, "listen");

/* Supervisor part of a process slot. */
struct tpo_stats_sup {
	_Atomic uint32_t seq;
	_Atomic uint32_t stage;
	_Atomic uint32_t lane;
	_Atomic int32_t  pid;
	_Atomic uint32_t state;           /* enum tpo_unit_state */
	_Atomic uint32_t restarts;
	_Atomic int32_t  last_status;     /* raw wait status, -1 none yet */
	_Atomic int32_t  last_exit_code;  /* -1 unless it exited */
	_Atomic int32_t  last_signal;     /* 0 unless killed by a signal */
	uint32_t         reserved0;
	_Atomic uint64_t state_since_ns;  /* CLOCK_MONOTONIC */
	uint64_t         reserved1[2];
};
_Static_assert(sizeof(struct tpo_stats_sup) == 64, "sup part");
_Static_assert(offsetof(struct tpo_stats_sup, state) == 16, "sup state");
_Static_assert(offsetof(struct tpo_stats_sup, last_status) == 24, "sup status");
_Static_assert(offsetof(struct tpo_stats_sup, last_signal) == 32, "sup signal");
_Static_assert(offsetof(struct tpo_stats_sup, state_since_ns) == 40, "sup since");

/* Child part of a process slot. */
struct tpo_stats_child {
	_Atomic uint32_t seq;
	_Atomic int32_t  pid;
	_Atomic uint32_t claims;          /* processes that took the slot */
	uint32_t         reserved0;
	_Atomic uint64_t claimed_ns;      /* CLOCK_MONOTONIC */
	_Atomic uint64_t heartbeat_ns;    /* CLOCK_MONOTONIC */
	_Atomic int64_t  in_flight;
	uint64_t         reserved1[3];
	_Atomic uint64_t req_in;
	_Atomic uint64_t req_out;
	_Atomic uint64_t shed_reject;     /* policy reject_new: 429 */
	_Atomic uint64_t shed_drop_oldest;/* policy drop_oldest: 503 */
	_Atomic uint64_t timeouts;        /* 504 */
	_Atomic uint64_t errors;
	_Atomic uint64_t tokens;
	uint64_t         reserved2;
	_Atomic uint64_t http[TPO_STATUS_SLOTS];
};
_Static_assert(sizeof(struct tpo_stats_child) == 256, "child part");
_Static_assert(offsetof(struct tpo_stats_child, claimed_ns) == 16, "claimed_ns");
_Static_assert(offsetof(struct tpo_stats_child, heartbeat_ns) == 24, "heartbeat");
_Static_assert(offsetof(struct tpo_stats_child, in_flight) == 32, "in_flight");
_Static_assert(offsetof(struct tpo_stats_child, req_in) == 64, "counters line");
_Static_assert(offsetof(struct tpo_stats_child, tokens) == 112, "tokens");
_Static_assert(offsetof(struct tpo_stats_child, http) == 128, "http");

struct tpo_stats_proc {
	struct tpo_stats_sup   sup;
	struct tpo_stats_child child;
	struct tpo_hist        hist[TPO_STATS_NHIST];
};
_Static_assert(sizeof(struct tpo_stats_proc) == 48128, "proc slot size");
_Static_assert(offsetof(struct tpo_stats_proc, child) == 64, "child part");
_Static_assert(offsetof(struct tpo_stats_proc, hist) == 320, "hists");

struct tpo_stats_ring {
	_Atomic uint32_t seq;
	_Atomic uint32_t id;
	_Atomic uint32_t from_stage;
	_Atomic uint32_t from_lane;
	_Atomic uint32_t to_stage;
	_Atomic uint32_t to_lane;
	_Atomic uint64_t capacity;
	_Atomic uint32_t used;
	uint32_t         reserved0;
	uint64_t         reserved1[3];
	_Atomic uint64_t enqueued;
	_Atomic uint64_t dequeued;
	_Atomic uint64_t head;
	_Atomic uint64_t tail;
	_Atomic uint64_t hwm;
	uint64_t         reserved2[3];
};
_Static_assert(sizeof(struct tpo_stats_ring) == 128, "ring slot size");
_Static_assert(offsetof(struct tpo_stats_ring, capacity) == 24, "ring capacity");
_Static_assert(offsetof(struct tpo_stats_ring, used) == 32, "ring used");
_Static_assert(offsetof(struct tpo_stats_ring, enqueued) == 64, "ring counters");
_Static_assert(offsetof(struct tpo_stats_ring, hwm) == 96, "ring hwm");

struct tpo_stats_ep {
	_Atomic uint32_t owner;
	_Atomic uint32_t seq;
	_Atomic uint32_t lane;
	_Atomic uint32_t index;
	_Atomic uint32_t state;           /* enum tpo_ep_state */
	_Atomic int32_t  pid;
	_Atomic uint64_t state_since_ns;  /* CLOCK_MONOTONIC */
	uint64_t         reserved0[4];
	_Atomic uint64_t name[TPO_STATS_EP_NAME_LEN / 8];
	_Atomic uint64_t url[TPO_STATS_EP_URL_LEN / 8];
	_Atomic int64_t  in_flight;
	_Atomic uint64_t requests;
	_Atomic uint64_t errors;
	uint64_t         reserved1[5];
};
_Static_assert(sizeof(struct tpo_stats_ep) == 320, "endpoint slot size");
_Static_assert(offsetof(struct tpo_stats_ep, state_since_ns) == 24, "ep since");
_Static_assert(offsetof(struct tpo_stats_ep, name) == 64, "ep name");
_Static_assert(offsetof(struct tpo_stats_ep, url) == 128, "ep url");
_Static_assert(offsetof(struct tpo_stats_ep, in_flight) == 256, "ep counters");

struct tpo_stats_shm {
	struct tpo_seg_hdr    seg;
	struct tpo_stats_hdr  hdr;
	struct tpo_stats_ring ring[TPO_MAX_RINGS];
	struct tpo_stats_ep   ep[TPO_MAX_ENDPOINTS];
	struct tpo_stats_proc proc[TPO_MAX_PROCS];
};
_Static_assert(offsetof(struct tpo_stats_shm, hdr) == 64, "stats hdr");
_Static_assert(offsetof(struct tpo_stats_shm, ring) == 320, "ring slots");
_Static_assert(offsetof(struct tpo_stats_shm, ep) == 82240, "endpoint slots");
_Static_assert(offsetof(struct tpo_stats_shm, proc) == 92480, "process slots");
_Static_assert(sizeof(struct tpo_stats_shm) == 3990848, "stats segment size");

/* A process's mapping of the stats segment. */
struct tpo_stats {
	struct tpo_seg        seg;
	struct tpo_stats_shm *shm;     /* NULL when not mapped */
};

/* Copies made under the seqlocks by the readers below. */
struct tpo_stats_info {
	char     name[TPO_STATS_NAME_LEN];
	int32_t  sup_pid;
	uint32_t nlanes;
	uint64_t start_ns;
	int32_t  lane_cpu[TPO_MAX_LANES];
	char     listen[TPO_STATS_LISTEN_LEN];
	int      draining;
};

struct tpo_proc_snapshot {
	/* supervisor part */
	uint32_t stage, lane;
	int32_t  pid;
	uint32_t state, restarts;
	int32_t  last_status, last_exit_code, last_signal;
	uint64_t state_since_ns;
	/* child part */
	int32_t  child_pid;
	uint32_t claims;
	uint64_t claimed_ns, heartbeat_ns;
	int64_t  in_flight;
	uint64_t req_in, req_out, shed_reject, shed_drop_oldest, timeouts,
		 errors, tokens;
	uint64_t http[TPO_STATUS_NCLASSES];
};

struct tpo_ring_snapshot {
	uint32_t id, from_stage, from_lane, to_stage, to_lane;
	uint64_t capacity, enqueued, dequeued, head, tail, hwm;
	uint64_t depth;                 /* head - tail, bytes */
};

struct tpo_ep_snapshot {
	uint32_t lane, index, state;
	int32_t  pid;
	uint64_t state_since_ns;
	char     name[TPO_STATS_EP_NAME_LEN];
	char     url[TPO_STATS_EP_URL_LEN];
	int64_t  in_flight;
	uint64_t requests, errors;
};

/* What the supervisor writes into a unit's slot (tpo_stats_sup_set). */
struct tpo_stats_sup_info {
	int32_t  pid;                   /* 0: no process */
	uint32_t state;                 /* enum tpo_unit_state */
	uint32_t restarts;
	int32_t  last_status;           /* raw wait status, -1 none */
	int32_t  last_exit_code;        /* -1 unless it exited */
	int32_t  last_signal;           /* 0 unless killed by a signal */
	uint64_t state_since_ns;
};


/* ---- lifetime ---------------------------------------------------------- */

/*
 * Supervisor: creates, lays out and publishes /tpo.<instance>.stats for
 * nlanes (1..TPO_MAX_LANES) lanes. -EEXIST if a live instance owns it (a
 * dead owner's is replaced), -EINVAL for a bad name or lane count, or a
 * tpo_seg_create() error. Undo with tpo_stats_destroy().
 */
int tpo_stats_create(struct tpo_stats *st, const char *instance, uint32_t nlanes);

/*
 * Children (writable = 1) and readers (0): maps a published stats segment.
 * Errors of tpo_seg_attach() (-ENOENT, -EPROTO, -EAGAIN, -EPROTONOSUPPORT,
 * -EBADF), and -EBADF for a segment smaller than this layout.
 */
int tpo_stats_attach(struct tpo_stats *st, const char *instance, int writable);

/* Unmaps; harmless on a closed or never opened struct (zeroed). */
void tpo_stats_close(struct tpo_stats *st);

/* Supervisor: unmaps and unlinks, but only the segment this process created
 * (after a failed create it leaves the live owner's segment alone). */
void tpo_stats_destroy(struct tpo_stats *st);

/* ---- supervisor writers ------------------------------------------------ */

/* Instance header: listen address (may be NULL), lane -> cpu
 * map of nlanes entries (cpus may be NULL: unpinned). */
void tpo_stats_set_instance(struct tpo_stats *st, const char *listen,
			    const int *cpus, int nlanes);
void tpo_stats_set_draining(struct tpo_stats *st, int on);

/* A unit's state, after every step of its state machine. 0 or -EINVAL. */
int tpo_stats_sup_set(struct tpo_stats *st, int stage, int lane,
		      const struct tpo_stats_sup_info *v);

/* Ring identity of slot idx, before the consumer first updates it. */
int tpo_stats_ring_set(struct tpo_stats *st, int idx, uint32_t id, int from_stage,
		       int from_lane, int to_stage, int to_lane, uint64_t capacity);
/* Every ring of a ring set: slot = ring index (tpo_ringset_index). */
int tpo_stats_set_rings(struct tpo_stats *st, const struct tpo_ringset *rs);

/* ---- child writers ----------------------------------------------------- */

/*
 * Takes over the child part of (stage, lane) for the calling process:
 * repairs a sequence its dead predecessor left odd, records pid and claim
 * time, zeroes the in-flight gauge and sets the heartbeat. Counters and
 * histograms carry on (they are cumulative per slot). 0 or -EINVAL.
 */
int tpo_stats_proc_claim(struct tpo_stats *st, int stage, int lane);

/* Consumer of ring idx publishes the ring's counters (relaxed loads of the
 * ring header are fine). */
void tpo_stats_ring_update(struct tpo_stats *st, int idx, uint64_t enqueued,
			   uint64_t dequeued, uint64_t head, uint64_t tail, uint64_t hwm);

/*
 * Infer process of lane: takes (or, after a restart, takes back) the slot of
 * its endpoint number ep, sets name and url, state closed, in-flight 0.
 * Returns the slot index, -ENOSPC when all are owned, -EINVAL.
 */
int tpo_stats_ep_claim(struct tpo_stats *st, int lane, int ep, const char *name,
		       const char *url);
int tpo_stats_ep_set_state(struct tpo_stats *st, int slot, enum tpo_ep_state state,
			   uint64_t now_ns);

/* ---- readers ----------------------------------------------------------- */

/* 0, -EAGAIN (a writer kept the group busy or died in it), -EINVAL bad
 * index, -ENOENT unused ring or endpoint slot. */
int tpo_stats_read_info(const struct tpo_stats *st, struct tpo_stats_info *out);
int tpo_stats_read_proc(const struct tpo_stats *st, int stage, int lane,
			struct tpo_proc_snapshot *out);
int tpo_stats_read_ring(const struct tpo_stats *st, int idx, struct tpo_ring_snapshot *out);
int tpo_stats_read_ep(const struct tpo_stats *st, int slot, struct tpo_ep_snapshot *out);

/* A process slot's histogram (live, read it with the hist.h readers), or
 * NULL for a bad stage/lane/kind. */
const struct tpo_hist *tpo_stats_hist(const struct tpo_stats *st, int stage, int lane,
				      enum tpo_stats_hist_kind kind);

/* Adds the kind histograms of every lane of stage into out (a private
 * histogram, zeroed or holding earlier merges). 0 or -EINVAL. */
int tpo_stats_merge_hist(const struct tpo_stats *st, int stage,
			 enum tpo_stats_hist_kind kind, struct tpo_hist *out);

/* ---- names ------------------------------------------------------------- */

const char *tpo_stats_stage_name(int stage);      /* "stream".., "supervisor" */
const char *tpo_unit_state_name(int state);       /* "running", "half-open" */
const char *tpo_ep_state_name(int state);         /* "closed", "open", "half-open" */
int tpo_stats_status_class(int status);           /* enum tpo_status_class */
int tpo_stats_status_code(int cls);               /* 0 for TPO_STATUS_OTHER */

/* ---- hot paths (any slot owner; no-ops on read-only or bad slots) ------- */

static inline int tpo_stats_proc_index(int stage, int lane)
{
	if (stage == TPO_STATS_SUPERVISOR && lane == 0)
		return TPO_STATS_SUP_SLOT;
	if (stage < 0 || stage >= TPO_NSTAGES || lane < 0 || lane >= TPO_MAX_LANES)
		return -1;
	return stage * TPO_MAX_LANES + lane;
}

/* The slot a process writes, or NULL (not mapped writable, bad index). */
static inline struct tpo_stats_proc *tpo_stats_proc_w(struct tpo_stats *st, int stage,
						      int lane)
{
	int i = tpo_stats_proc_index(stage, lane);

	return (st->shm && st->seg.writable && i >= 0) ? &st->shm->proc[i] : NULL;
}

/* Single-writer counter increment: no locked instruction needed. */
static inline void tpo_stats_add(_Atomic uint64_t *c, uint64_t n)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
			      memory_order_relaxed);
}

#define TPO_STATS_COUNTER_(fn, field)                                          \
	static inline void fn(struct tpo_stats *st, int stage, int lane, uint64_t n) \
	{                                                                      \
		struct tpo_stats_proc *p = tpo_stats_proc_w(st, stage, lane);  \
		if (p)                                                         \
			tpo_stats_add(&p->child.field, n);                     \
	}
TPO_STATS_COUNTER_(tpo_stats_count_in, req_in)
TPO_STATS_COUNTER_(tpo_stats_count_out, req_out)
TPO_STATS_COUNTER_(tpo_stats_count_shed_reject, shed_reject)
TPO_STATS_COUNTER_(tpo_stats_count_shed_drop_oldest, shed_drop_oldest)
TPO_STATS_COUNTER_(tpo_stats_count_timeout, timeouts)
TPO_STATS_COUNTER_(tpo_stats_count_error, errors)
TPO_STATS_COUNTER_(tpo_stats_count_tokens, tokens)
#undef TPO_STATS_COUNTER_

/* One response with this HTTP status (stream stage). */
static inline void tpo_stats_count_status(struct tpo_stats *st, int stage, int lane,
					  int status)
{
	struct tpo_stats_proc *p = tpo_stats_proc_w(st, stage, lane);

	if (p)
		tpo_stats_add(&p->child.http[tpo_stats_status_class(status)], 1);
}

static inline void tpo_stats_inflight_add(struct tpo_stats *st, int stage, int lane,
					  int64_t delta)
{
	struct tpo_stats_proc *p = tpo_stats_proc_w(st, stage, lane);

	if (p)
		atomic_store_explicit(&p->child.in_flight,
			atomic_load_explicit(&p->child.in_flight, memory_order_relaxed) + delta,
			memory_order_relaxed);
}

static inline void tpo_stats_heartbeat(struct tpo_stats *st, int stage, int lane,
				       uint64_t now_ns)
{
	struct tpo_stats_proc *p = tpo_stats_proc_w(st, stage, lane);

	if (p)
		atomic_store_explicit(&p->child.heartbeat_ns, now_ns, memory_order_relaxed);
}

/* Last heartbeat (CLOCK_MONOTONIC ns) of a slot, 0 if none or bad index. */
static inline uint64_t tpo_stats_heartbeat_of(const struct tpo_stats *st, int stage,
					      int lane)
{
	int i = tpo_stats_proc_index(stage, lane);

	if (!st->shm || i < 0)
		return 0;
	return atomic_load_explicit(&st->shm->proc[i].child.heartbeat_ns,
				    memory_order_relaxed);
}

static inline void tpo_stats_record(struct tpo_stats *st, int stage, int lane,
				    enum tpo_stats_hist_kind kind, uint64_t ns)
{
	struct tpo_stats_proc *p = tpo_stats_proc_w(st, stage, lane);

	if (p && (unsigned)kind < TPO_STATS_NHIST)
		tpo_hist_record(&p->hist[kind], ns);
}

static inline void tpo_stats_service(struct tpo_stats *st, int stage, int lane,
				     uint64_t ns)
{ tpo_stats_record(st, stage, lane, TPO_STATS_SERVICE, ns); }
static inline void tpo_stats_queue_wait(struct tpo_stats *st, int stage, int lane,
					uint64_t ns)
{ tpo_stats_record(st, stage, lane, TPO_STATS_QUEUE_WAIT, ns); }
static inline void tpo_stats_ttft(struct tpo_stats *st, int stage, int lane, uint64_t ns)
{ tpo_stats_record(st, stage, lane, TPO_STATS_TTFT, ns); }

/* Endpoint counters of an owned slot. */
static inline void tpo_stats_ep_add(struct tpo_stats *st, int slot, int64_t d_in_flight,
				    uint64_t requests, uint64_t errors)
{
	struct tpo_stats_ep *e;

	if (!st->shm || !st->seg.writable || slot < 0 || slot >= TPO_MAX_ENDPOINTS)
		return;
	e = &st->shm->ep[slot];
	atomic_store_explicit(&e->in_flight,
		atomic_load_explicit(&e->in_flight, memory_order_relaxed) + d_in_flight,
		memory_order_relaxed);
	tpo_stats_add(&e->requests, requests);
	tpo_stats_add(&e->errors, errors);
}

#endif
