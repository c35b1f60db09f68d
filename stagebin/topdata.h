/*
 * topdata.h — what tpo-top shows: a snapshot of an instance's stats segment
 * arranged by stage × lane (queues mapped to the stage that consumes them),
 * rates from two snapshots, sorting, and the two plain outputs (the
 * `--once` table and the `--json` object). The ncurses screen lives in
 * tools/tpo-top.c; everything here is testable without a terminal.
 */
#ifndef TPO_TOPDATA_H
#define TPO_TOPDATA_H

#include <stdint.h>
#include <stdio.h>

#include "shm/stats.h"

/* One stage process slot (stage × lane). */
struct tpo_top_unit {
	uint32_t stage, lane;
	int      ok;            /* p is valid: this refresh's copy, or the last
				   one if the slot was busy (stale = 1) */
	int      stale;
	struct tpo_proc_snapshot p;
	uint64_t q_depth;       /* bytes queued in the unit's input rings */
	uint64_t q_cap;         /* their summed capacity */
	uint32_t q_rings;
	/* Latencies (ns) since the instance started, 0 if no sample. */
	uint64_t svc_p50, svc_p95, svc_p99, qwait_p99, ttft_p99;
	/* Per second over the interval since the previous snapshot. */
	double   in_s, out_s, tokens_s, errors_s, sheds_s;
};

struct tpo_top_snap {
	uint64_t mono_ns;       /* CLOCK_MONOTONIC when taken */
	uint64_t real_ns;       /* CLOCK_REALTIME when taken */
	struct tpo_stats_info info;
	uint32_t nlanes;        /* info.nlanes, clamped to 1..TPO_MAX_LANES */
	struct tpo_top_unit unit[TPO_NSTAGES][TPO_MAX_LANES];
	uint32_t nep;
	struct tpo_ep_snapshot ep[TPO_MAX_ENDPOINTS];
	uint64_t restarts;      /* every unit's, summed */
	int      have_rates;    /* the rates below and in units are set */
	double   interval_s;
	/* Instance: requests in and out at the front, tokens generated
	 * (infer), sheds (both policies) and errors (timeouts included) as the
	 * front answered them. */
	double   in_s, out_s, tokens_s, sheds_s, errors_s;
};

/* Sort keys, in the order the `s` key cycles through them. */
enum tpo_top_sort {
	TPO_TOP_SORT_UNIT = 0,  /* stage, then lane (pipeline order) */
	TPO_TOP_SORT_RESTARTS,
	TPO_TOP_SORT_QUEUE,
	TPO_TOP_SORT_IN,
	TPO_TOP_SORT_OUT,
	TPO_TOP_SORT_P99,
	TPO_TOP_NSORT
};

/*
 * Copies the instance's state into out (a caller-owned struct, ~40 KB:
 * keep it off small stacks). prev, if not NULL, is the previous snapshot
 * of the same instance: a slot whose seqlock stays busy keeps prev's copy
 * (marked stale), and rates are computed against it. 0 or -EAGAIN (the
 * instance header could not be read).
 */
int tpo_top_take(const struct tpo_stats *st, const struct tpo_top_snap *prev,
		 struct tpo_top_snap *out);

/* Sets the rates of cur from the counter deltas since prev (same
 * instance, taken earlier). A counter that went backwards counts as 0. */
void tpo_top_rates(struct tpo_top_snap *cur, const struct tpo_top_snap *prev);

/* Fills idx with the units to show (lane filter: -1 all, else that lane),
 * ordered by key (descending for the numeric keys, ties in pipeline order).
 * Returns how many; idx needs TPO_NSTAGES * TPO_MAX_LANES entries, each
 * stage * TPO_MAX_LANES + lane. */
int tpo_top_order(const struct tpo_top_snap *s, enum tpo_top_sort key, int lane,
		  int *idx);

const char *tpo_top_sort_name(enum tpo_top_sort key);

/* Human formats into buf (>= 8 bytes): "12.3K", "1.0M"; "850us", "12ms",
 * "1.2s", "-" for 0; rates "0", "12.5", "1.2K". Return buf. */
char *tpo_top_fmt_bytes(char *buf, size_t len, uint64_t v);
char *tpo_top_fmt_ns(char *buf, size_t len, uint64_t ns);
char *tpo_top_fmt_rate(char *buf, size_t len, double v);

/* The `--once` table: plain text, no escape codes, every column. */
void tpo_top_print_table(FILE *f, const struct tpo_top_snap *s, enum tpo_top_sort key,
			 int lane);

/* One JSON object on one line (the `--json` output), newline-terminated. */
void tpo_top_print_json(FILE *f, const struct tpo_top_snap *s);

#endif
