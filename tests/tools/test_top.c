/*
 * test_top.c — tpo-top's data model (stagebin/topdata.c) and the /metrics
 * exposition (stagebin/metrics.c), both read from a stats segment this
 * test creates and fills through the writer API.
 */
#include "stagebin/metrics.h"
#include "stagebin/topdata.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define JSMN_HEADER
#include <jsmn.h>

static const char *inst(void)
{
	static char name[TPO_NAME_MAX + 1];

	if (!name[0])
		snprintf(name, sizeof(name), "t%dtop", (int)getpid());
	return name;
}

static struct tpo_stats st;
static struct tpo_top_snap *a, *b;

static void setup(void)
{
	cr_assert_eq(tpo_stats_create(&st, inst(), 2), 0);
	a = calloc(1, sizeof(*a));
	b = calloc(1, sizeof(*b));
	cr_assert(a && b);
}

static void teardown(void)
{
	tpo_stats_destroy(&st);
	tpo_seg_sweep(inst(), 1);
	free(a);
	free(b);
}

TestSuite(top, .init = setup, .fini = teardown);

static void set_unit(int stage, int lane, int pid, uint32_t state, uint32_t restarts)
{
	struct tpo_stats_sup_info v = {
		.pid = pid, .state = state, .restarts = restarts, .last_status = -1,
		.last_exit_code = -1,
	};

	cr_assert_eq(tpo_stats_sup_set(&st, stage, lane, &v), 0);
}

/* Two input rings of rag_1 (from both fronts) and one of infer_0. */
static void set_rings(void)
{
	cr_assert_eq(tpo_stats_ring_set(&st, 0, 10, TPO_STAGE_STREAM, 0, TPO_STAGE_RAG, 1,
					 1 << 20), 0);
	cr_assert_eq(tpo_stats_ring_set(&st, 1, 11, TPO_STAGE_STREAM, 1, TPO_STAGE_RAG, 1,
					 1 << 20), 0);
	cr_assert_eq(tpo_stats_ring_set(&st, 2, 12, TPO_STAGE_ASSEMBLE, 0, TPO_STAGE_INFER, 0,
					 1 << 18), 0);
	tpo_stats_ring_update(&st, 0, 5, 3, 1000, 400, 600);    /* depth 600 */
	tpo_stats_ring_update(&st, 1, 2, 2, 64, 64, 64);        /* depth 0 */
	tpo_stats_ring_update(&st, 2, 9, 1, 5000, 1000, 4000);  /* depth 4000 */
}

Test(top, take_maps_rings_to_the_consuming_unit)
{
	set_rings();
	set_unit(TPO_STAGE_RAG, 1, 4242, TPO_UNIT_RUNNING, 3);
	set_unit(TPO_STAGE_INFER, 0, 4343, TPO_UNIT_BACKOFF, 2);
	cr_assert_eq(tpo_top_take(&st, NULL, a), 0);
	cr_assert_eq(a->nlanes, 2);
	cr_assert_eq(a->unit[TPO_STAGE_RAG][1].q_depth, 600);
	cr_assert_eq(a->unit[TPO_STAGE_RAG][1].q_cap, 2u << 20);
	cr_assert_eq(a->unit[TPO_STAGE_RAG][1].q_rings, 2);
	cr_assert_eq(a->unit[TPO_STAGE_INFER][0].q_depth, 4000);
	cr_assert_eq(a->unit[TPO_STAGE_STREAM][0].q_depth, 0);
	cr_assert_eq(a->unit[TPO_STAGE_RAG][1].p.pid, 4242);
	cr_assert_eq(a->unit[TPO_STAGE_INFER][0].p.state, TPO_UNIT_BACKOFF);
	cr_assert_eq(a->restarts, 5);
	cr_assert_eq(a->nep, 0);
	cr_assert_eq(a->have_rates, 0);
}

