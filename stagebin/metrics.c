/*
 * metrics.c — Prometheus exposition of the stats segment (see metrics.h).
 */
#include "stagebin/metrics.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

struct out {
	char *p;
	size_t cap, len;
	int full;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (o->full)
		return;
	va_start(ap, fmt);
	n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= o->cap - o->len) {
		o->full = 1;
		return;
	}
	o->len += (size_t)n;
}

static const uint64_t bounds_ns[] = {
	1000, 5000, 10000, 50000, 100000, 500000, 1000000, 5000000, 10000000,
	50000000, 100000000, 500000000, 1000000000, 5000000000ull, 10000000000ull,
	60000000000ull,
};

static void histogram(struct out *o, const struct tpo_stats *st, const char *name,
		      const char *help, enum tpo_stats_hist_kind kind, uint32_t nlanes)
{
	put(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (int s = 0; s < TPO_NSTAGES; s++) {
		for (uint32_t l = 0; l < nlanes; l++) {
			const struct tpo_hist *h = tpo_stats_hist(st, s, (int)l, kind);
			uint64_t cnt;
			if (!h || !(cnt = tpo_hist_count(h)))
				continue;
			for (size_t b = 0; b < sizeof(bounds_ns) / sizeof(bounds_ns[0]); b++)
				put(o, "%s_bucket{stage=\"%s\",lane=\"%u\",le=\"%g\"} %llu\n", name,
				    tpo_stats_stage_name(s), l, (double)bounds_ns[b] / 1e9,
				    (unsigned long long)tpo_hist_count_le(h, bounds_ns[b]));
			put(o, "%s_bucket{stage=\"%s\",lane=\"%u\",le=\"+Inf\"} %llu\n", name,
			    tpo_stats_stage_name(s), l, (unsigned long long)cnt);
			put(o, "%s_sum{stage=\"%s\",lane=\"%u\"} %.9f\n", name,
			    tpo_stats_stage_name(s), l, (double)tpo_hist_sum(h) / 1e9);
			put(o, "%s_count{stage=\"%s\",lane=\"%u\"} %llu\n", name,
			    tpo_stats_stage_name(s), l, (unsigned long long)cnt);
		}
	}
}

int tpo_metrics_render(const struct tpo_stats *st, char *buf, size_t cap)
{
	struct out o = { .p = buf, .cap = cap };
	struct tpo_stats_info info;
	struct tpo_proc_snapshot ps[TPO_NSTAGES][TPO_MAX_LANES];
	int ok[TPO_NSTAGES][TPO_MAX_LANES];
	uint32_t nl;

	if (tpo_stats_read_info(st, &info) < 0)
		return -EAGAIN;
	nl = info.nlanes;
	for (int s = 0; s < TPO_NSTAGES; s++)
		for (uint32_t l = 0; l < nl; l++)
			ok[s][l] = tpo_stats_read_proc(st, s, (int)l, &ps[s][l]) == 0;

#define PER_UNIT(name, type, help, expr)                                           \
	put(&o, "# HELP " name " " help "\n# TYPE " name " " type "\n");            \
	for (int s = 0; s < TPO_NSTAGES; s++)                                      \
		for (uint32_t l = 0; l < nl; l++)                                  \
			if (ok[s][l])                                              \
				put(&o, name "{stage=\"%s\",lane=\"%u\"} %lld\n",   \
				    tpo_stats_stage_name(s), l, (long long)(expr));

	PER_UNIT("tpo_stage_restarts_total", "counter", "Restarts of the stage process.",
		 ps[s][l].restarts)
	PER_UNIT("tpo_stage_requests_in_total", "counter", "Requests received by the stage.",
		 ps[s][l].req_in)
	PER_UNIT("tpo_stage_requests_out_total", "counter", "Requests completed by the stage.",
		 ps[s][l].req_out)
	PER_UNIT("tpo_stage_errors_total", "counter", "Requests ended with an error by the stage.",
		 ps[s][l].errors)
	PER_UNIT("tpo_stage_tokens_total", "counter", "Tokens produced or processed by the stage.",
		 ps[s][l].tokens)
	PER_UNIT("tpo_stage_in_flight", "gauge", "Requests held by the stage process.",
		 ps[s][l].in_flight)
#undef PER_UNIT
	put(&o, "# HELP tpo_stage_state Unit state (1 for the current state).\n"
		"# TYPE tpo_stage_state gauge\n");
	for (int s = 0; s < TPO_NSTAGES; s++)
		for (uint32_t l = 0; l < nl; l++)
			if (ok[s][l])
				for (int k = 0; k < TPO_UNIT_NSTATES; k++)
					put(&o, "tpo_stage_state{stage=\"%s\",lane=\"%u\",state=\"%s\"} %d\n",
					    tpo_stats_stage_name(s), l, tpo_unit_state_name(k),
					    (int)ps[s][l].state == k);

	put(&o, "# HELP tpo_http_responses_total HTTP responses by status code.\n"
		"# TYPE tpo_http_responses_total counter\n");
	for (int c = 0; c < TPO_STATUS_NCLASSES; c++) {
		uint64_t n = 0;
		for (uint32_t l = 0; l < nl; l++)
			if (ok[0][l])
				n += ps[0][l].http[c];
		if (tpo_stats_status_code(c))
			put(&o, "tpo_http_responses_total{code=\"%d\"} %llu\n",
			    tpo_stats_status_code(c), (unsigned long long)n);
		else
			put(&o, "tpo_http_responses_total{code=\"other\"} %llu\n",
			    (unsigned long long)n);
	}
	put(&o, "# HELP tpo_sheds_total Requests shed by admission policy.\n"
		"# TYPE tpo_sheds_total counter\n");
	{
		uint64_t rej = 0, drop = 0, to = 0;
		for (uint32_t l = 0; l < nl; l++)
			if (ok[0][l]) {
				rej += ps[0][l].shed_reject;
				drop += ps[0][l].shed_drop_oldest;
				to += ps[0][l].timeouts;
			}
		put(&o, "tpo_sheds_total{policy=\"reject_new\"} %llu\n", (unsigned long long)rej);
		put(&o, "tpo_sheds_total{policy=\"drop_oldest\"} %llu\n", (unsigned long long)drop);
		put(&o, "# HELP tpo_request_timeouts_total Requests ended by their deadline (504).\n"
			"# TYPE tpo_request_timeouts_total counter\n"
			"tpo_request_timeouts_total %llu\n", (unsigned long long)to);
	}
	put(&o, "# HELP tpo_queue_depth_bytes Bytes queued in a ring.\n"
		"# TYPE tpo_queue_depth_bytes gauge\n");
	for (int i = 0; i < TPO_MAX_RINGS; i++) {
		struct tpo_ring_snapshot r;
		if (tpo_stats_read_ring(st, i, &r) < 0)
			continue;
		put(&o, "tpo_queue_depth_bytes{from=\"%s\",from_lane=\"%u\",to=\"%s\",to_lane=\"%u\"} %llu\n",
		    tpo_stats_stage_name((int)r.from_stage), r.from_lane,
		    tpo_stats_stage_name((int)r.to_stage), r.to_lane, (unsigned long long)r.depth);
	}
	put(&o, "# HELP tpo_queue_capacity_bytes Capacity of a ring.\n"
		"# TYPE tpo_queue_capacity_bytes gauge\n");
	for (int i = 0; i < TPO_MAX_RINGS; i++) {
		struct tpo_ring_snapshot r;
		if (tpo_stats_read_ring(st, i, &r) < 0)
			continue;
		put(&o, "tpo_queue_capacity_bytes{from=\"%s\",from_lane=\"%u\",to=\"%s\",to_lane=\"%u\"} %llu\n",
		    tpo_stats_stage_name((int)r.from_stage), r.from_lane,
		    tpo_stats_stage_name((int)r.to_stage), r.to_lane, (unsigned long long)r.capacity);
	}
	histogram(&o, st, "tpo_stage_service_seconds", "Stage service time.", TPO_STATS_SERVICE, nl);
	histogram(&o, st, "tpo_stage_queue_wait_seconds", "Time records waited in the stage's input.",
		  TPO_STATS_QUEUE_WAIT, nl);
	histogram(&o, st, "tpo_time_to_first_token_seconds", "Time to first token.",
		  TPO_STATS_TTFT, nl);
	if (o.full)
		return -ENOSPC;
	return (int)o.len;
}
