/*
 * tpo-infer — inference stage: PROMPT in; BEGIN, TOKEN*, END | ERROR out.
 *
 * Drives up to stages.infer.max_inflight jobs at once through a model worker
 * (workers/worker.h). Input records are released in order only once their
 * job has ended, so the input ring itself is the in-flight journal: its
 * records between tail and the read cursor are the jobs we hold, and each
 * one's header carries a journal word (tpo_rec.seq, owned by the consumer
 * until release):
 *
 *   bit 31  the job ended (its output is complete downstream)
 *   bit 30  the job was started
 *   0..29   tokens emitted so far (written before each is emitted: a
 *           crash can over-count, never under-count, what reached the client)
 *
 * A replacement process re-reads those records: ended ones are skipped;
 * started ones are retried if they had forwarded no token, ended with one
 * error if they had (a token cannot be taken back), and quarantined once
 * they were charged with restart.quarantine_after crashes (tpo_rec.attempt).
 * Which were charged says the ring's busy word (blame): 1 + the position of
 * the job whose worker call was running when the process died (that one
 * alone: a request sharing a worker with a poison prompt is not quarantined
 * with it), BLAME_ALL when it died elsewhere awake (every started job: the
 * worker drives them together), 0 when it died asleep (killed from outside:
 * none).
 *
 * The loop serves the input ring and the worker together: timer-driven
 * workers (mock, plugin) are polled when a job's wake_ns passes;
 * event-driven ones (the HTTP workers, workers/upstream.c) are driven every
 * round and, when idle, sleep in their wait() on their sockets plus our
 * doorbell (armed only when we could take more input), so a busy ring costs
 * no syscall on the ring side. See docs/workers.md.
 */
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "stagebin/stage.h"
#include "workers/worker.h"

#define J_DONE     (1u << 31)
#define J_STARTED  (1u << 30)
#define J_TOKENS   ((1u << 30) - 1)
#define BLAME_ALL  UINT64_MAX

struct job {
	struct tpo_job w;            /* first: the worker sees this */
	int active;
	struct tpo_rec *rec;         /* the PROMPT record, in our input ring */
	uint32_t origin;
	uint32_t seq;
	uint32_t gen;                /* bumped at each take: fifo entries name it */
	uint32_t act_idx;            /* its place in act[] while running */
	uint64_t start_ns, first_ns;
	uint64_t pos;                /* of its record in the input ring */
	uint32_t prompt_tokens;
};

static struct tpo_stage st;
/* What our predecessor's death is blamed on (see the top), read at start. */
static uint64_t crash_blame;

/* The ring's busy word: who a crash from here on would be blamed on. */
static inline void blame(uint64_t who)
{
	atomic_store_explicit(&st.in[0].shm->busy, who, memory_order_relaxed);
}

static const struct tpo_worker_ops *ops;
static void *worker;
static struct job *jobs;
static uint32_t njobs, active;
/*
 * Jobs in intake order, to release the input ring in order. An entry names a
 * job slot and the generation it had: a slot reused by a later job does not
 * make an ended entry look alive. Sized for every record the ring can hold
 * (one long job holds back the release of all later, finished ones).
 */
struct fifo_ent {
	uint32_t idx, gen;
	uint64_t pos;
};
static struct fifo_ent *fifo;
static uint32_t fifo_cap, fifo_head, fifo_len;
/* Records whose output is emitted but not yet committed: marked ended in the
 * journal only after tpo_stage_flush, so a crash in between retries them
 * instead of skipping an answer that never left. */
static struct tpo_rec **pend_done;
static uint32_t npend_done;

static void mark_done(struct tpo_rec *rec)
{
	if (npend_done == fifo_cap) {
		tpo_stage_flush(&st);
		for (uint32_t i = 0; i < npend_done; i++)
			pend_done[i]->seq |= J_DONE;
		npend_done = 0;
	}
	pend_done[npend_done++] = rec;
}