Test(top, rates_are_counter_deltas_over_the_interval)
{
	cr_assert_eq(tpo_top_take(&st, NULL, a), 0);
	tpo_stats_count_in(&st, TPO_STAGE_STREAM, 0, 10);
	tpo_stats_count_out(&st, TPO_STAGE_STREAM, 1, 4);
	tpo_stats_count_tokens(&st, TPO_STAGE_INFER, 1, 100);
	tpo_stats_count_shed_reject(&st, TPO_STAGE_STREAM, 0, 2);
	tpo_stats_count_timeout(&st, TPO_STAGE_STREAM, 1, 1);
	tpo_stats_count_error(&st, TPO_STAGE_STREAM, 1, 1);
	cr_assert_eq(tpo_top_take(&st, NULL, b), 0);
	b->mono_ns = a->mono_ns + 2000000000ull;        /* exactly 2 s later */
	tpo_top_rates(b, a);
	cr_assert_eq(b->have_rates, 1);
	cr_assert_float_eq(b->unit[TPO_STAGE_STREAM][0].in_s, 5.0, 1e-9);
	cr_assert_float_eq(b->in_s, 5.0, 1e-9);
	cr_assert_float_eq(b->out_s, 2.0, 1e-9);
	cr_assert_float_eq(b->tokens_s, 50.0, 1e-9);
	cr_assert_float_eq(b->sheds_s, 1.0, 1e-9);
	cr_assert_float_eq(b->errors_s, 1.0, 1e-9);    /* a timeout and an error */
	cr_assert_float_eq(b->interval_s, 2.0, 1e-9);
}

Test(top, a_counter_that_went_backwards_rates_zero)
{
	tpo_stats_count_in(&st, TPO_STAGE_RAG, 0, 50);
	cr_assert_eq(tpo_top_take(&st, NULL, a), 0);
	cr_assert_eq(tpo_top_take(&st, NULL, b), 0);
	b->unit[TPO_STAGE_RAG][0].p.req_in = 10;
	b->mono_ns = a->mono_ns + 1000000000ull;
	tpo_top_rates(b, a);
	cr_assert_float_eq(b->unit[TPO_STAGE_RAG][0].in_s, 0.0, 1e-12);
}

Test(top, no_rates_without_time_passing)
{
	cr_assert_eq(tpo_top_take(&st, NULL, a), 0);
	*b = *a;
	tpo_top_rates(b, a);
	cr_assert_eq(b->have_rates, 0);
}

Test(top, a_busy_slot_keeps_the_previous_copy)
{
	int i = tpo_stats_proc_index(TPO_STAGE_POST, 1);

	set_unit(TPO_STAGE_POST, 1, 777, TPO_UNIT_RUNNING, 1);
	cr_assert_eq(tpo_top_take(&st, NULL, a), 0);
	cr_assert_eq(a->unit[TPO_STAGE_POST][1].stale, 0);
	/* A writer that died inside its seqlock write leaves the sequence odd. */
	atomic_store(&st.shm->proc[i].sup.seq, 1);
	atomic_store(&st.shm->proc[i].sup.pid, 999);
	cr_assert_eq(tpo_top_take(&st, a, b), 0);
	cr_assert_eq(b->unit[TPO_STAGE_POST][1].ok, 1);
	cr_assert_eq(b->unit[TPO_STAGE_POST][1].stale, 1);
	cr_assert_eq(b->unit[TPO_STAGE_POST][1].p.pid, 777);
	cr_assert_eq(tpo_top_take(&st, NULL, b), 0);
	cr_assert_eq(b->unit[TPO_STAGE_POST][1].ok, 0);
}

Test(top, latencies_come_from_the_histograms)
{
	for (int k = 1; k <= 100; k++)
		tpo_stats_service(&st, TPO_STAGE_ASSEMBLE, 0, (uint64_t)k * 1000000);
	tpo_stats_ttft(&st, TPO_STAGE_INFER, 1, 5000000);
	cr_assert_eq(tpo_top_take(&st, NULL, a), 0);
	cr_assert_float_eq((double)a->unit[TPO_STAGE_ASSEMBLE][0].svc_p50, 50e6, 50e6 / 64);
	cr_assert_float_eq((double)a->unit[TPO_STAGE_ASSEMBLE][0].svc_p99, 99e6, 99e6 / 64);
	cr_assert_eq(a->unit[TPO_STAGE_INFER][1].ttft_p99, 5000000);
	cr_assert_eq(a->unit[TPO_STAGE_RAG][0].svc_p99, 0);
}

