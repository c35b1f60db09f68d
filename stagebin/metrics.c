/*
 * metrics.c — Prometheus exposition of the stats segment (see metrics.h).
 *
 * Names follow the Prometheus conventions (base units, _total on
 * counters, _seconds and _bytes suffixes) and the output passes
 * `promtool check metrics` without lint problems. Every family is written
 * with HELP and TYPE even when it has no sample yet, so dashboards see a
 * stable set of names.
 */
#include "stagebin/metrics.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
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

static void family(struct out *o, const char *name, const char *type, const char *help)
{
	put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value with \, " and newline escaped (exposition format 0.0.4). */
static void put_label(struct out *o, const char *s)
{
	char buf[512];
	size_t n = 0;

	for (; *s && n + 2 < sizeof(buf); s++) {
		if (*s == '\\' || *s == '"') {
			buf[n++] = '\\';
			buf[n++] = *s;
		} else if (*s == '\n') {
			buf[n++] = '\\';
			buf[n++] = 'n';
		} else {
			buf[n++] = *s;
		}
	}
	buf[n] = 0;
	put(o, "%s", buf);
}

static const struct {
	uint64_t ns;
	const char *le;
} bounds[] = {
	{ 10000, "1e-05" }, { 100000, "0.0001" }, { 500000, "0.0005" },
	{ 1000000, "0.001" }, { 5000000, "0.005" }, { 10000000, "0.01" },
	{ 50000000, "0.05" }, { 100000000, "0.1" }, { 250000000, "0.25" },
	{ 500000000, "0.5" }, { 1000000000, "1" }, { 2500000000ull, "2.5" },
	{ 5000000000ull, "5" }, { 10000000000ull, "10" }, { 30000000000ull, "30" },
	{ 60000000000ull, "60" },
};

/*
 * One histogram family over every stage × lane that has samples. The live
 * histogram is copied first so that the buckets, +Inf and _count of a
 * series come from one set of bucket totals (a live read may see the count
 * field behind the buckets, which would make +Inf smaller than a bucket).
 */
static void histogram(struct out *o, const struct tpo_stats *st, struct tpo_hist *copy,
		      const char *name, const char *help, enum tpo_stats_hist_kind kind,
		      uint32_t nlanes)
{
	family(o, name, "histogram", help);
	for (int s = 0; s < TPO_NSTAGES; s++) {
		for (uint32_t l = 0; l < nlanes; l++) {
			const struct tpo_hist *h = tpo_stats_hist(st, s, (int)l, kind);
			const char *sn = tpo_stats_stage_name(s);
			uint64_t total;

			if (!h || !tpo_hist_count(h))
				continue;
			memset(copy, 0, sizeof(*copy));
			tpo_hist_merge(copy, h);
			total = tpo_hist_count_le(copy, UINT64_MAX);
			for (size_t b = 0; b < sizeof(bounds) / sizeof(bounds[0]); b++)
				put(o, "%s_bucket{stage=\"%s\",lane=\"%u\",le=\"%s\"} %llu\n", name,
				    sn, l, bounds[b].le,
				    (unsigned long long)tpo_hist_count_le(copy, bounds[b].ns));
			put(o, "%s_bucket{stage=\"%s\",lane=\"%u\",le=\"+Inf\"} %llu\n", name, sn, l,
			    (unsigned long long)total);
			put(o, "%s_sum{stage=\"%s\",lane=\"%u\"} %.9f\n", name, sn, l,
			    (double)tpo_hist_sum(copy) / 1e9);
			put(o, "%s_count{stage=\"%s\",lane=\"%u\"} %llu\n", name, sn, l,
			    (unsigned long long)total);
		}
	}
}

struct view {
	struct tpo_stats_info info;
	uint32_t nl;
	struct tpo_proc_snapshot ps[TPO_NSTAGES][TPO_MAX_LANES];
	int ok[TPO_NSTAGES][TPO_MAX_LANES];
	uint64_t qdepth[TPO_NSTAGES][TPO_MAX_LANES], qcap[TPO_NSTAGES][TPO_MAX_LANES];
	struct tpo_hist copy;
};

static void instance(struct out *o, const struct view *v)
{
	family(o, "tpo_instance_info", "gauge", "Instance identity (always 1).");
	put(o, "tpo_instance_info{instance=\"");
	put_label(o, v->info.name);
	put(o, "\",listen=\"");
	put_label(o, v->info.listen);
	put(o, "\"} 1\n");
	family(o, "tpo_instance_lanes", "gauge", "Lanes the instance runs.");
	put(o, "tpo_instance_lanes %u\n", v->nl);
	family(o, "tpo_instance_start_time_seconds", "gauge",
	       "Start of the instance, seconds since the Unix epoch.");
	put(o, "tpo_instance_start_time_seconds %.3f\n", (double)v->info.start_ns / 1e9);
	family(o, "tpo_instance_draining", "gauge", "1 while the instance drains to stop.");
	put(o, "tpo_instance_draining %d\n", v->info.draining ? 1 : 0);
}

#define UNITS(v, s, l)                                         \
	for (int s = 0; s < TPO_NSTAGES; s++)                  \
		for (uint32_t l = 0; l < (v)->nl; l++)         \
			if ((v)->ok[s][l])

static void per_unit(struct out *o, const struct view *v)
{
#define PER_UNIT(name, type, help, field)                                        \
	family(o, name, type, help);                                             \
	UNITS(v, s, l)                                                           \
		put(o, name "{stage=\"%s\",lane=\"%u\"} %lld\n",                 \
		    tpo_stats_stage_name(s), l, (long long)v->ps[s][l].field);

	PER_UNIT("tpo_stage_restarts_total", "counter",
		 "Restarts of the stage process by the supervisor.", restarts)
	PER_UNIT("tpo_stage_requests_received_total", "counter",
		 "Requests received by the stage.", req_in)
	PER_UNIT("tpo_stage_requests_completed_total", "counter",
		 "Requests the stage passed on or answered.", req_out)
	PER_UNIT("tpo_stage_errors_total", "counter",
		 "Requests the stage ended with an error.", errors)
	PER_UNIT("tpo_stage_tokens_total", "counter",
		 "Tokens generated (infer) or passed on (post) by the stage.", tokens)
	PER_UNIT("tpo_stage_in_flight_requests", "gauge",
		 "Requests the stage process holds.", in_flight)
	PER_UNIT("tpo_stage_pid", "gauge", "Process id of the stage (0: none).", pid)
#undef PER_UNIT
	family(o, "tpo_stage_state", "gauge",
	       "Unit state as the supervisor sees it: 1 for the current state.");
	UNITS(v, s, l)
		for (int k = 0; k < TPO_UNIT_NSTATES; k++)
			put(o, "tpo_stage_state{stage=\"%s\",lane=\"%u\",state=\"%s\"} %d\n",
			    tpo_stats_stage_name(s), l, tpo_unit_state_name(k),
			    (int)v->ps[s][l].state == k);
	family(o, "tpo_stage_queue_depth_bytes", "gauge",
	       "Bytes queued in the stage's input rings.");
	for (int s = 0; s < TPO_NSTAGES; s++)
		for (uint32_t l = 0; l < v->nl; l++)
			put(o, "tpo_stage_queue_depth_bytes{stage=\"%s\",lane=\"%u\"} %llu\n",
			    tpo_stats_stage_name(s), l, (unsigned long long)v->qdepth[s][l]);
	family(o, "tpo_stage_queue_capacity_bytes", "gauge",
	       "Summed capacity of the stage's input rings.");
	for (int s = 0; s < TPO_NSTAGES; s++)
		for (uint32_t l = 0; l < v->nl; l++)
			put(o, "tpo_stage_queue_capacity_bytes{stage=\"%s\",lane=\"%u\"} %llu\n",
			    tpo_stats_stage_name(s), l, (unsigned long long)v->qcap[s][l]);
}

static void front(struct out *o, const struct view *v)
{
	uint64_t rej = 0, drop = 0, to = 0;

	family(o, "tpo_http_responses_total", "counter", "HTTP responses by status code.");
	for (int c = 0; c < TPO_STATUS_NCLASSES; c++) {
		uint64_t n = 0;

		for (uint32_t l = 0; l < v->nl; l++)
			if (v->ok[TPO_STAGE_STREAM][l])
				n += v->ps[TPO_STAGE_STREAM][l].http[c];
		if (tpo_stats_status_code(c))
			put(o, "tpo_http_responses_total{code=\"%d\"} %llu\n",
			    tpo_stats_status_code(c), (unsigned long long)n);
		else
			put(o, "tpo_http_responses_total{code=\"other\"} %llu\n",
			    (unsigned long long)n);
	}
	for (uint32_t l = 0; l < v->nl; l++) {
		if (!v->ok[TPO_STAGE_STREAM][l])
			continue;
		rej += v->ps[TPO_STAGE_STREAM][l].shed_reject;
		drop += v->ps[TPO_STAGE_STREAM][l].shed_drop_oldest;
		to += v->ps[TPO_STAGE_STREAM][l].timeouts;
	}
	family(o, "tpo_sheds_total", "counter", "Requests shed by admission policy.");
	put(o, "tpo_sheds_total{policy=\"reject_new\"} %llu\n", (unsigned long long)rej);
	put(o, "tpo_sheds_total{policy=\"drop_oldest\"} %llu\n", (unsigned long long)drop);
	family(o, "tpo_request_timeouts_total", "counter",
	       "Requests ended by their deadline (504).");
	put(o, "tpo_request_timeouts_total %llu\n", (unsigned long long)to);
}

static void endpoints(struct out *o, const struct tpo_stats *st)
{
	struct tpo_ep_snapshot ep[TPO_MAX_ENDPOINTS];
	int n = 0;

	for (int i = 0; i < TPO_MAX_ENDPOINTS; i++)
		if (tpo_stats_read_ep(st, i, &ep[n]) == 0)
			n++;
#define EP_LABELS(e)                                                            \
	put(o, "{lane=\"%u\",endpoint=\"%u\",name=\"", (e)->lane, (e)->index);  \
	put_label(o, (e)->name)
	family(o, "tpo_upstream_state", "gauge",
	       "Circuit breaker state of an upstream endpoint: 1 for the current state.");
	for (int i = 0; i < n; i++)
		for (int k = 0; k < TPO_EP_NSTATES; k++) {
			put(o, "tpo_upstream_state");
			EP_LABELS(&ep[i]);
			put(o, "\",state=\"%s\"} %d\n", tpo_ep_state_name(k),
			    (int)ep[i].state == k);
		}
	family(o, "tpo_upstream_in_flight_requests", "gauge",
	       "Requests in flight to an upstream endpoint.");
	for (int i = 0; i < n; i++) {
		put(o, "tpo_upstream_in_flight_requests");
		EP_LABELS(&ep[i]);
		put(o, "\"} %lld\n", (long long)ep[i].in_flight);
	}
	family(o, "tpo_upstream_requests_total", "counter",
	       "Requests sent to an upstream endpoint.");
	for (int i = 0; i < n; i++) {
		put(o, "tpo_upstream_requests_total");
		EP_LABELS(&ep[i]);
		put(o, "\"} %llu\n", (unsigned long long)ep[i].requests);
	}
	family(o, "tpo_upstream_errors_total", "counter",
	       "Failed requests to an upstream endpoint.");
	for (int i = 0; i < n; i++) {
		put(o, "tpo_upstream_errors_total");
		EP_LABELS(&ep[i]);
		put(o, "\"} %llu\n", (unsigned long long)ep[i].errors);
	}
#undef EP_LABELS
}

int tpo_metrics_render(const struct tpo_stats *st, char *buf, size_t cap)
{
	struct out o = { .p = buf, .cap = cap };
	struct view *v;
	int ret;

	/* ~60 KB: the caller may run on a small stack. */
	v = calloc(1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	if (tpo_stats_read_info(st, &v->info) < 0) {
		ret = -EAGAIN;
		goto out_free;
	}
	v->nl = v->info.nlanes > TPO_MAX_LANES ? TPO_MAX_LANES : v->info.nlanes;
	for (int s = 0; s < TPO_NSTAGES; s++)
		for (uint32_t l = 0; l < v->nl; l++)
			v->ok[s][l] = tpo_stats_read_proc(st, s, (int)l, &v->ps[s][l]) == 0;
	for (int i = 0; i < TPO_MAX_RINGS; i++) {
		struct tpo_ring_snapshot r;

		if (tpo_stats_read_ring(st, i, &r) < 0 || r.to_stage >= TPO_NSTAGES ||
		    r.to_lane >= v->nl)
			continue;
		v->qdepth[r.to_stage][r.to_lane] += r.depth;
		v->qcap[r.to_stage][r.to_lane] += r.capacity;
	}

	instance(&o, v);
	per_unit(&o, v);
	front(&o, v);
	endpoints(&o, st);
	histogram(&o, st, &v->copy, "tpo_stage_service_seconds",
		  "Stage service time, receive of a record to its output committed.",
		  TPO_STATS_SERVICE, v->nl);
	histogram(&o, st, &v->copy, "tpo_stage_queue_wait_seconds",
		  "Time records waited in the stage's input rings.", TPO_STATS_QUEUE_WAIT, v->nl);
	histogram(&o, st, &v->copy, "tpo_time_to_first_token_seconds",
		  "Time from admission to the first token.", TPO_STATS_TTFT, v->nl);
	ret = o.full ? -ENOSPC : (int)o.len;
out_free:
	free(v);
	return ret;
}
