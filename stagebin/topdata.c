/*
 * topdata.c — snapshots, rates and plain outputs of tpo-top (see topdata.h).
 */
#include "stagebin/topdata.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NUNITS (TPO_NSTAGES * TPO_MAX_LANES)

static uint64_t clock_ns(clockid_t c)
{
	struct timespec ts;

	clock_gettime(c, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void latencies(const struct tpo_stats *st, struct tpo_top_unit *u)
{
	static const double q3[3] = { 0.50, 0.95, 0.99 };
	const struct tpo_hist *h;
	uint64_t v[3];

	h = tpo_stats_hist(st, (int)u->stage, (int)u->lane, TPO_STATS_SERVICE);
	if (h && tpo_hist_count(h)) {
		tpo_hist_quantiles(h, q3, v, 3);
		u->svc_p50 = v[0];
		u->svc_p95 = v[1];
		u->svc_p99 = v[2];
	}
	h = tpo_stats_hist(st, (int)u->stage, (int)u->lane, TPO_STATS_QUEUE_WAIT);
	if (h && tpo_hist_count(h))
		u->qwait_p99 = tpo_hist_quantile(h, 0.99);
	h = tpo_stats_hist(st, (int)u->stage, (int)u->lane, TPO_STATS_TTFT);
	if (h && tpo_hist_count(h))
		u->ttft_p99 = tpo_hist_quantile(h, 0.99);
}

int tpo_top_take(const struct tpo_stats *st, const struct tpo_top_snap *prev,
		 struct tpo_top_snap *out)
{
	int err;

	memset(out, 0, sizeof(*out));
	out->mono_ns = clock_ns(CLOCK_MONOTONIC);
	out->real_ns = clock_ns(CLOCK_REALTIME);
	err = tpo_stats_read_info(st, &out->info);
	if (err < 0)
		return err;
	out->nlanes = out->info.nlanes;
	if (out->nlanes < 1)
		out->nlanes = 1;
	if (out->nlanes > TPO_MAX_LANES)
		out->nlanes = TPO_MAX_LANES;

	for (uint32_t s = 0; s < TPO_NSTAGES; s++) {
		for (uint32_t l = 0; l < out->nlanes; l++) {
			struct tpo_top_unit *u = &out->unit[s][l];

			u->stage = s;
			u->lane = l;
			if (tpo_stats_read_proc(st, (int)s, (int)l, &u->p) == 0) {
				u->ok = 1;
			} else if (prev && prev->unit[s][l].ok) {
				u->p = prev->unit[s][l].p;
				u->ok = 1;
				u->stale = 1;
			}
			latencies(st, u);
			out->restarts += u->ok ? u->p.restarts : 0;
		}
	}
	for (int i = 0; i < TPO_MAX_RINGS; i++) {
		struct tpo_ring_snapshot r;

		if (tpo_stats_read_ring(st, i, &r) < 0)
			continue;
		if (r.to_stage >= TPO_NSTAGES || r.to_lane >= out->nlanes)
			continue;
		out->unit[r.to_stage][r.to_lane].q_depth += r.depth;
		out->unit[r.to_stage][r.to_lane].q_cap += r.capacity;
		out->unit[r.to_stage][r.to_lane].q_rings++;
	}
	for (int i = 0; i < TPO_MAX_ENDPOINTS; i++)
		if (tpo_stats_read_ep(st, i, &out->ep[out->nep]) == 0)
			out->nep++;
	if (prev)
		tpo_top_rates(out, prev);
	return 0;
}

static double per_s(uint64_t now, uint64_t then, double dt)
{
	return now > then ? (double)(now - then) / dt : 0.0;
}

void tpo_top_rates(struct tpo_top_snap *cur, const struct tpo_top_snap *prev)
{
	double dt;

	cur->have_rates = 0;
	cur->in_s = cur->out_s = cur->tokens_s = cur->sheds_s = cur->errors_s = 0;
	if (cur->mono_ns <= prev->mono_ns)
		return;
	dt = (double)(cur->mono_ns - prev->mono_ns) / 1e9;
	cur->interval_s = dt;
	for (uint32_t s = 0; s < TPO_NSTAGES; s++) {
		for (uint32_t l = 0; l < cur->nlanes; l++) {
			struct tpo_top_unit *u = &cur->unit[s][l];
			const struct tpo_top_unit *v = &prev->unit[s][l];

			u->in_s = u->out_s = u->tokens_s = u->errors_s = u->sheds_s = 0;
			if (!u->ok || !v->ok || l >= prev->nlanes)
				continue;
			u->in_s = per_s(u->p.req_in, v->p.req_in, dt);
			u->out_s = per_s(u->p.req_out, v->p.req_out, dt);
			u->tokens_s = per_s(u->p.tokens, v->p.tokens, dt);
			u->errors_s = per_s(u->p.errors + u->p.timeouts,
					    v->p.errors + v->p.timeouts, dt);
			u->sheds_s = per_s(u->p.shed_reject + u->p.shed_drop_oldest,
					   v->p.shed_reject + v->p.shed_drop_oldest, dt);
			if (s == TPO_STAGE_STREAM) {
				cur->in_s += u->in_s;
				cur->out_s += u->out_s;
				cur->sheds_s += u->sheds_s;
				cur->errors_s += u->errors_s;
			}
			if (s == TPO_STAGE_INFER)
				cur->tokens_s += u->tokens_s;
		}
	}
	cur->have_rates = 1;
}

/* ---- ordering ---------------------------------------------------------- */

static double sort_value(const struct tpo_top_unit *u, enum tpo_top_sort key)
{
	switch (key) {
	case TPO_TOP_SORT_RESTARTS: return u->ok ? (double)u->p.restarts : 0;
	case TPO_TOP_SORT_QUEUE:    return (double)u->q_depth;
	case TPO_TOP_SORT_IN:       return u->in_s;
	case TPO_TOP_SORT_OUT:      return u->out_s;
	case TPO_TOP_SORT_P99:      return (double)u->svc_p99;
	default:                    return 0;
	}
}

static const struct tpo_top_snap *sort_snap;
static enum tpo_top_sort sort_key;

static int cmp_units(const void *a, const void *b)
{
	int ia = *(const int *)a, ib = *(const int *)b;
	const struct tpo_top_unit *ua = &sort_snap->unit[ia / TPO_MAX_LANES][ia % TPO_MAX_LANES];
	const struct tpo_top_unit *ub = &sort_snap->unit[ib / TPO_MAX_LANES][ib % TPO_MAX_LANES];
	double va = sort_value(ua, sort_key), vb = sort_value(ub, sort_key);

	if (va != vb)
		return va > vb ? -1 : 1;
	return ia - ib;
}

int tpo_top_order(const struct tpo_top_snap *s, enum tpo_top_sort key, int lane,
		  int *idx)
{
	int n = 0;

	for (uint32_t st = 0; st < TPO_NSTAGES; st++)
		for (uint32_t l = 0; l < s->nlanes; l++)
			if (lane < 0 || (uint32_t)lane == l)
				idx[n++] = (int)(st * TPO_MAX_LANES + l);
	/* qsort has no context argument; tpo-top is single-threaded. */
	sort_snap = s;
	sort_key = key;
	qsort(idx, (size_t)n, sizeof(*idx), cmp_units);
	return n;
}

const char *tpo_top_sort_name(enum tpo_top_sort key)
{
	static const char *names[TPO_TOP_NSORT] = {
		"stage", "restarts", "queue", "in/s", "out/s", "p99",
	};

	return (unsigned)key < TPO_TOP_NSORT ? names[key] : "?";
}

/* ---- formats ----------------------------------------------------------- */

char *tpo_top_fmt_bytes(char *buf, size_t len, uint64_t v)
{
	static const char unit[] = "BKMGTPE";
	double d = (double)v;
	int u = 0;

	while (d >= 1024 && u < 6) {
		d /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%llu", (unsigned long long)v);
	else if (d < 10)
		snprintf(buf, len, "%.1f%c", d, unit[u]);
	else
		snprintf(buf, len, "%.0f%c", d, unit[u]);
	return buf;
}

char *tpo_top_fmt_ns(char *buf, size_t len, uint64_t ns)
{
	double d = (double)ns;

	/* At most 5 characters: "850ns", "8.5us", "850us", "12ms", "1.2s". */
	if (ns == 0)
		snprintf(buf, len, "-");
	else if (ns < 1000)
		snprintf(buf, len, "%lluns", (unsigned long long)ns);
	else if (ns < 1000000)
		snprintf(buf, len, d < 9.95e3 ? "%.1fus" : "%.0fus", d / 1e3);
	else if (ns < 1000000000)
		snprintf(buf, len, d < 9.95e6 ? "%.1fms" : "%.0fms", d / 1e6);
	else
		snprintf(buf, len, d < 9.95e9 ? "%.1fs" : "%.0fs", d / 1e9);
	return buf;
}

char *tpo_top_fmt_rate(char *buf, size_t len, double v)
{
	if (v <= 0)
		snprintf(buf, len, "0");
	else if (v < 10)
		snprintf(buf, len, "%.1f", v);
	else if (v < 10000)
		snprintf(buf, len, "%.0f", v);
	else if (v < 1e7)
		snprintf(buf, len, "%.0fK", v / 1e3);
	else
		snprintf(buf, len, "%.0fM", v / 1e6);
	return buf;
}

/* ---- plain outputs ----------------------------------------------------- */

static const char *state_of(const struct tpo_top_unit *u)
{
	return u->ok ? tpo_unit_state_name((int)u->p.state) : "?";
}

static void uptime_str(char *buf, size_t len, const struct tpo_top_snap *s)
{
	uint64_t up = s->real_ns > s->info.start_ns ? (s->real_ns - s->info.start_ns) / 1000000000ull : 0;

	snprintf(buf, len, "%llud %02llu:%02llu:%02llu", (unsigned long long)(up / 86400),
		 (unsigned long long)(up / 3600 % 24), (unsigned long long)(up / 60 % 60),
		 (unsigned long long)(up % 60));
}

void tpo_top_print_table(FILE *f, const struct tpo_top_snap *s, enum tpo_top_sort key,
			 int lane)
{
	int idx[NUNITS], n;
	char up[32], a[16], b[16], c[16], d[16], e[16];

	uptime_str(up, sizeof(up), s);
	fprintf(f, "instance %s  supervisor %d  up %s  lanes %u%s\n", s->info.name,
		s->info.sup_pid, up, s->nlanes, s->info.draining ? "  DRAINING" : "");
	fprintf(f, "req/s in %s  out %s  tokens/s %s  sheds/s %s  errors/s %s  restarts %llu\n",
		tpo_top_fmt_rate(a, sizeof(a), s->in_s), tpo_top_fmt_rate(b, sizeof(b), s->out_s),
		tpo_top_fmt_rate(c, sizeof(c), s->tokens_s),
		tpo_top_fmt_rate(d, sizeof(d), s->sheds_s),
		tpo_top_fmt_rate(e, sizeof(e), s->errors_s), (unsigned long long)s->restarts);
	fprintf(f, "%-8s %2s %7s %-9s %3s %-10s %11s %6s %6s %6s %6s %6s %6s %6s %5s\n",
		"STAGE", "LN", "PID", "STATE", "RST", "QUEUE", "DEPTH/CAP", "IN/s", "OUT/s",
		"P50", "P95", "P99", "QW99", "TTFT99", "INFL");
	n = tpo_top_order(s, key, lane, idx);
	for (int i = 0; i < n; i++) {
		const struct tpo_top_unit *u = &s->unit[idx[i] / TPO_MAX_LANES][idx[i] % TPO_MAX_LANES];
		char bar[11], dc[24], q[16], p50[16], p95[16], p99[16], qw[16], tt[16], fl[16], pid[16];
		int fill = u->q_cap ? (int)((u->q_depth * 10 + u->q_cap - 1) / u->q_cap) : 0;

		for (int k = 0; k < 10; k++)
			bar[k] = k < fill ? '#' : '.';
		bar[10] = 0;
		snprintf(dc, sizeof(dc), "%s/%s", tpo_top_fmt_bytes(a, sizeof(a), u->q_depth),
			 tpo_top_fmt_bytes(b, sizeof(b), u->q_cap));
		if (u->stage == TPO_STAGE_INFER) {
			tpo_top_fmt_ns(tt, sizeof(tt), u->ttft_p99);
			snprintf(fl, sizeof(fl), "%lld", (long long)u->p.in_flight);
		} else {
			snprintf(tt, sizeof(tt), "-");
			snprintf(fl, sizeof(fl), "-");
		}
		snprintf(q, sizeof(q), "%u", u->ok ? u->p.restarts : 0);
		if (u->ok && u->p.pid > 0) /* "-": no process (rag "off", or between restarts) */
			snprintf(pid, sizeof(pid), "%d", (int)u->p.pid);
		else
			snprintf(pid, sizeof(pid), "-");
		fprintf(f, "%-8s %2u %7s %-9s %3s %-10s %11s %6s %6s %6s %6s %6s %6s %6s %5s\n",
			tpo_stats_stage_name((int)u->stage), u->lane, pid,
			state_of(u), q, bar, dc, tpo_top_fmt_rate(c, sizeof(c), u->in_s),
			tpo_top_fmt_rate(d, sizeof(d), u->out_s),
			tpo_top_fmt_ns(p50, sizeof(p50), u->svc_p50),
			tpo_top_fmt_ns(p95, sizeof(p95), u->svc_p95),
			tpo_top_fmt_ns(p99, sizeof(p99), u->svc_p99),
			tpo_top_fmt_ns(qw, sizeof(qw), u->qwait_p99), tt, fl);
	}
	if (!s->nep) {
		fprintf(f, "no upstream endpoints (mock worker)\n");
		return;
	}
	fprintf(f, "%-4s %-3s %-20s %-9s %6s %10s %8s\n", "LANE", "EP", "ENDPOINT", "STATE",
		"INFL", "REQUESTS", "ERRORS");
	for (uint32_t i = 0; i < s->nep; i++) {
		const struct tpo_ep_snapshot *e = &s->ep[i];

		fprintf(f, "%4u %3u %-20.20s %-9s %6lld %10llu %8llu\n", e->lane, e->index,
			e->name[0] ? e->name : e->url, tpo_ep_state_name((int)e->state),
			(long long)e->in_flight, (unsigned long long)e->requests,
			(unsigned long long)e->errors);
	}
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

/* Rates as finite JSON numbers with 3 decimals. */
static void json_num(FILE *f, const char *key, double v, int comma)
{
	fprintf(f, "\"%s\":%.3f%s", key, v, comma ? "," : "");
}

void tpo_top_print_json(FILE *f, const struct tpo_top_snap *s)
{
	uint64_t up = s->real_ns > s->info.start_ns ? (s->real_ns - s->info.start_ns) / 1000000000ull : 0;

	fprintf(f, "{\"instance\":");
	json_str(f, s->info.name);
	fprintf(f, ",\"time\":%.3f,\"uptime_s\":%llu,\"supervisor_pid\":%d,\"lanes\":%u,"
		"\"draining\":%s,\"interval_s\":%.3f,\"restarts\":%llu,",
		(double)s->real_ns / 1e9, (unsigned long long)up, s->info.sup_pid, s->nlanes,
		s->info.draining ? "true" : "false", s->interval_s,
		(unsigned long long)s->restarts);
	fprintf(f, "\"rates\":{");
	json_num(f, "requests_in", s->in_s, 1);
	json_num(f, "requests_out", s->out_s, 1);
	json_num(f, "tokens", s->tokens_s, 1);
	json_num(f, "sheds", s->sheds_s, 1);
	json_num(f, "errors", s->errors_s, 0);
	fprintf(f, "},\"units\":[");
	for (uint32_t st = 0; st < TPO_NSTAGES; st++) {
		for (uint32_t l = 0; l < s->nlanes; l++) {
			const struct tpo_top_unit *u = &s->unit[st][l];

			/* "pid":null where no process runs (rag "off", between restarts) */
			fprintf(f, "%s{\"stage\":\"%s\",\"lane\":%u,\"pid\":",
				st || l ? "," : "", tpo_stats_stage_name((int)st), l);
			if (u->ok && u->p.pid > 0)
				fprintf(f, "%d", (int)u->p.pid);
			else
				fputs("null", f);
			fprintf(f, ",\"state\":\"%s\","
				"\"stale\":%s,\"restarts\":%u,\"queue_depth_bytes\":%llu,"
				"\"queue_capacity_bytes\":%llu,\"in_flight\":%lld,",
				state_of(u), u->stale ? "true" : "false",
				u->ok ? u->p.restarts : 0, (unsigned long long)u->q_depth,
				(unsigned long long)u->q_cap, (long long)(u->ok ? u->p.in_flight : 0));
			fprintf(f, "\"requests_in\":%llu,\"requests_out\":%llu,\"tokens\":%llu,"
				"\"errors\":%llu,\"timeouts\":%llu,\"sheds\":%llu,",
				(unsigned long long)u->p.req_in, (unsigned long long)u->p.req_out,
				(unsigned long long)u->p.tokens, (unsigned long long)u->p.errors,
				(unsigned long long)u->p.timeouts,
				(unsigned long long)(u->p.shed_reject + u->p.shed_drop_oldest));
			json_num(f, "in_per_s", u->in_s, 1);
			json_num(f, "out_per_s", u->out_s, 1);
			json_num(f, "tokens_per_s", u->tokens_s, 1);
			json_num(f, "errors_per_s", u->errors_s, 1);
			json_num(f, "sheds_per_s", u->sheds_s, 1);
			json_num(f, "service_p50_ms", (double)u->svc_p50 / 1e6, 1);
			json_num(f, "service_p95_ms", (double)u->svc_p95 / 1e6, 1);
			json_num(f, "service_p99_ms", (double)u->svc_p99 / 1e6, 1);
			json_num(f, "queue_wait_p99_ms", (double)u->qwait_p99 / 1e6, 1);
			json_num(f, "ttft_p99_ms", (double)u->ttft_p99 / 1e6, 0);
			fputc('}', f);
		}
	}
	fprintf(f, "],\"endpoints\":[");
	for (uint32_t i = 0; i < s->nep; i++) {
		const struct tpo_ep_snapshot *e = &s->ep[i];

		fprintf(f, "%s{\"lane\":%u,\"index\":%u,\"name\":", i ? "," : "", e->lane, e->index);
		json_str(f, e->name);
		fprintf(f, ",\"url\":");
		json_str(f, e->url);
		fprintf(f, ",\"state\":\"%s\",\"in_flight\":%lld,\"requests\":%llu,\"errors\":%llu}",
			tpo_ep_state_name((int)e->state), (long long)e->in_flight,
			(unsigned long long)e->requests, (unsigned long long)e->errors);
	}
	fprintf(f, "]}\n");
}