Test(top, order_sorts_descending_and_filters_lanes)
{
	int idx[TPO_NSTAGES * TPO_MAX_LANES], n;

	set_rings();
	set_unit(TPO_STAGE_POST, 0, 1, TPO_UNIT_RUNNING, 7);
	cr_assert_eq(tpo_top_take(&st, NULL, a), 0);
	n = tpo_top_order(a, TPO_TOP_SORT_UNIT, -1, idx);
	cr_assert_eq(n, 10);
	cr_assert_eq(idx[0], 0);
	cr_assert_eq(idx[1], 1);
	cr_assert_eq(idx[9], TPO_STAGE_POST * TPO_MAX_LANES + 1);
	n = tpo_top_order(a, TPO_TOP_SORT_QUEUE, -1, idx);
	cr_assert_eq(idx[0], TPO_STAGE_INFER * TPO_MAX_LANES + 0);
	cr_assert_eq(idx[1], TPO_STAGE_RAG * TPO_MAX_LANES + 1);
	cr_assert_eq(idx[2], 0, "ties keep pipeline order");
	n = tpo_top_order(a, TPO_TOP_SORT_RESTARTS, -1, idx);
	cr_assert_eq(idx[0], TPO_STAGE_POST * TPO_MAX_LANES + 0);
	n = tpo_top_order(a, TPO_TOP_SORT_UNIT, 1, idx);
	cr_assert_eq(n, 5);
	for (int i = 0; i < n; i++)
		cr_assert_eq(idx[i] % TPO_MAX_LANES, 1);
	cr_assert_str_eq(tpo_top_sort_name(TPO_TOP_SORT_QUEUE), "queue");
}

Test(top, formats)
{
	char buf[16];

	cr_assert_str_eq(tpo_top_fmt_bytes(buf, sizeof(buf), 0), "0");
	cr_assert_str_eq(tpo_top_fmt_bytes(buf, sizeof(buf), 1000), "1000");
	cr_assert_str_eq(tpo_top_fmt_bytes(buf, sizeof(buf), 1536), "1.5K");
	cr_assert_str_eq(tpo_top_fmt_bytes(buf, sizeof(buf), 1 << 20), "1.0M");
	cr_assert_str_eq(tpo_top_fmt_bytes(buf, sizeof(buf), 64u << 20), "64M");
	cr_assert_str_eq(tpo_top_fmt_ns(buf, sizeof(buf), 0), "-");
	cr_assert_str_eq(tpo_top_fmt_ns(buf, sizeof(buf), 850), "850ns");
	cr_assert_str_eq(tpo_top_fmt_ns(buf, sizeof(buf), 8500), "8.5us");
	cr_assert_str_eq(tpo_top_fmt_ns(buf, sizeof(buf), 12000000), "12ms");
	cr_assert_str_eq(tpo_top_fmt_ns(buf, sizeof(buf), 1200000000), "1.2s");
	cr_assert_str_eq(tpo_top_fmt_rate(buf, sizeof(buf), 0), "0");
	cr_assert_str_eq(tpo_top_fmt_rate(buf, sizeof(buf), 2.5), "2.5");
	cr_assert_str_eq(tpo_top_fmt_rate(buf, sizeof(buf), 250), "250");
	cr_assert_str_eq(tpo_top_fmt_rate(buf, sizeof(buf), 25000), "25K");
}

static char *capture_table(const struct tpo_top_snap *s, enum tpo_top_sort key, int lane)
{
	char *p = NULL;
	size_t n = 0;
	FILE *f = open_memstream(&p, &n);

	cr_assert_not_null(f);
	tpo_top_print_table(f, s, key, lane);
	fclose(f);
	return p;
}

Test(top, table_is_plain_text_with_a_row_per_unit)
{
	char *t, *line;
	int rows = 0;

	set_rings();
	set_unit(TPO_STAGE_INFER, 0, 4343, TPO_UNIT_HALF_OPEN, 2);
	set_unit(TPO_STAGE_RAG, 1, 0, TPO_UNIT_OFF, 0);
	cr_assert_eq(tpo_top_take(&st, NULL, a), 0);
	t = capture_table(a, TPO_TOP_SORT_UNIT, -1);
	cr_assert_null(strchr(t, '\033'), "no escape codes");
	cr_assert_not_null(strstr(t, "  4343 half-open"), "infer_0's pid");
	cr_assert_not_null(strstr(t, "rag       1       - off "), "no pid for a unit without a process: %s", t);
	cr_assert_not_null(strstr(t, "instance "));
	cr_assert_not_null(strstr(t, "no upstream endpoints (mock worker)"));
	cr_assert_not_null(strstr(t, "half-open"));
	cr_assert_not_null(strstr(t, "3.9K/256K"), "infer_0 queue depth/capacity");
	for (line = t; (line = strchr(line, '\n')); line++)
		if (!strncmp(line + 1, "stream ", 7) || !strncmp(line + 1, "rag ", 4) ||
		    !strncmp(line + 1, "assemble ", 9) || !strncmp(line + 1, "infer ", 6) ||
		    !strncmp(line + 1, "post ", 5))
			rows++;
	cr_assert_eq(rows, 10);
	free(t);
	t = capture_table(a, TPO_TOP_SORT_UNIT, 0);
	cr_assert_null(strstr(t, "stream    1"), "lane filter");
	free(t);
}