/*
 * A round whose only output is BEGIN records (requests handed to the worker,
 * no answer yet) publishes them without waking post: the answer usually
 * follows within a round or two and wakes post (then the front) once for
 * both, where waking for BEGIN alone cost two more context switches per
 * request. The wake-up is owed, and paid after BEGIN_DEFER_NS at the latest,
 * so the front still learns within ~1 ms that inference began (drop_oldest
 * sheds only requests not in inference).
 */
#define BEGIN_DEFER_NS 1000000ull
static uint32_t begins_unflushed;  /* BEGINs reserved since the last flush_out */
static uint64_t records_at_flush;  /* st.out[0].records then */
static uint64_t wake_owed_ns;

static void flush_out(uint64_t now)
{
	struct tpo_ring *r = &st.out[0];
	uint64_t pending = r->records -
		atomic_load_explicit(&r->shm->prod_records, memory_order_relaxed);

	/* Counted since the last flush_out, not from what is uncommitted: a
	 * full ring commits inside tpo_stage_reserve, and what it leaves may
	 * be a BEGIN and an answer. */
	if (pending && r->records - records_at_flush == begins_unflushed) {
		tpo_ring_commit_quiet(r);
		if (!wake_owed_ns)
			wake_owed_ns = now;
	} else if (pending) {
		tpo_stage_flush(&st);
		wake_owed_ns = 0;
	}
	begins_unflushed = 0;
	records_at_flush = r->records;
	if (wake_owed_ns && now - wake_owed_ns >= BEGIN_DEFER_NS) {
		tpo_ring_nudge(r);
		wake_owed_ns = 0;
	}
}

/* After a flush: the ends it committed are recorded in the journal. */
static void journal_sync(void)
{
	for (uint32_t i = 0; i < npend_done; i++)
		pend_done[i]->seq |= J_DONE;
	npend_done = 0;
}

/* Running jobs, dense (swap-remove): loops cost O(running), not O(slots).
 * Job slots are handed out from a high-water mark, then recycled through
 * free_slots, so untouched slots cost no memory. */
static uint32_t *act, nact;
static uint32_t *free_slots, nfree_slots, jobs_hwm;

static void end_job(struct job *j)
{
	uint32_t idx = (uint32_t)(j - jobs);

	ops->cancel(worker, &j->w);
	mark_done(j->rec);
	j->active = 0;
	act[j->act_idx] = act[--nact];
	jobs[act[j->act_idx]].act_idx = j->act_idx;
	free_slots[nfree_slots++] = idx;
	active--;
	tpo_stats_inflight(&st.stats, st.stage, st.lane, active);
}

static int sink_token(struct tpo_job *w, const char *text, size_t len)
{
	struct job *j = (struct job *)w;
	int err;

	/* A token longer than a record (a whole answer from a server that
	 * does not stream) goes out as several: nothing is cut. */
	while (len > 0) {
		uint32_t n = len > st.out[0].max_len ? st.out[0].max_len : (uint32_t)len;
		/* Journal first: a crash can only over-count forwarded tokens, so a
		 * request that may have reached the client is never run again. */
		j->rec->seq = J_STARTED | ((j->seq + 1) & J_TOKENS);
		err = tpo_stage_emit(&st, 0, TPO_MSG_TOKEN, j->w.req_id, ++j->seq, j->origin,
				     text, n);
		if (err < 0)
			return err;
		text += n;
		len -= n;
	}
	if (j->first_ns == 0) {
		/* A stream's first token goes out at once, not after the rest
		 * of the batch the worker is parsing (time to first token). */
		if (j->w.flags & TPO_REQF_STREAM)
			tpo_stage_flush(&st);
		j->first_ns = tpo_now_ns();
		tpo_stats_ttft(&st.stats, st.stage, st.lane, j->first_ns - j->start_ns);
	}
	tpo_stats_count_tokens(&st.stats, st.stage, st.lane, 1);
	return 0;
}

