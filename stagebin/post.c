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
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>

#include "stagebin/stage.h"
#include "stagebin/textproc.h"

#define TABLE_SIZE 8192          /* power of two, > requests in flight per lane */

struct req {
	uint64_t id;                 /* 0: free slot */
	uint8_t  dead;               /* tombstone */
	uint8_t  done;               /* ended: drop further records */
	uint32_t origin;
	uint32_t seq;                /* our TOKEN numbering, from 1 */
	uint32_t tokens;             /* TOKEN records received */
	uint32_t max_tokens;
	uint32_t prompt_tokens;
	struct tpo_utf8_joiner utf8;
	struct tpo_stopper stop;
};

static struct req table[TABLE_SIZE];
static char buf1[1 << 17], buf2[1 << 17];

static struct req *lookup(uint64_t id, int create)
{
	uint32_t h = (uint32_t)((id * 0x9e3779b97f4a7c15ull) >> 40) & (TABLE_SIZE - 1);
	struct req *tomb = NULL;

	for (uint32_t i = 0; i < TABLE_SIZE; i++) {
		struct req *r = &table[(h + i) & (TABLE_SIZE - 1)];
		if (r->id == id && !r->dead)
			return r;
		if (r->id == 0) {
			if (!create)
				return NULL;
			r = tomb ? tomb : r;
			memset(r, 0, sizeof(*r));
			r->id = id;
			return r;
		}
		if (r->dead && !tomb)
			tomb = r;
	}
	if (create && tomb) {
		memset(tomb, 0, sizeof(*tomb));
		tomb->id = id;
		return tomb;
	}
	return NULL;
}

static void forget(struct req *r)
{
	r->dead = 1;
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
	e.prompt_tokens = r->prompt_tokens;
	e.completion_tokens = r->tokens;
	r->done = 1;
	tpo_stats_count_out(&st->stats, st->stage, st->lane, 1);
	return tpo_stage_emit(st, tpo_stage_out_for(st, r->origin), TPO_MSG_END, r->id,
			      ++r->seq, r->origin, &e, sizeof(e));
}

static int on_token(struct tpo_stage *st, struct req *r, const struct tpo_rec *rec)
{
	size_t n1 = 0, n2 = 0;
	int err;

	r->tokens++;
	tpo_stats_count_tokens(&st->stats, st->stage, st->lane, 1);
	tpo_utf8_join(&r->utf8, tpo_rec_data(rec), rec->len, buf1, sizeof(buf1), &n1);
	if (tpo_stop_feed(&r->stop, buf1, n1, buf2, sizeof(buf2), &n2) == 1) {
		if (n2 && (err = emit_text(st, r, buf2, n2)) < 0)
			return err;
		return finish(st, r, TPO_FINISH_STOP, NULL);
	}
	if (n2 && (err = emit_text(st, r, buf2, n2)) < 0)
		return err;
	if (r->max_tokens && r->tokens >= r->max_tokens)
		return finish(st, r, TPO_FINISH_LENGTH, NULL);
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
		if (rec->len < sizeof(*m) || tpo_msg_req_size(m) != rec->len)
			return tpo_stage_emit_error(st, k, rec->req_id, rec->aux, 500,
						    "internal error: malformed BEGIN record");
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
			return tpo_stage_emit_error(st, k, rec->req_id, rec->aux, 502,
				"the post-processing stage restarted while this response "
				"was streaming");
		if (r->done)
			return 0;
		return on_token(st, r, rec);
	case TPO_MSG_END:
		r = lookup(rec->req_id, 0);
		if (!r)
			return tpo_stage_emit_error(st, k, rec->req_id, rec->aux, 502,
				"the post-processing stage restarted while this response "
				"was streaming");
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
	rc = tpo_stage_run(&st, on_record);
	tpo_stage_fini(&st);
	return rc;
}
