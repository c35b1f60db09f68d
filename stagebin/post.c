/*
 * tpo-post — output processing: BEGIN, TOKEN*, END | ERROR from infer in;
 * the same to the stream lane holding the client out.
 *
 * Per request: UTF-8 repair at token boundaries (a character split across
 * two tokens is held until complete; invalid bytes become U+FFFD), stop
 * sequences that may span tokens (text is withheld only while it could still
 * begin one), max_tokens (the smaller of the request's and the stage's), and
 * usage counting. Request state lives in an open-addressing table that grows
 * with the number of requests in flight (never with the configured budget);
 * a request with stop sequences also holds a stopper, allocated at BEGIN.
 *
 * A TOKEN or END for a request this process never saw BEGIN for means we
 * were restarted mid-stream: the request is ended with one error rather than
 * streamed without its stop sequences.
 *
 * Deduplication. Records are delivered at least once between stages: a
 * stage restarted between committing its output and releasing its input
 * produces that output again, so infer may run a request twice at once.
 * Infer numbers each job's TOKENs from 1 and its END one past the last, so
 * only the next number is taken (a repeat is dropped), an END is taken only
 * once every TOKEN before it was, and a BEGIN for a request that is already
 * streaming is dropped.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "stagebin/stage.h"
#include "stagebin/textproc.h"

/*
 * Request state: a pool of compact entries (64 bytes; the 1 KiB stop
 * matcher only for requests that have stop sequences), found through an
 * open-addressing index (linear probing, backward-shift deletion: no
 * tombstones, so a miss stops at the first empty slot however long the
 * process runs). At most pool_cap entries (twice the lane's admission
 * budget). Nothing is sized by that cap up front: entries come in chunks
 * allocated as the high-water mark grows and are recycled through a free
 * list linked through them; the index doubles to stay at most half full.
 */
struct req {
	uint64_t id;
	uint8_t  done;               /* ended: drop further records */
	uint32_t origin;
	uint32_t seq;                /* our TOKEN numbering, from 1 */
	uint32_t in_seq;             /* infer's numbering: last TOKEN taken */
	uint32_t tokens;             /* TOKEN records received */
	uint32_t max_tokens;
	uint32_t asked_max;          /* max_tokens the model was asked for (the front
				      * sends the smaller of the request's and the cap;
				      * 0 only from a stage of a user's that did not) */
	uint32_t prompt_tokens;
	uint32_t fnext;              /* next free entry, while free */
	struct tpo_utf8_joiner utf8;
	struct tpo_stopper *stop;    /* NULL: no stop sequences */
};

#define CHUNK_SHIFT 10
#define CHUNK       (1u << CHUNK_SHIFT)
#define POOL_MAX    (1u << 24)
#define INDEX_MIN   2048u
#define NONE        UINT32_MAX

static struct req *chunks[POOL_MAX / CHUNK];
static uint32_t pool_cap, pool_hwm, nlive, free_head = NONE;
static uint32_t *index_tab, index_mask;     /* 0 empty, else entry number + 1 */
static char buf1[1 << 17], buf2[1 << 17];
#define PIECE 16384   /* TPO_UTF8_JOIN_BOUND(PIECE) + a held stop prefix fit */
_Static_assert(TPO_UTF8_JOIN_BOUND(PIECE) + TPO_STOP_LEN_MAX <= sizeof(buf1), "post buffers");

static struct req *entry(uint32_t k)
{
	return &chunks[k >> CHUNK_SHIFT][k & (CHUNK - 1)];
}

static int table_init(uint32_t budget)
{
	pool_cap = CHUNK;
	while (pool_cap < 2 * budget && pool_cap < POOL_MAX)
		pool_cap <<= 1;
	index_tab = calloc(INDEX_MIN, sizeof(*index_tab));
	if (!index_tab)
		return -ENOMEM;
	index_mask = INDEX_MIN - 1;
	return 0;
}

static uint32_t home(uint64_t id)
{
	return (uint32_t)((id * 0x9e3779b97f4a7c15ull) >> 32) & index_mask;
}