static void sink_done(struct tpo_job *w, int finish)
{
	struct job *j = (struct job *)w;
	struct tpo_msg_end e = {
		.finish = (uint32_t)finish,
		.prompt_tokens = j->w.usage_prompt ? j->w.usage_prompt : j->prompt_tokens,
		.completion_tokens = j->w.usage_completion ? j->w.usage_completion : j->seq,
		.infer_start_ns = j->start_ns,
		.first_token_ns = j->first_ns,
	};

	tpo_stage_emit(&st, 0, TPO_MSG_END, j->w.req_id, ++j->seq, j->origin, &e, sizeof(e));
	tpo_stats_count_out(&st.stats, st.stage, st.lane, 1);
	tpo_stats_service(&st.stats, st.stage, st.lane, tpo_now_ns() - j->start_ns);
	end_job(j);
}

static void sink_fail(struct tpo_job *w, int status, const char *msg)
{
	struct job *j = (struct job *)w;

	tpo_stage_emit_error(&st, 0, j->w.req_id, j->origin, status, msg);
	tpo_stats_count_error(&st.stats, st.stage, st.lane, 1);
	end_job(j);
}

static const struct tpo_job_sink sink = {
	.token = sink_token, .done = sink_done, .fail = sink_fail,
};

static struct job *free_job(void)
{
	if (nfree_slots)
		return &jobs[free_slots[--nfree_slots]];
	return jobs_hwm < njobs ? &jobs[jobs_hwm++] : NULL;
}

static struct job *find_job(uint64_t req_id)
{
	for (uint32_t i = 0; i < nact; i++)
		if (jobs[act[i]].w.req_id == req_id)
			return &jobs[act[i]];
	return NULL;
}

/* Takes one PROMPT record; returns 0 or -errno (fatal). */
static int take_prompt(struct tpo_rec *rec, uint64_t pos)
{
	struct tpo_msg_req *m = tpo_rec_data(rec);
	struct job *j;
	uint32_t jw = rec->seq;
	int err;

	if (jw & J_DONE)
		return 1;            /* finished before a crash: skip */
	if (!tpo_msg_req_ok(rec)) {
		mark_done(rec);
		return tpo_stage_emit_error(&st, 0, rec->req_id, rec->aux, 500,
					    "internal error: malformed PROMPT record");
	}
	if (jw & J_STARTED) {
		/* It was in flight when our predecessor died. */
		if (crash_blame == BLAME_ALL || crash_blame == pos + 1)
			rec->attempt++;
		if (jw & J_TOKENS) {
			char msg[160];
			mark_done(rec);
			snprintf(msg, sizeof(msg), "the model worker crashed after streaming "
				 "%u tokens of this response", jw & J_TOKENS);
			tpo_stats_count_error(&st.stats, st.stage, st.lane, 1);
			return tpo_stage_emit_error(&st, 0, rec->req_id, rec->aux, 502, msg);
		}
		if (rec->attempt >= st.quarantine_after) {
			mark_done(rec);
			tpo_log(LOG_ERR, "request %016llx quarantined: in flight in %u worker crashes",
				(unsigned long long)rec->req_id, rec->attempt);
			tpo_stats_count_error(&st.stats, st.stage, st.lane, 1);
			return tpo_stage_emit_error(&st, 0, rec->req_id, rec->aux, 500,
				"request quarantined: the model worker crashed repeatedly "
				"while processing it");
		}
		tpo_log(LOG_NOTICE, "request %016llx: retrying after a worker crash (attempt %u)",
			(unsigned long long)rec->req_id, rec->attempt + 1);
	}
	j = free_job();
	{
		uint32_t gen = j->gen;      /* survives reuse: fifo entries name it */
		memset(j, 0, sizeof(*j));
		j->gen = gen;
	}
	j->active = 1;
	j->act_idx = nact;
	act[nact++] = (uint32_t)(j - jobs);
	j->rec = rec;
	j->origin = rec->aux;
	j->pos = pos;
	j->start_ns = tpo_now_ns();
	j->prompt_tokens = m->prompt_tokens;
	j->w.req_id = rec->req_id;
	j->w.prompt = tpo_msg_req_text(m);
	j->w.prompt_len = m->text_len;
	j->w.max_tokens = m->max_tokens;
	j->w.deadline_ns = m->deadline_ns;
	j->w.seed = m->seed;
	j->w.model = m->model;
	j->w.session_hash = m->session_hash;
	j->w.flags = m->flags;
	j->w.sink = &sink;
	rec->seq = J_STARTED;
	active++;
	j->gen++;
	fifo[(fifo_head + fifo_len++) % fifo_cap] =
		(struct fifo_ent){ .idx = (uint32_t)(j - jobs), .gen = j->gen, .pos = pos };
	tpo_stats_inflight(&st.stats, st.stage, st.lane, active);
	tpo_stats_count_in(&st.stats, st.stage, st.lane, 1);
	tpo_stats_queue_wait(&st.stats, st.stage, st.lane, j->start_ns - rec->ts_ns);

	/* BEGIN tells post the stops and limits, and stream that inference began. */
	{
		struct tpo_msg_req *b;
		struct tpo_rec *out;
		err = tpo_stage_reserve(&st, 0, (uint32_t)sizeof(*m) + m->stop_len, &out);
		if (err < 0)
			return err;
		out->type = TPO_MSG_BEGIN;
		out->req_id = rec->req_id;
		out->aux = rec->aux;
		out->ts_ns = j->start_ns;
		b = tpo_rec_data(out);
		*b = *m;
		b->text_len = 0;
		b->ctx_len = 0;
		memcpy(tpo_msg_req_stops(b), tpo_msg_req_stops(m), m->stop_len);
		begins_unflushed++;
	}
	blame(pos + 1);
	err = ops->start(worker, &j->w);
	blame(BLAME_ALL);
	if (err < 0 && j->active)
		sink_fail(&j->w, 500, "the model worker could not start this request");
	return 0;
}

