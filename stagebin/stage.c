/*
 * stage.c — the plumbing every stage executable shares (see stage.h).
 */
#include "stagebin/stage.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <syslog.h>
#include <unistd.h>

#define EX_USAGE 64
#define EX_CONFIG 78
#define EX_SYSTEM 111

volatile sig_atomic_t tpo_stage_stopping;
static int stop_bell = -1;
static struct tpo_stage *stop_st;   /* set once its input rings are open */
static const char *log_prog = "tpo-stage";

void tpo_log(int prio, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	n = snprintf(buf, sizeof(buf), "<%d>%s: ", prio, log_prog);
	va_start(ap, fmt);
	vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
	va_end(ap);
	/* One write per line so lines of concurrent processes do not mix. */
	n = (int)strlen(buf);
	if (n < (int)sizeof(buf) - 1)
		buf[n++] = '\n';
	if (write(2, buf, (size_t)n) < 0)
		return;
}

static void on_stop(int sig)
{
	int saved = errno;

	(void)sig;
	tpo_stage_stopping = 1;
	if (stop_bell >= 0)
		tpo_bell_ring(stop_bell);
	if (stop_st)
		tpo_ring_kick(stop_st->inp, stop_st->nin);
	errno = saved;
}

static int usage(const char *prog)
{
	fprintf(stderr, "usage: %s --instance NAME --lane L --lanes N --bell-base FD\n"
		"  (started by tpo-supervisor; not meant to be run by hand)\n", prog);
	return EX_USAGE;
}

static int bell_of(const struct tpo_stage *st, int stage, int lane)
{
	return st->bell_base + stage * st->nlanes + lane;
}

/* Input and output ring ends of each stage, by peer lane. */
static int open_rings(struct tpo_stage *st)
{
	int s = st->stage, l = st->lane, n = st->nlanes, k, err;
	int in_from, out_to, mesh_in, mesh_out;

	if (s < 0 || s >= TPO_ST_COUNT)
		return -EINVAL;
	/* Without rag the fronts write straight into assemble's rings. Every
	 * ring with a front at one end is a mesh. */
	in_from = tpo_ringset_prev(&st->rs, s);
	out_to = tpo_ringset_next(&st->rs, s);
	mesh_in = in_from == TPO_ST_STREAM || s == TPO_ST_STREAM;
	mesh_out = out_to == TPO_ST_STREAM || s == TPO_ST_STREAM;
	st->nin = mesh_in ? n : 1;
	for (k = 0; k < st->nin; k++) {
		int pl = mesh_in ? k : l;
		int id = tpo_ringset_index(&st->rs, in_from, pl, s, l);
		if (id < 0)
			return id;
		err = tpo_ring_open_consumer(&st->in[k],
			(uint8_t *)st->rs.seg.base + st->rs.ent[id].offset,
			bell_of(st, in_from, pl));
		if (err < 0)
			return err;
		st->inp[k] = &st->in[k];
		st->in_ring_id[k] = id;
	}
	st->nout = mesh_out ? n : 1;
	for (k = 0; k < st->nout; k++) {
		int pl = mesh_out ? k : l;
		int id = tpo_ringset_index(&st->rs, s, l, out_to, pl);
		if (id < 0)
			return id;
		err = tpo_ring_open_producer(&st->out[k],
			(uint8_t *)st->rs.seg.base + st->rs.ent[id].offset,
			bell_of(st, out_to, pl));
		if (err < 0)
			return err;
		st->out_ring_id[k] = id;
	}
	return 0;
}

static uint64_t auto_spin(const struct tpo_stage *st)
{
	long cores = sysconf(_SC_NPROCESSORS_ONLN);

	if (st->cfg.spin_ns != TPO_CONFIG_SPIN_AUTO)
		return (uint64_t)st->cfg.spin_ns;
	/* Spinning pays only when every stage process has a core of its own
	 * (rings-notes.md); with four or five stages per lane that is rare. */
	return cores >= (long)(TPO_ST_COUNT - __builtin_popcount(st->rs.hdr->absent)) *
			st->nlanes ? 20000 : 0;
}

/*
 * A record at the consumer's tail that the previous consumer was processing
 * when it died is delivered again with its attempt count raised, so that
 * the stage can quarantine a record that keeps killing it.
 */
static void count_crashed_attempts(struct tpo_stage *st)
{
	if (st->stage == TPO_ST_INFER)
		return;              /* tpo-infer blames its jobs itself */
	for (int k = 0; k < st->nin; k++) {
		struct tpo_ring *r = &st->in[k];
		uint64_t busy = atomic_load_explicit(&r->shm->busy, memory_order_relaxed);
		const struct tpo_rec *rec;

		/* The batch from tail up to it is delivered again; only the record
		 * in hand when the predecessor died counts an attempt. */
		if (busy) {
			struct tpo_ring walk = *r;
			while (walk.pos < busy - 1 && tpo_ring_peek(&walk, &rec) == 0)
				tpo_ring_advance(&walk, rec);
			if (walk.pos == busy - 1 && tpo_ring_peek(&walk, &rec) == 0)
				((struct tpo_rec *)rec)->attempt++;
		}
		atomic_store_explicit(&r->shm->busy, 0, memory_order_relaxed);
	}
}