/* Doubles the index (rehashing every entry); -ENOMEM leaves it as it was. */
static int index_grow(void)
{
	uint32_t *old = index_tab, old_n = index_mask + 1, n = 2 * old_n;

	index_tab = calloc(n, sizeof(*index_tab));
	if (!index_tab) {
		index_tab = old;
		return -ENOMEM;
	}
	index_mask = n - 1;
	for (uint32_t i = 0; i < old_n; i++) {
		uint32_t j;

		if (!old[i])
			continue;
		for (j = home(entry(old[i] - 1)->id); index_tab[j]; j = (j + 1) & index_mask)
			;
		index_tab[j] = old[i];
	}
	free(old);
	return 0;
}

/* A free entry's number, or NONE when pool_cap are in use (or no memory). */
static uint32_t entry_take(void)
{
	uint32_t k = free_head;

	if (k != NONE) {
		free_head = entry(k)->fnext;
		return k;
	}
	if (pool_hwm == pool_cap)
		return NONE;
	if (!(pool_hwm & (CHUNK - 1))) {
		chunks[pool_hwm >> CHUNK_SHIFT] = malloc(CHUNK * sizeof(struct req));
		if (!chunks[pool_hwm >> CHUNK_SHIFT])
			return NONE;
	}
	return pool_hwm++;
}

static struct req *lookup(uint64_t id, int create)
{
	uint32_t i = home(id), k;
	struct req *r;

	for (; index_tab[i]; i = (i + 1) & index_mask)
		if (entry(index_tab[i] - 1)->id == id)
			return entry(index_tab[i] - 1);
	if (!create)
		return NULL;
	if (2 * (nlive + 1) > index_mask + 1) {
		if (index_grow() < 0)
			return NULL;
		for (i = home(id); index_tab[i]; i = (i + 1) & index_mask)
			;
	}
	k = entry_take();
	if (k == NONE)
		return NULL;
	r = entry(k);
	memset(r, 0, sizeof(*r));
	r->id = id;
	r->fnext = k;                /* its own number while live (see forget) */
	index_tab[i] = k + 1;
	nlive++;
	return r;
}

static void forget(struct req *r)
{
	uint32_t want = r->fnext + 1, i = home(r->id), j;

	while (index_tab[i] != want)
		i = (i + 1) & index_mask;
	/* Backward shift: pull later entries of the probe run into the hole
	 * unless their home lies cyclically in (hole, their slot]. */
	for (j = (i + 1) & index_mask; index_tab[j]; j = (j + 1) & index_mask) {
		uint32_t k = home(entry(index_tab[j] - 1)->id);
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		index_tab[i] = index_tab[j];
		i = j;
	}
	index_tab[i] = 0;
	free(r->stop);
	r->stop = NULL;
	r->id = 0;
	r->fnext = free_head;
	free_head = want - 1;
	nlive--;
}

/*
 * Stop matching: out points at the releasable text (in itself when the
 * request has no stop sequences). Returns as tpo_stop_feed.
 */
static int stop_feed(struct req *r, const char *in, size_t n, const char **out, size_t *outn)
{
	if (!r->stop) {
		*out = in;
		*outn = n;
		return 0;
	}
	*out = buf2;
	return tpo_stop_feed(r->stop, in, n, buf2, sizeof(buf2), outn);
}

static int stop_done(const struct req *r)
{
	return r->stop && r->stop->done;
}

static int emit_text(struct tpo_stage *st, struct req *r, const char *s, size_t n)
{
	int k = tpo_stage_out_for(st, r->origin);

	while (n > 0) {
		uint32_t chunk = n > st->out[k].max_len ? st->out[k].max_len : (uint32_t)n;
		int err = tpo_stage_emit(st, k, TPO_MSG_TOKEN, r->id, ++r->seq, r->origin,
					 s, chunk);
		if (err < 0)
			return err;
		s += chunk;
		n -= chunk;
	}
	return 0;
}