/*
 * Requests cancelled before we took their PROMPT (seen by looking ahead
 * while every job slot was busy): skipped when their PROMPT comes up.
 */
#define PRECANCEL_MAX 256
static uint64_t precancel[PRECANCEL_MAX];
static uint32_t nprecancel;
static uint64_t lookahead_head;
static uint64_t lookahead_pos;   /* records before it were looked at */

static int precancelled(uint64_t req_id)
{
	for (uint32_t i = 0; i < nprecancel; i++)
		if (precancel[i] == req_id) {
			precancel[i] = precancel[--nprecancel];
			return 1;
		}
	return 0;
}

/*
 * With every job slot busy we stop taking input, but a client that hangs up
 * must still stop its job (and a queued request must not start): look ahead
 * of the read cursor for CANCEL records. The CANCEL itself is forwarded when
 * the cursor reaches it. Each look resumes where the last one stopped (the
 * records in between are unchanged), so a long backlog is read once, not
 * once per arrival.
 */
static void look_ahead(void)
{
	struct tpo_ring walk = st.in[0];
	const struct tpo_rec *rec;
	/* Pairs with the producer's release store of head in tpo_ring_commit. */
	uint64_t head = atomic_load_explicit(&walk.shm->head, memory_order_acquire);

	if (head == lookahead_head)
		return;              /* nothing new since the last look */
	lookahead_head = head;
	walk.cached = head;
	if ((int64_t)(lookahead_pos - walk.pos) > 0 && (int64_t)(head - lookahead_pos) >= 0)
		walk.pos = lookahead_pos;
	for (int k = 0; k < 4096 && tpo_ring_peek(&walk, &rec) == 0; k++) {
		if (rec->type == TPO_MSG_CANCEL) {
			struct job *j = find_job(rec->req_id);
			if (j) {
				end_job(j);
			} else if (nprecancel < PRECANCEL_MAX) {
				int seen = 0;
				for (uint32_t i = 0; i < nprecancel; i++)
					seen |= precancel[i] == rec->req_id;
				if (!seen)
					precancel[nprecancel++] = rec->req_id;
			}
		}
		tpo_ring_advance(&walk, rec);
	}
	lookahead_pos = walk.pos;
}