int tpo_stage_init(struct tpo_stage *st, int stage, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "instance", required_argument, NULL, 'i' },
		{ "lane", required_argument, NULL, 'l' },
		{ "lanes", required_argument, NULL, 'n' },
		{ "bell-base", required_argument, NULL, 'b' },
		{ NULL, 0, NULL, 0 },
	};
	struct tpo_config_errors errs;
	struct sigaction sa;
	const char *conf;
	int c, err;

	memset(st, 0, sizeof(*st));
	st->prog = argv[0];
	st->stage = stage;
	st->lane = st->nlanes = st->bell_base = -1;
	log_prog = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'i': snprintf(st->instance, sizeof(st->instance), "%s", optarg); break;
		case 'l': st->lane = atoi(optarg); break;
		case 'n': st->nlanes = atoi(optarg); break;
		case 'b': st->bell_base = atoi(optarg); break;
		default: return usage(st->prog);
		}
	}
	if (optind != argc || tpo_seg_name_ok(st->instance) < 0 || st->nlanes < 1 ||
	    st->nlanes > TPO_RINGSET_MAX_LANES || st->lane < 0 || st->lane >= st->nlanes ||
	    st->bell_base < 3)
		return usage(st->prog);

	/* Die with the supervisor (it set this too, before exec; exec keeps it). */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	st->bell = bell_of(st, stage, st->lane);
	stop_bell = st->bell;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);

	err = tpo_ringset_attach(&st->rs, st->instance);
	if (err < 0) {
		tpo_log(LOG_ERR, "fatal: unable to attach /tpo.%s.rings: %s",
			st->instance, tpo_seg_strerror(err));
		return EX_SYSTEM;
	}
	if ((int)st->rs.hdr->nlanes != st->nlanes) {
		tpo_log(LOG_ERR, "fatal: --lanes %d but the instance has %u",
			st->nlanes, st->rs.hdr->nlanes);
		return EX_USAGE;
	}
	conf = (const char *)st->rs.seg.base + st->rs.hdr->config_off;
	if (tpo_config_parse(&st->cfg, conf, st->rs.hdr->config_len,
			     "<instance configuration>", &errs) < 0) {
		tpo_config_errors_print(&errs, stderr, log_prog);
		return EX_CONFIG;
	}
	err = tpo_stats_attach(&st->stats, st->instance, 1);
	if (err < 0) {
		tpo_log(LOG_ERR, "fatal: unable to attach /tpo.%s.stats: %s",
			st->instance, tpo_seg_strerror(err));
		return EX_SYSTEM;
	}
	if (st->rs.hdr->absent & (1u << stage)) {
		tpo_log(LOG_ERR, "fatal: instance '%s' runs without %s processes "
			"(stages.%s.enabled)", st->instance, tpo_stage_name(stage),
			tpo_stage_name(stage));
		return EX_CONFIG;
	}
	err = open_rings(st);
	if (err < 0) {
		tpo_log(LOG_ERR, "fatal: unable to open my rings: %s", strerror(-err));
		return EX_SYSTEM;
	}
	stop_st = st;
	count_crashed_attempts(st);
	st->spin_ns = auto_spin(st);
	st->quarantine_after = st->cfg.restart.quarantine_after;
	st->out_scratch_cap = st->rs.hdr->max_len;
	st->out_scratch = malloc(st->out_scratch_cap);
	if (!st->out_scratch)
		return EX_SYSTEM;
	tpo_stats_proc_claim(&st->stats, stage, st->lane);
	tpo_stage_tick(st);
	return 0;
}

void tpo_stage_fini(struct tpo_stage *st)
{
	tpo_stage_tick(st);
	free(st->out_scratch);
	tpo_stats_close(&st->stats);
	tpo_ringset_close(&st->rs);
}

void tpo_stage_tick(struct tpo_stage *st)
{
	uint64_t now = tpo_now_ns();

	if (now - st->last_tick_ns < 50000000ull)
		return;
	st->last_tick_ns = now;
	tpo_stats_heartbeat(&st->stats, st->stage, st->lane, now);
	/* Each ring's counters are published by its consumer. */
	for (int k = 0; k < st->nin; k++) {
		struct tpo_ring_shm *s = st->in[k].shm;
		tpo_stats_ring_update(&st->stats, st->in_ring_id[k],
			atomic_load_explicit(&s->prod_records, memory_order_relaxed),
			atomic_load_explicit(&s->cons_records, memory_order_relaxed),
			atomic_load_explicit(&s->head, memory_order_relaxed),
			atomic_load_explicit(&s->tail, memory_order_relaxed),
			atomic_load_explicit(&s->hwm, memory_order_relaxed));
	}
}

int tpo_stage_reserve(struct tpo_stage *st, int k, uint32_t len, struct tpo_rec **rec)
{
	struct tpo_ring *r = &st->out[k];
	int err;

	for (;;) {
		err = tpo_ring_reserve(r, len, rec);
		if (err != -EAGAIN)
			return err;
		/* Backpressure: a full ring stops us; we never drop. */
		tpo_ring_commit(r);
		if (tpo_stage_stopping)
			return -ECANCELED;
		tpo_ring_wait_space(r, len, st->bell, st->spin_ns, TPO_STAGE_WAIT_MS);
		tpo_stage_tick(st);
	}
}

