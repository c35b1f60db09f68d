/*
 * stage.h — what every stage executable shares: attach to the instance's
 * segments, open its rings, wait on them, push with backpressure, heartbeat,
 * and stop on SIGTERM.
 *
 * A stage is started by tpo-supervisor as
 *     tpo-<stage> --instance NAME --lane L --lanes N --bell-base FD
 * already pinned to its lane's core. Doorbell eventfds are inherited: the one
 * of (stage s, lane l) is fd bell_base + s * N + l. The effective
 * configuration is read from the rings segment, so every process of an
 * instance runs with exactly what the supervisor validated.
 *
 * Contract for stages: release an input record only after everything it
 * produced is committed downstream (so a crash redelivers instead of
 * losing); call tpo_stage_tick() at least every 100 ms.
 */
#ifndef TPO_STAGE_H
#define TPO_STAGE_H

#include <signal.h>
#include <stdint.h>

#include "shm/ring.h"
#include "shm/ringset.h"
#include "shm/stats.h"
#include "supervisor/config.h"
#include "stagebin/proto.h"

#define TPO_STAGE_WAIT_MS 100

struct tpo_stage {
	const char *prog;
	char instance[TPO_NAME_MAX + 1];
	int stage, lane, nlanes, bell_base;
	int bell;                      /* our doorbell (eventfd) */
	struct tpo_ringset rs;
	struct tpo_stats stats;
	struct tpo_config cfg;
	struct tpo_ring in[TPO_RINGSET_MAX_LANES];
	struct tpo_ring *inp[TPO_RINGSET_MAX_LANES];
	int in_ring_id[TPO_RINGSET_MAX_LANES];
	int nin;
	struct tpo_ring out[TPO_RINGSET_MAX_LANES];
	int out_ring_id[TPO_RINGSET_MAX_LANES];
	int nout;
	uint64_t spin_ns;
	uint64_t last_tick_ns;
	uint64_t now_ns;               /* clock of the record in hand, 0: read it */
	uint64_t quarantine_after;
	/* Called (if set) when tpo_stage_run quarantines rec, before the
	 * request's ERROR goes out: a stage that keeps per-request state marks
	 * the request ended, so none of its later records follow the ERROR. */
	void (*on_quarantine)(struct tpo_stage *st, const struct tpo_rec *rec);
	uint32_t out_scratch_cap;
	uint8_t *out_scratch;          /* max_len bytes, for building payloads */
};

/* Set by SIGTERM/SIGINT; stages leave their loop when it is non-zero. */
extern volatile sig_atomic_t tpo_stage_stopping;

/*
 * Parses the command line, attaches to the segments, parses the effective
 * configuration, opens this stage's input and output rings, claims its stats
 * slot and installs signal handlers. On failure prints a message naming the
 * program and returns a sysexits-style exit code (64 usage, 78 config,
 * 111 system); 0 on success.
 */
int tpo_stage_init(struct tpo_stage *st, int stage, int argc, char **argv);
void tpo_stage_fini(struct tpo_stage *st);

/* Heartbeat, ring counters to the stats segment; cheap, rate-limited. */
void tpo_stage_tick(struct tpo_stage *st);

/*
 * Reserves a record on output ring k, waiting (with backpressure) while the
 * ring is full. Returns 0 or -ECANCELED when the stage is stopping,
 * -EMSGSIZE / -EINVAL from tpo_ring_reserve.
 */
int tpo_stage_reserve(struct tpo_stage *st, int k, uint32_t len, struct tpo_rec **rec);

/*
 * reserve + fill of one record on output ring k; it becomes visible at the
 * next tpo_stage_flush (tpo_stage_run flushes after each input batch, before
 * releasing it; a full ring is flushed before waiting).
 */
int tpo_stage_emit(struct tpo_stage *st, int k, uint16_t type, uint64_t req_id,
		   uint32_t seq, uint32_t aux, const void *payload, uint32_t len);

/* The output ring for a request from stream lane origin (mesh or not). */
static inline int tpo_stage_out_for(const struct tpo_stage *st, uint32_t origin)
{ return st->nout > 1 ? (int)(origin % (uint32_t)st->nout) : 0; }

/* Gauge of requests this process holds. */
static inline void tpo_stats_inflight(struct tpo_stats *s, int stage, int lane, int64_t v)
{
	struct tpo_stats_proc *p = tpo_stats_proc_w(s, stage, lane);
	if (p)
		atomic_store_explicit(&p->child.in_flight, v, memory_order_relaxed);
}

/* The supervisor's view of a unit's state (one relaxed load: a hint). */
static inline int tpo_stats_unit_state(const struct tpo_stats *s, int stage, int lane)
{
	int i = tpo_stats_proc_index(stage, lane);
	return i < 0 || !s->shm ? -1 :
		(int)atomic_load_explicit(&s->shm->proc[i].sup.state, memory_order_relaxed);
}

/* One request in and out (a pass-through stage's counters). */
static inline void tpo_stage_passed(struct tpo_stage *st)
{
	tpo_stats_count_in(&st->stats, st->stage, st->lane, 1);
	tpo_stats_count_out(&st->stats, st->stage, st->lane, 1);
}

/* Commits every output ring with uncommitted records. */
void tpo_stage_flush(struct tpo_stage *st);

/* Ends a request downstream with an HTTP status and message. */
int tpo_stage_emit_error(struct tpo_stage *st, int k, uint64_t req_id, uint32_t aux,
			 int status, const char *msg);

/* Waits up to timeout_ms for input on any input ring; 1 if some is readable. */
int tpo_stage_wait(struct tpo_stage *st, int timeout_ms);

/*
 * Runs the loop of a one-record-at-a-time stage: for each input record,
 * calls fn; commits the batch's output, then releases its input. Records the
 * queue wait (enqueue to dequeue) of every record and the service time per
 * record (averaged over its batch) in the stats segment. fn returns 0, or -errno to stop the stage
 * (exit code 111). A corrupt input ring stops the stage too.
 */
typedef int tpo_stage_fn(struct tpo_stage *st, int in, const struct tpo_rec *rec);
int tpo_stage_run(struct tpo_stage *st, tpo_stage_fn *fn);

/* Logs with a syslog priority prefix journald understands ("<3>..."). */
void tpo_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