static int on_input(void)
{
	struct tpo_ring *r = &st.in[0];
	const struct tpo_rec *rec;
	int n = 0, err;

	if (active >= njobs)
		look_ahead();
	while (active < njobs) {
		err = tpo_ring_peek(r, &rec);
		if (err == -EAGAIN)
			break;
		if (err < 0) {
			tpo_log(LOG_CRIT, "fatal: input ring is corrupt at %llu",
				(unsigned long long)r->pos);
			return err;
		}
		if (rec->type == TPO_MSG_PROMPT && (precancelled(rec->req_id) ||
						     find_job(rec->req_id))) {
			/* Cancelled while queued, or a second delivery of a request
			 * already running (a stage before us restarted between
			 * committing and releasing): never start it (again). */
			if (!(rec->seq & J_DONE))
				mark_done((struct tpo_rec *)rec);
		} else if (rec->type == TPO_MSG_PROMPT) {
			err = take_prompt((struct tpo_rec *)rec, r->pos);
			if (err < 0)
				return err;
		} else {
			if (rec->type == TPO_MSG_CANCEL) {
				struct job *j = find_job(rec->req_id);
				if (j)
					end_job(j);
				precancelled(rec->req_id);   /* its PROMPT is behind us */
			}
			err = tpo_stage_emit(&st, 0, rec->type, rec->req_id, rec->seq, rec->aux,
					     tpo_rec_data(rec), rec->len);
			if (err < 0)
				return err;
		}
		tpo_ring_advance(r, rec);
		n++;
	}
	return n;
}

/* Releases input up to the oldest job still running. */
static void release_done(void)
{
	struct tpo_ring *r = &st.in[0];
	uint64_t upto;

	while (fifo_len) {
		struct fifo_ent *e = &fifo[fifo_head];
		if (jobs[e->idx].active && jobs[e->idx].gen == e->gen)
			break;
		fifo_head = (fifo_head + 1) % fifo_cap;
		fifo_len--;
	}
	upto = fifo_len ? fifo[fifo_head].pos : r->pos;
	if (upto != atomic_load_explicit(&r->shm->tail, memory_order_relaxed))
		tpo_ring_release_to(r, upto);
}

static uint64_t run_jobs(uint64_t now)
{
	uint64_t next = 0;

	/* Backwards: a job that ends swaps the last one into its place, which
	 * has been visited already. */
	for (uint32_t i = nact; i-- > 0;) {
		struct job *j = &jobs[act[i]];
		if (j->w.deadline_ns && now >= j->w.deadline_ns) {
			sink_fail(&j->w, 504, "the request's deadline passed during inference");
			continue;
		}
		if (j->w.wake_ns && j->w.wake_ns <= now) {
			blame(j->pos + 1);
			ops->poll(worker, &j->w, now);
			blame(BLAME_ALL);
		}
		if (!j->active)
			continue;
		if (j->w.wake_ns && (!next || j->w.wake_ns < next))
			next = j->w.wake_ns;
		if (j->w.deadline_ns && (!next || j->w.deadline_ns < next))
			next = j->w.deadline_ns;
	}
	return next;
}

/*
 * Sleeps until input, worker activity or timeout_ms. An event-driven worker
 * watches its sockets and our doorbell together; the doorbell is armed
 * (tpo_ring_sleep_begin) only when we could take more input, so a busy ring
 * never costs a syscall on the ring side.
 */