int tpo_stage_emit(struct tpo_stage *st, int k, uint16_t type, uint64_t req_id,
		   uint32_t seq, uint32_t aux, const void *payload, uint32_t len)
{
	struct tpo_rec *rec;
	int err = tpo_stage_reserve(st, k, len, &rec);

	if (err < 0)
		return err;
	rec->type = type;
	rec->req_id = req_id;
	rec->seq = seq;
	rec->aux = aux;
	rec->ts_ns = st->now_ns ? st->now_ns : tpo_now_ns();
	memcpy(tpo_rec_data(rec), payload, len);
	/* Committed by tpo_stage_flush, once per batch (rings-notes.md). */
	return 0;
}

void tpo_stage_flush(struct tpo_stage *st)
{
	for (int k = 0; k < st->nout; k++) {
		struct tpo_ring *r = &st->out[k];
		if (r->pos != atomic_load_explicit(&r->shm->head, memory_order_relaxed))
			tpo_ring_commit(r);
	}
}

int tpo_stage_emit_error(struct tpo_stage *st, int k, uint64_t req_id, uint32_t aux,
			 int status, const char *msg)
{
	struct tpo_msg_err *e = (struct tpo_msg_err *)st->out_scratch;
	size_t n = strlen(msg);

	if (n > st->out_scratch_cap - sizeof(*e))
		n = st->out_scratch_cap - sizeof(*e);
	memset(e, 0, sizeof(*e));
	e->status = (uint16_t)status;
	e->msg_len = (uint32_t)n;
	memcpy(e + 1, msg, n);
	return tpo_stage_emit(st, k, TPO_MSG_ERROR, req_id, 0, aux, e,
			      (uint32_t)(sizeof(*e) + n));
}

int tpo_stage_wait(struct tpo_stage *st, int timeout_ms)
{
	int r = tpo_ring_wait(st->inp, st->nin, st->bell, st->spin_ns, timeout_ms);

	tpo_stage_tick(st);
	return r;
}

int tpo_stage_run(struct tpo_stage *st, tpo_stage_fn *fn)
{
	const struct tpo_rec *rec;
	int k, err, any;

	while (!tpo_stage_stopping) {
		any = 0;
		for (k = 0; k < st->nin; k++) {
			struct tpo_ring *r = &st->in[k];
			int b;
			/* Drain a bounded batch per ring so no input starves. Two
			 * clock reads per batch: the service time recorded is the
			 * batch's per-record average. */
			uint64_t t0 = st->now_ns = tpo_now_ns();
			for (b = 0; b < 64; b++) {
				err = tpo_ring_peek(r, &rec);
				if (err == -EAGAIN)
					break;
				if (err < 0) {
					tpo_log(LOG_CRIT, "fatal: input ring %d is corrupt at position %llu",
						st->in_ring_id[k], (unsigned long long)r->pos);
					return EX_SYSTEM;
				}
				atomic_store_explicit(&r->shm->busy, r->pos + 1, memory_order_relaxed);
				if (rec->attempt >= st->quarantine_after &&
				    rec->type != TPO_MSG_CANCEL) {
					tpo_log(LOG_ERR, "request %016llx quarantined: in flight in %u crashes",
						(unsigned long long)rec->req_id, rec->attempt);
					if (st->on_quarantine)
						st->on_quarantine(st, rec);
					err = tpo_stage_emit_error(st, tpo_stage_out_for(st, rec->aux), rec->req_id, rec->aux, 500,
						"request quarantined: it was in flight when this "
						"pipeline stage crashed repeatedly");
				} else {
					/* A BEGIN may wait on purpose (tpo-infer
					 * defers waking us for it); its stamp is when
					 * inference began. */
					if (st->now_ns > rec->ts_ns && rec->type != TPO_MSG_BEGIN)
						tpo_stats_queue_wait(&st->stats, st->stage, st->lane,
								     st->now_ns - rec->ts_ns);
					err = fn(st, k, rec);
				}
				if (err < 0) {
					if (err == -ECANCELED)
						break;
					tpo_log(LOG_ERR, "fatal: %s", strerror(-err));
					return EX_SYSTEM;
				}
				tpo_ring_advance(r, rec);
			}
			/* Output first, then input: a crash in between redelivers
			 * the batch (at-least-once), never loses it. */
			if (b) {
				tpo_stage_flush(st);
				tpo_ring_release(r);
				tpo_stats_service(&st->stats, st->stage, st->lane,
						  (tpo_now_ns() - t0) / (uint64_t)b);
				any = 1;
			}
			atomic_store_explicit(&r->shm->busy, 0, memory_order_relaxed);
			st->now_ns = 0;
		}
		if (!any)
			tpo_stage_wait(st, TPO_STAGE_WAIT_MS);
		else
			tpo_stage_tick(st);
	}
	return 0;
}
