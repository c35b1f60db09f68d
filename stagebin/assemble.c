/*
 * tpo-assemble — prompt assembly: REQ (messages + context) in, PROMPT out.
 *
 * Fills stages.assemble.template ({context}, {messages}) and enforces the
 * prompt budget (max_prompt_bytes): an over-budget request ends with 400
 * and a message saying by how much.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>

#include "stagebin/stage.h"
#include "stagebin/textproc.h"

static int on_record(struct tpo_stage *st, int in, const struct tpo_rec *rec)
{
	const struct tpo_msg_req *m = tpo_rec_data(rec);
	uint32_t budget = st->cfg.stages.assemble.max_prompt_bytes;
	struct tpo_msg_req *o;
	struct tpo_rec *out;
	uint32_t room;
	int n, err;

	(void)in;
	if (rec->type != TPO_MSG_REQ || rec->len < sizeof(*m) ||
	    tpo_msg_req_size(m) != rec->len)
		return tpo_stage_emit(st, 0, rec->type, rec->req_id, rec->seq, rec->aux,
				      tpo_rec_data(rec), rec->len);
	room = st->out[0].max_len - (uint32_t)sizeof(*m) - m->stop_len;
	if (room > budget)
		room = budget;
	err = tpo_stage_reserve(st, 0, (uint32_t)sizeof(*m) + room + m->stop_len, &out);
	if (err < 0)
		return err;
	o = tpo_rec_data(out);
	n = tpo_template_fill(st->cfg.stages.assemble.template,
			      tpo_msg_req_ctx(m), m->ctx_len,
			      tpo_msg_req_text(m), m->text_len,
			      tpo_msg_req_text(o), room);
	if (n < 0) {
		char msg[200];
		/* The reservation is simply not committed: it is overwritten. */
		tpo_ring_unreserve(&st->out[0], out);
		snprintf(msg, sizeof(msg), "prompt too long: %u bytes of messages and "
			 "context exceed the prompt budget of %u bytes",
			 m->text_len + m->ctx_len, budget);
		tpo_stats_count_error(&st->stats, st->stage, st->lane, 1);
		return tpo_stage_emit_error(st, 0, rec->req_id, rec->aux, 400, msg);
	}
	*o = *m;
	o->text_len = (uint32_t)n;
	o->ctx_len = 0;
	o->prompt_tokens = tpo_usage_estimate_tokens(tpo_msg_req_text(o), (size_t)n);
	memmove(tpo_msg_req_stops(o), tpo_msg_req_stops(m), m->stop_len);
	out->type = TPO_MSG_PROMPT;
	out->req_id = rec->req_id;
	out->aux = rec->aux;
	out->ts_ns = tpo_now_ns();
	/* Shrink the reservation to what the prompt took. */
	tpo_ring_shrink(&st->out[0], out, tpo_msg_req_size(o));
	tpo_ring_commit(&st->out[0]);
	tpo_stage_passed(st);
	return 0;
}

int main(int argc, char **argv)
{
	static struct tpo_stage st;
	int rc = tpo_stage_init(&st, TPO_ST_ASSEMBLE, argc, argv);

	if (rc)
		return rc;
	rc = tpo_stage_run(&st, on_record);
	tpo_stage_fini(&st);
	return rc;
}