static void sleep_some(int timeout)
{
	int take = active < njobs, edge;

	blame(0);                          /* asleep: a death now is a kill */
	if (!ops->wait) {
		if (take)
			tpo_stage_wait(&st, timeout);
		else
			tpo_ring_wait(NULL, 0, st.bell, 0, timeout);
		blame(BLAME_ALL);
		return;
	}
	if (take && tpo_ring_sleep_begin(st.inp, st.nin)) {
		blame(BLAME_ALL);
		return;                    /* input arrived meanwhile */
	}
	edge = ops->wait(worker, take ? st.bell : -1, timeout) == 1;
	blame(BLAME_ALL);
	if (take) {
		tpo_ring_sleep_end(st.inp, st.nin);
		if (!edge)
			tpo_bell_drain(st.bell);
	}
	tpo_stage_tick(&st);
}

int main(int argc, char **argv)
{
	char err[512];
	int rc = tpo_stage_init(&st, TPO_ST_INFER, argc, argv);

	if (rc)
		return rc;
	rc = tpo_worker_create(&st.cfg.stages.infer, &st.stats, st.lane, &ops, &worker,
			       err, sizeof(err));
	if (rc < 0) {
		tpo_log(LOG_ERR, "fatal: %s", err);
		return rc == -ENOMEM ? 111 : 78;
	}
	crash_blame = atomic_load_explicit(&st.in[0].shm->busy, memory_order_relaxed);
	blame(BLAME_ALL);
	njobs = st.cfg.stages.infer.max_inflight;
	jobs = calloc(njobs, sizeof(*jobs));
	act = calloc(njobs, sizeof(*act));
	free_slots = calloc(njobs, sizeof(*free_slots));
	if (!act || !free_slots)
		return 111;
	fifo_cap = (uint32_t)(st.in[0].mask + 1) /
		   (uint32_t)tpo_rec_size(sizeof(struct tpo_msg_req)) + 1;
	fifo = calloc(fifo_cap, sizeof(*fifo));
	pend_done = calloc(fifo_cap, sizeof(*pend_done));
	if (!jobs || !fifo || !pend_done)
		return 111;

	uint64_t trimmed_ns = 0;
	int trim_due = 0;

	while (!tpo_stage_stopping) {
		uint64_t now = st.now_ns = tpo_now_ns(), next;
		int n = on_input(), timeout;

		if (n < 0)
			return 111;
		if (ops->drive)
			ops->drive(worker, now);
		now = st.now_ns = tpo_now_ns();
		next = run_jobs(now);
		/* Publish this round's output once, record it in the journal, then
		 * free finished input. */
		flush_out(now);
		st.now_ns = 0;
		journal_sync();
		release_done();
		tpo_stage_tick(&st);
		if (n > 0)
			continue;
		now = tpo_now_ns();
		if (wake_owed_ns && (!next || wake_owed_ns + BEGIN_DEFER_NS < next))
			next = wake_owed_ns + BEGIN_DEFER_NS;
		if (next && next <= now)
			continue;
		timeout = TPO_STAGE_WAIT_MS;
		if (next && (next - now) / 1000000 < (uint64_t)timeout)
			timeout = (int)((next - now + 999999) / 1000000);
		if (active)
			trim_due = 1;
		else if (trim_due && now - trimmed_ns >= 1000000000ull) {
			/* Idle after a load: give back what its transfers' buffers
			 * left free inside the heap (at most once a second). */
			malloc_trim(0);
			trim_due = 0;
			trimmed_ns = now;
		}
		if (!tpo_stage_stopping)
			sleep_some(timeout);
	}
	/* Jobs still running at SIGTERM: the stream has gone already (drain is
	 * upstream-first), so nobody waits for them. */
	for (uint32_t i = 0; i < jobs_hwm; i++)
		if (jobs[i].active)
			ops->cancel(worker, &jobs[i].w);
	tpo_stage_fini(&st);
	if (ops->destroy)
		ops->destroy(worker);
	return 0;
}
