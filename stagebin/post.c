/*
 * tpo-post — output processing: BEGIN, TOKEN*, END | ERROR from infer in;
 * the same to the stream lane holding the client out.
 *
 * Per request: UTF-8 repair at token boundaries (a character split across
 * two tokens is held until complete; invalid bytes become U+FFFD), stop
 * sequences that may span tokens (text is withheld only while it could still
 * begin one), max_tokens (the smaller of the request's and the stage's), and
 * usage counting. Request state lives in a fixed open-addressing table, so
 * the hot path allocates nothing.
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
 * Request state: a pool of entries, found through an open-addressing index
 * (linear probing, backward-shift deletion: no tombstones, so a miss stops
 * at the first empty slot however long the process runs). Sized at start
 * for twice the lane's admission budget; the index is kept at most half full.
 */
struct req {
	uint64_t id;
	uint8_t  done;               /* ended: drop further records */
	uint32_t origin;
	uint32_t seq;                /* our TOKEN numbering, from 1 */
	uint32_t in_seq;             /* infer's numbering: last TOKEN taken */
	uint32_t tokens;             /* TOKEN records received */
	uint32_t max_tokens;
	uint32_t prompt_tokens;
	struct tpo_utf8_joiner utf8;
	struct tpo_stopper stop;
};

static struct req *pool;
static uint32_t *free_list, nfree;
static uint32_t *index_tab, index_mask;     /* 0 empty, else pool index + 1 */
static char buf1[1 << 17], buf2[1 << 17];
#define PIECE 16384   /* TPO_UTF8_JOIN_BOUND(PIECE) + a held stop prefix fit */
_Static_assert(TPO_UTF8_JOIN_BOUND(PIECE) + TPO_STOP_LEN_MAX <= sizeof(buf1), "post buffers");

static int table_init(uint32_t budget)
{
	uint32_t n = 4096;

	while (n < 2 * budget && n < (1u << 24))
		n <<= 1;
	pool = calloc(n, sizeof(*pool));
	free_list = calloc(n, sizeof(*free_list));
	index_tab = calloc(2 * (size_t)n, sizeof(*index_tab));
	if (!pool || !free_list || !index_tab)
		return -ENOMEM;
	index_mask = 2 * n - 1;
	for (uint32_t k = 0; k < n; k++)
		free_list[nfree++] = n - 1 - k;
	return 0;
}

static uint32_t home(uint64_t id)
{
	return (uint32_t)((id * 0x9e3779b97f4a7c15ull) >> 32) & index_mask;
}

static struct req *lookup(uint64_t id, int create)
{
	uint32_t i = home(id);
	struct req *r;

	for (; index_tab[i]; i = (i + 1) & index_mask)
		if (pool[index_tab[i] - 1].id == id)
			return &pool[index_tab[i] - 1];
	if (!create || !nfree)
		return NULL;
	r = &pool[free_list[--nfree]];
	memset(r, 0, sizeof(*r));
	r->id = id;
	index_tab[i] = (uint32_t)(r - pool) + 1;
	return r;
}

static void forget(struct req *r)
{
	uint32_t want = (uint32_t)(r - pool) + 1, i = home(r->id), j;

	while (index_tab[i] != want)
		i = (i + 1) & index_mask;
	/* Backward shift: pull later entries of the probe run into the hole
	 * unless their home lies cyclically in (hole, their slot]. */
	for (j = (i + 1) & index_mask; index_tab[j]; j = (j + 1) & index_mask) {
		uint32_t k = home(pool[index_tab[j] - 1].id);
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		index_tab[i] = index_tab[j];
		i = j;
	}
	index_tab[i] = 0;
	r->id = 0;
	free_list[nfree++] = (uint32_t)(r - pool);
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

	if (finish_reason != TPO_FINISH_STOP || !r->stop.done) {
		n = tpo_utf8_flush(&r->utf8, buf1, sizeof(buf1));
		if (n > 0) {
			size_t outn = 0;
			tpo_stop_feed(&r->stop, buf1, (size_t)n, buf2, sizeof(buf2), &outn);
			if (outn && (err = emit_text(st, r, buf2, outn)) < 0)
				return err;
		}
		if (!r->stop.done) {
			n = tpo_stop_flush(&r->stop, buf1, sizeof(buf1));
			if (n > 0 && (err = emit_text(st, r, buf1, (size_t)n)) < 0)
				return err;
		}
	}
	memset(&e, 0, sizeof(e));
	if (in_end)
		e = *in_end;
	e.finish = r->stop.done ? TPO_FINISH_STOP : finish_reason;
	/* The upstream's own counts when it reported them (a whole answer is
	 * one TOKEN record), else the prompt estimate and our token count. A
	 * stop sequence ends the answer early: then only our count is right. */
	e.prompt_tokens = in_end && in_end->prompt_tokens ? in_end->prompt_tokens : r->prompt_tokens;
	e.completion_tokens = r->tokens;
	if (in_end && !r->stop.done && in_end->completion_tokens > r->tokens)
		e.completion_tokens = in_end->completion_tokens;
	e.flags = in_end ? 0 : TPO_END_EARLY;
	r->done = 1;
	tpo_stats_count_out(&st->stats, st->stage, st->lane, 1);
	return tpo_stage_emit(st, tpo_stage_out_for(st, r->origin), TPO_MSG_END, r->id,
			      ++r->seq, r->origin, &e, sizeof(e));
}

static int on_token(struct tpo_stage *st, struct req *r, const struct tpo_rec *rec)
{
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
		if (tpo_stop_feed(&r->stop, buf1, n1, buf2, sizeof(buf2), &n2) == 1) {
			if (n2 && (err = emit_text(st, r, buf2, n2)) < 0)
				return err;
			return finish(st, r, TPO_FINISH_STOP, NULL);
		}
		if (n2 && (err = emit_text(st, r, buf2, n2)) < 0)
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

static int on_record(struct tpo_stage *st, int in, const struct tpo_rec *rec)
{
	struct req *r;
	int k = tpo_stage_out_for(st, rec->aux);

	(void)in;
	switch (rec->type) {
	case TPO_MSG_BEGIN: {
		const struct tpo_msg_req *m = tpo_rec_data(rec);
		uint32_t cap = st->cfg.stages.post.max_tokens;
		if (rec->len < sizeof(*m) || tpo_msg_req_size(m) != rec->len)
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
		r->prompt_tokens = m->prompt_tokens;
		tpo_utf8_joiner_init(&r->utf8);
		tpo_stop_init_packed(&r->stop, tpo_msg_req_stops(m), m->stop_len);
		tpo_stats_count_in(&st->stats, st->stage, st->lane, 1);
		return tpo_stage_emit(st, k, TPO_MSG_BEGIN, rec->req_id, 0, rec->aux,
				      tpo_rec_data(rec), rec->len);
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
	rc = tpo_stage_run(&st, on_record);
	tpo_stage_fini(&st);
	return rc;
}
