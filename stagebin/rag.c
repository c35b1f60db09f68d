/*
 * tpo-rag — retrieval stage: REQ in, REQ with context out.
 *
 * Today it passes requests through, adding the contents of the configured
 * stages.rag.context_file (at most max_context_bytes) as their context. The
 * file is read once at start; a missing or unreadable file exits 78 so the
 * supervisor marks the unit failed instead of crash-looping it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "stagebin/stage.h"

static char *context;
static uint32_t context_len;

static int load_context(const struct tpo_config *c)
{
	FILE *f;
	size_t n;

	if (!c->stages.rag.context_file[0] || !c->stages.rag.max_context_bytes)
		return 0;
	f = fopen(c->stages.rag.context_file, "rb");
	if (!f) {
		tpo_log(LOG_ERR, "fatal: stages.rag.context_file %s: %s",
			c->stages.rag.context_file, strerror(errno));
		return -1;
	}
	context = malloc(c->stages.rag.max_context_bytes);
	if (!context) {
		fclose(f);
		return -1;
	}
	n = fread(context, 1, c->stages.rag.max_context_bytes, f);
	fclose(f);
	context_len = (uint32_t)n;
	return 0;
}

static int on_record(struct tpo_stage *st, int in, const struct tpo_rec *rec)
{
	const struct tpo_msg_req *m = tpo_rec_data(rec);
	struct tpo_msg_req *o;
	struct tpo_rec *out;
	uint32_t ctx, len;
	int err;

	(void)in;
	if (rec->type != TPO_MSG_REQ)
		return tpo_stage_emit(st, 0, rec->type, rec->req_id, rec->seq, rec->aux,
				      tpo_rec_data(rec), rec->len);
	if (!tpo_msg_req_ok(rec)) {
		tpo_stats_count_error(&st->stats, st->stage, st->lane, 1);
		return tpo_stage_emit_error(st, 0, rec->req_id, rec->aux, 500,
					    "internal error: malformed REQ record");
	}
	ctx = context_len;
	len = rec->len + ctx;
	if (len > st->out[0].max_len)
		ctx = 0, len = rec->len;
	err = tpo_stage_reserve(st, 0, len, &out);
	if (err < 0)
		return err;
	out->type = rec->type;
	out->req_id = rec->req_id;
	out->seq = rec->seq;
	out->aux = rec->aux;
	out->ts_ns = st->now_ns;        /* attempt starts again at 0 downstream */
	o = tpo_rec_data(out);
	*o = *m;
	o->ctx_len = ctx;
	memcpy(tpo_msg_req_text(o), tpo_msg_req_text(m), m->text_len);
	if (ctx)
		memcpy(tpo_msg_req_ctx(o), context, ctx);
	memcpy(tpo_msg_req_stops(o), tpo_msg_req_stops(m), m->stop_len);
	tpo_stage_passed(st);
	return 0;
}

int main(int argc, char **argv)
{
	static struct tpo_stage st;
	int rc = tpo_stage_init(&st, TPO_ST_RAG, argc, argv);

	if (rc)
		return rc;
	if (load_context(&st.cfg) < 0)
		return 78;
	rc = tpo_stage_run(&st, on_record);
	tpo_stage_fini(&st);
	return rc;
}