Test(top, endpoints_appear_in_the_table_json_and_metrics)
{
	char *t, buf[1 << 16];
	int slot, n;

	slot = tpo_stats_ep_claim(&st, 1, 0, "local \"llama\"", "http://127.0.0.1:1/v1");
	cr_assert_geq(slot, 0);
	cr_assert_eq(tpo_stats_ep_set_state(&st, slot, TPO_EP_OPEN, 1), 0);
	tpo_stats_ep_add(&st, slot, 2, 7, 3);
	cr_assert_eq(tpo_top_take(&st, NULL, a), 0);
	cr_assert_eq(a->nep, 1);
	t = capture_table(a, TPO_TOP_SORT_UNIT, -1);
	cr_assert_null(strstr(t, "no upstream endpoints"));
	cr_assert_not_null(strstr(t, "open"));
	free(t);
	n = tpo_metrics_render(&st, buf, sizeof(buf));
	cr_assert_gt(n, 0);
	cr_assert_not_null(strstr(buf, "tpo_upstream_state{lane=\"1\",endpoint=\"0\","
				  "name=\"local \\\"llama\\\"\",state=\"open\"} 1\n"));
	cr_assert_not_null(strstr(buf, "tpo_upstream_requests_total{lane=\"1\",endpoint=\"0\","
				  "name=\"local \\\"llama\\\"\"} 7\n"));
	cr_assert_not_null(strstr(buf, "tpo_upstream_in_flight_requests{lane=\"1\","
				  "endpoint=\"0\",name=\"local \\\"llama\\\"\"} 2\n"));
}

Test(top, json_is_one_valid_object_per_line)
{
	char *p = NULL;
	size_t n = 0;
	FILE *f;
	jsmn_parser jp;
	jsmntok_t tok[2048];
	int nt;

	set_rings();
	set_unit(TPO_STAGE_POST, 1, 777, TPO_UNIT_RUNNING, 0);
	set_unit(TPO_STAGE_RAG, 0, 0, TPO_UNIT_OFF, 0);
	tpo_stats_ep_claim(&st, 0, 0, "ep\n\"x\"", "http://h/");
	cr_assert_eq(tpo_top_take(&st, NULL, a), 0);
	f = open_memstream(&p, &n);
	tpo_top_print_json(f, a);
	fclose(f);
	cr_assert_gt(n, 2);
	cr_assert_eq(p[n - 1], '\n');
	cr_assert_null(memchr(p, '\n', n - 1), "one line");
	jsmn_init(&jp);
	nt = jsmn_parse(&jp, p, n, tok, 2048);
	cr_assert_gt(nt, 0, "parses: %d", nt);
	cr_assert_eq(tok[0].type, JSMN_OBJECT);
	cr_assert_eq(tok[0].end, (int)n - 1, "one object, nothing after it");
	cr_assert_not_null(strstr(p, "\"stage\":\"rag\",\"lane\":1"));
	/* a unit without a process has no pid, not pid 0 */
	cr_assert_not_null(strstr(p, "\"stage\":\"rag\",\"lane\":0,\"pid\":null,\"state\":\"off\""));
	cr_assert_not_null(strstr(p, "\"stage\":\"post\",\"lane\":1,\"pid\":777,"));
	cr_assert_not_null(strstr(p, "\"queue_depth_bytes\":600,"));
	cr_assert_not_null(strstr(p, "\"name\":\"ep\\u000a\\\"x\\\"\""));
	free(p);
}

static const char *line_value(const char *buf, const char *series)
{
	const char *p = strstr(buf, series);

	cr_assert_not_null(p, "missing %s", series);
	return p + strlen(series);
}