/* Sends what is still held back, then END. */
static int finish(struct tpo_stage *st, struct req *r, uint32_t finish_reason,
		  const struct tpo_msg_end *in_end)
{
	struct tpo_msg_end e;
	int n, err;

	if (finish_reason != TPO_FINISH_STOP || !stop_done(r)) {
		n = tpo_utf8_flush(&r->utf8, buf1, sizeof(buf1));
		if (n > 0) {
			const char *o;
			size_t outn = 0;
			stop_feed(r, buf1, (size_t)n, &o, &outn);
			if (outn && (err = emit_text(st, r, o, outn)) < 0)
				return err;
		}
		if (r->stop && !r->stop->done) {
			n = tpo_stop_flush(r->stop, buf1, sizeof(buf1));
			if (n > 0 && (err = emit_text(st, r, buf1, (size_t)n)) < 0)
				return err;
		}
	}
	memset(&e, 0, sizeof(e));
	if (in_end)
		e = *in_end;
	e.finish = stop_done(r) ? TPO_FINISH_STOP : finish_reason;
	/* The upstream's own counts when it reported them (a whole answer is
	 * one TOKEN record), else the prompt estimate and our token count. A
	 * stop sequence ends the answer early: then only our count is right. */
	e.prompt_tokens = in_end && in_end->prompt_tokens ? in_end->prompt_tokens : r->prompt_tokens;
	e.completion_tokens = r->tokens;
	if (in_end && !stop_done(r) && in_end->completion_tokens > r->tokens)
		e.completion_tokens = in_end->completion_tokens;
	/* Ended here before the model's own END: the front cancels the job
	 * down the lane; not when the answer ends at the length the model was
	 * asked for, where it stops by itself (its END follows and is dropped;
	 * one that ignores max_tokens is bounded by infer's timeouts). */
	e.flags = in_end || (finish_reason == TPO_FINISH_LENGTH && !stop_done(r) &&
			     r->asked_max && r->tokens >= r->asked_max) ? 0 : TPO_END_EARLY;
	r->done = 1;
	tpo_stats_count_out(&st->stats, st->stage, st->lane, 1);
	return tpo_stage_emit(st, tpo_stage_out_for(st, r->origin), TPO_MSG_END, r->id,
			      ++r->seq, r->origin, &e, sizeof(e));
}

static int on_token(struct tpo_stage *st, struct req *r, const struct tpo_rec *rec)
{
	const char *o;
	size_t n1 = 0, n2 = 0;
	int err;

	if (rec->seq != r->in_seq + 1)
		return 0;            /* a repeat from a redelivered job */
	r->in_seq = rec->seq;
	r->tokens++;
	tpo_stats_count_tokens(&st->stats, st->stage, st->lane, 1);
	/* In pieces the work buffers always hold (UTF-8 repair may triple a
	 * piece): a token can be as long as a record. */
	for (uint32_t off = 0; off < rec->len; off += PIECE) {
		uint32_t n = rec->len - off < PIECE ? rec->len - off : PIECE;
		n1 = n2 = 0;
		tpo_utf8_join(&r->utf8, (const char *)tpo_rec_data(rec) + off, n, buf1,
			      sizeof(buf1), &n1);
		if (stop_feed(r, buf1, n1, &o, &n2) == 1) {
			if (n2 && (err = emit_text(st, r, o, n2)) < 0)
				return err;
			return finish(st, r, TPO_FINISH_STOP, NULL);
		}
		if (n2 && (err = emit_text(st, r, o, n2)) < 0)
			return err;
	}
	if (r->max_tokens && r->tokens >= r->max_tokens)
		return finish(st, r, TPO_FINISH_LENGTH, NULL);
	return 0;
}

/*
 * A TOKEN or END of a request we never saw begin: we were restarted while it
 * streamed. One error for it; its later records are dropped (the entry is
 * kept, done, until its END).
 */
static int lost(struct tpo_stage *st, int k, const struct tpo_rec *rec)
{
	struct req *r = rec->type == TPO_MSG_TOKEN ? lookup(rec->req_id, 1) : NULL;

	if (r) {
		r->origin = rec->aux;
		r->done = 1;
	}
	tpo_stats_count_error(&st->stats, st->stage, st->lane, 1);
	return tpo_stage_emit_error(st, k, rec->req_id, rec->aux, 502,
		"the post-processing stage restarted while this response was streaming");
}

/* A record of this request was quarantined (its ERROR follows): drop the
 * request's later records, as for a lost one (no entry free: they come as
 * lost ones then, each one more ERROR the front discards); its last record
 * (END, ERROR) forgets it. */
static void quarantined(struct tpo_stage *st, const struct tpo_rec *rec)
{
	int more = rec->type == TPO_MSG_BEGIN || rec->type == TPO_MSG_TOKEN;
	struct req *r = lookup(rec->req_id, more);

	(void)st;
	if (!r)
		return;
	if (more) {
		r->origin = rec->aux;
		r->done = 1;
	} else {
		forget(r);
	}
}

/* BEGIN goes on with infer's stamp, when inference began: where the front's
 * queue wait ends, however long the record then waited for us. */