Test(top, metrics_cover_queues_units_front_and_histograms)
{
	static char buf[1 << 17];
	int n;

	set_rings();
	set_unit(TPO_STAGE_INFER, 1, 55, TPO_UNIT_FAILED, 6);
	tpo_stats_count_status(&st, TPO_STAGE_STREAM, 0, 200);
	tpo_stats_count_status(&st, TPO_STAGE_STREAM, 1, 200);
	tpo_stats_count_status(&st, TPO_STAGE_STREAM, 1, 429);
	tpo_stats_count_shed_drop_oldest(&st, TPO_STAGE_STREAM, 1, 4);
	tpo_stats_count_tokens(&st, TPO_STAGE_INFER, 0, 9);
	for (int k = 0; k < 10; k++)
		tpo_stats_service(&st, TPO_STAGE_RAG, 0, 2000000);      /* 2 ms */
	tpo_stats_service(&st, TPO_STAGE_RAG, 0, 200000000);            /* 200 ms */
	n = tpo_metrics_render(&st, buf, sizeof(buf));
	cr_assert_gt(n, 0);
	cr_assert_eq((size_t)n, strlen(buf));
	cr_assert_eq(strncmp(line_value(buf, "tpo_stage_queue_depth_bytes{stage=\"rag\",lane=\"1\"} "),
			     "600\n", 4), 0);
	cr_assert_eq(strncmp(line_value(buf, "tpo_stage_queue_capacity_bytes{stage=\"infer\",lane=\"0\"} "),
			     "262144\n", 7), 0);
	cr_assert_eq(strncmp(line_value(buf, "tpo_stage_restarts_total{stage=\"infer\",lane=\"1\"} "),
			     "6\n", 2), 0);
	cr_assert_eq(strncmp(line_value(buf, "tpo_stage_state{stage=\"infer\",lane=\"1\",state=\"failed\"} "),
			     "1\n", 2), 0);
	cr_assert_eq(strncmp(line_value(buf, "tpo_stage_state{stage=\"infer\",lane=\"1\",state=\"running\"} "),
			     "0\n", 2), 0);
	cr_assert_eq(strncmp(line_value(buf, "tpo_http_responses_total{code=\"200\"} "), "2\n", 2), 0);
	cr_assert_eq(strncmp(line_value(buf, "tpo_http_responses_total{code=\"429\"} "), "1\n", 2), 0);
	cr_assert_eq(strncmp(line_value(buf, "tpo_sheds_total{policy=\"drop_oldest\"} "), "4\n", 2), 0);
	cr_assert_eq(strncmp(line_value(buf, "tpo_stage_tokens_total{stage=\"infer\",lane=\"0\"} "),
			     "9\n", 2), 0);
	cr_assert_eq(strncmp(line_value(buf, "tpo_stage_service_seconds_bucket{stage=\"rag\",lane=\"0\",le=\"0.005\"} "),
			     "10\n", 3), 0);
	cr_assert_eq(strncmp(line_value(buf, "tpo_stage_service_seconds_bucket{stage=\"rag\",lane=\"0\",le=\"+Inf\"} "),
			     "11\n", 3), 0);
	cr_assert_eq(strncmp(line_value(buf, "tpo_stage_service_seconds_count{stage=\"rag\",lane=\"0\"} "),
			     "11\n", 3), 0);
	cr_assert_not_null(strstr(buf, "# TYPE tpo_time_to_first_token_seconds histogram\n"));
	cr_assert_null(strstr(buf, "tpo_stage_service_seconds_count{stage=\"rag\",lane=\"1\"}"),
		       "no series for an empty histogram");
}

Test(top, metrics_too_small_a_buffer_is_enospc)
{
	char small[256];

	cr_assert_eq(tpo_metrics_render(&st, small, sizeof(small)), -ENOSPC);
}

/* Every series of the largest instance: 16 lanes, all histograms, all
 * endpoint slots. */
Test(top, metrics_of_a_full_instance_fit_the_documented_bound)
{
	struct tpo_stats big;
	char name[TPO_NAME_MAX + 1];
	char *buf = malloc(TPO_METRICS_MAX_BYTES);
	int n;

	snprintf(name, sizeof(name), "t%dbig", (int)getpid());
	cr_assert_not_null(buf);
	cr_assert_eq(tpo_stats_create(&big, name, TPO_MAX_LANES), 0);
	for (int s = 0; s < TPO_NSTAGES; s++)
		for (int l = 0; l < TPO_MAX_LANES; l++)
			for (int k = 0; k < TPO_STATS_NHIST; k++)
				tpo_stats_record(&big, s, l, (enum tpo_stats_hist_kind)k, 123456789);
	for (int e = 0; e < TPO_MAX_ENDPOINTS; e++)
		cr_assert_geq(tpo_stats_ep_claim(&big, e % TPO_MAX_LANES, e / TPO_MAX_LANES,
				"an-endpoint-with-a-rather-long-name-for-its-label-0123456789",
				"http://127.0.0.1:1/v1"), 0);
	n = tpo_metrics_render(&big, buf, TPO_METRICS_MAX_BYTES);
	tpo_stats_destroy(&big);
	tpo_seg_sweep(name, 1);
	cr_assert_gt(n, 0, "render: %d", n);
	cr_log_info("full instance exposition: %d bytes", n);
	free(buf);
}