static int forward_begin(struct tpo_stage *st, int k, const struct tpo_rec *rec)
{
	struct tpo_rec *out;
	int err = tpo_stage_reserve(st, k, rec->len, &out);

	if (err < 0)
		return err;
	out->type = TPO_MSG_BEGIN;
	out->req_id = rec->req_id;
	out->seq = 0;
	out->aux = rec->aux;
	out->ts_ns = rec->ts_ns;
	memcpy(tpo_rec_data(out), tpo_rec_data(rec), rec->len);
	return 0;
}

static int on_record(struct tpo_stage *st, int in, const struct tpo_rec *rec)
{
	struct req *r;
	int k = tpo_stage_out_for(st, rec->aux);

	(void)in;
	switch (rec->type) {
	case TPO_MSG_BEGIN: {
		const struct tpo_msg_req *m = tpo_rec_data(rec);
		uint32_t cap = st->cfg.stages.post.max_tokens;
		if (!tpo_msg_req_ok(rec))
			return tpo_stage_emit_error(st, k, rec->req_id, rec->aux, 500,
						    "internal error: malformed BEGIN record");
		r = lookup(rec->req_id, 0);
		if (r && (r->done || r->in_seq))
			return 0;        /* a redelivered job of a request under way */
		if (!r)
			r = lookup(rec->req_id, 1);
		if (!r)
			return tpo_stage_emit_error(st, k, rec->req_id, rec->aux, 503,
						    "too many requests in flight in this lane");
		r->origin = rec->aux;
		r->max_tokens = m->max_tokens && m->max_tokens < cap ? m->max_tokens : cap;
		r->asked_max = m->max_tokens;
		r->prompt_tokens = m->prompt_tokens;
		tpo_utf8_joiner_init(&r->utf8);
		free(r->stop);
		r->stop = NULL;
		if (m->stop_len) {
			/* A malformed list leaves a pass-through stopper, as before. */
			r->stop = malloc(sizeof(*r->stop));
			if (!r->stop) {
				forget(r);
				return tpo_stage_emit_error(st, k, rec->req_id, rec->aux, 503,
							    "out of memory for stop sequences");
			}
			tpo_stop_init_packed(r->stop, tpo_msg_req_stops(m), m->stop_len);
			if (r->stop->nstop == 0) {
				free(r->stop);
				r->stop = NULL;
			}
		}
		tpo_stats_count_in(&st->stats, st->stage, st->lane, 1);
		return forward_begin(st, k, rec);
	}
	case TPO_MSG_TOKEN:
		r = lookup(rec->req_id, 0);
		if (!r)
			return lost(st, k, rec);
		if (r->done)
			return 0;
		return on_token(st, r, rec);
	case TPO_MSG_END:
		r = lookup(rec->req_id, 0);
		if (!r)
			return lost(st, k, rec);
		if (!r->done && rec->seq != r->in_seq + 1)
			return 0;        /* a redelivered job is ahead of the first */
		if (!r->done) {
			const struct tpo_msg_end *e = rec->len >= sizeof(*e) ? tpo_rec_data(rec) : NULL;
			int err = finish(st, r, e ? e->finish : TPO_FINISH_STOP, e);
			if (err < 0)
				return err;
		}
		forget(r);
		return 0;
	case TPO_MSG_ERROR:
	case TPO_MSG_CANCEL:
		r = lookup(rec->req_id, 0);
		if (r) {
			int done = r->done;
			forget(r);
			if (done)
				return 0;
		}
		if (rec->type == TPO_MSG_CANCEL)
			return 0;
		tpo_stats_count_error(&st->stats, st->stage, st->lane, 1);
		return tpo_stage_emit(st, k, rec->type, rec->req_id, rec->seq, rec->aux,
				      tpo_rec_data(rec), rec->len);
	default:
		return tpo_stage_emit(st, k, rec->type, rec->req_id, rec->seq, rec->aux,
				      tpo_rec_data(rec), rec->len);
	}
}

int main(int argc, char **argv)
{
	static struct tpo_stage st;
	int rc = tpo_stage_init(&st, TPO_ST_POST, argc, argv);

	if (rc)
		return rc;
	if (table_init(st.cfg.admission.max_inflight_per_lane) < 0)
		return 111;
	st.on_quarantine = quarantined;
	rc = tpo_stage_run(&st, on_record);
	tpo_stage_fini(&st);
	return rc;
}
