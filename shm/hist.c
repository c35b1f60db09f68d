/*
 * hist.c — log-linear latency histogram (see hist.h).
 *
 * The writer never uses read-modify-write instructions: it is the only
 * writer, so a relaxed load followed by a relaxed store is an increment that
 * readers see whole.
 */
#include "shm/hist.h"

#include <math.h>

#define LD(p)     atomic_load_explicit((p), memory_order_relaxed)
#define ST(p, v)  atomic_store_explicit((p), (v), memory_order_relaxed)

int tpo_hist_bucket_of(uint64_t ns)
{
	int e;
	uint64_t sub;

	if (ns < TPO_HIST_LO)
		ns = TPO_HIST_LO;
	if (ns > TPO_HIST_HI)
		ns = TPO_HIST_HI;
	e = 63 - __builtin_clzll(ns);
	sub = (ns >> (e - TPO_HIST_SUB_BITS)) - TPO_HIST_SUB;
	return (e - TPO_HIST_MIN_EXP) * TPO_HIST_SUB + (int)sub;
}

uint64_t tpo_hist_bucket_lo(int i)
{
	int e = i / TPO_HIST_SUB + TPO_HIST_MIN_EXP;
	uint64_t sub = (uint64_t)(i % TPO_HIST_SUB);

	return (TPO_HIST_SUB + sub) << (e - TPO_HIST_SUB_BITS);
}

uint64_t tpo_hist_bucket_hi(int i)
{
	int e = i / TPO_HIST_SUB + TPO_HIST_MIN_EXP;

	return tpo_hist_bucket_lo(i) + (1ull << (e - TPO_HIST_SUB_BITS));
}

static uint64_t bucket_mid(int i)
{
	int e = i / TPO_HIST_SUB + TPO_HIST_MIN_EXP;

	return tpo_hist_bucket_lo(i) + ((1ull << (e - TPO_HIST_SUB_BITS)) >> 1);
}

void tpo_hist_reset(struct tpo_hist *h)
{
	ST(&h->count, 0);
	ST(&h->sum, 0);
	ST(&h->min, 0);
	ST(&h->max, 0);
	for (int i = 0; i < TPO_HIST_NBUCKETS; i++)
		ST(&h->bucket[i], 0);
}

void tpo_hist_record(struct tpo_hist *h, uint64_t ns)
{
	_Atomic uint64_t *b = &h->bucket[tpo_hist_bucket_of(ns)];
	uint64_t n = LD(&h->count);

	ST(b, LD(b) + 1);
	ST(&h->sum, LD(&h->sum) + ns);
	if (n == 0 || ns < LD(&h->min))
		ST(&h->min, ns);
	if (n == 0 || ns > LD(&h->max))
		ST(&h->max, ns);
	ST(&h->count, n + 1);
}

uint64_t tpo_hist_min(const struct tpo_hist *h)
{
	return LD(&h->count) ? LD(&h->min) : 0;
}

uint64_t tpo_hist_max(const struct tpo_hist *h)
{
	return LD(&h->count) ? LD(&h->max) : 0;
}

void tpo_hist_merge(struct tpo_hist *dst, const struct tpo_hist *src)
{
	uint64_t sn = LD(&src->count), dn = LD(&dst->count);
	uint64_t smin = LD(&src->min), smax = LD(&src->max);

	for (int i = 0; i < TPO_HIST_NBUCKETS; i++) {
		uint64_t v = LD(&src->bucket[i]);
		if (v)
			ST(&dst->bucket[i], LD(&dst->bucket[i]) + v);
	}
	if (sn == 0)
		return;
	ST(&dst->sum, LD(&dst->sum) + LD(&src->sum));
	if (dn == 0 || smin < LD(&dst->min))
		ST(&dst->min, smin);
	if (dn == 0 || smax > LD(&dst->max))
		ST(&dst->max, smax);
	ST(&dst->count, dn + sn);
}

void tpo_hist_quantiles(const struct tpo_hist *h, const double *q, uint64_t *out,
			int n)
{
	uint64_t b[TPO_HIST_NBUCKETS], total = 0, cum = 0, lo, hi;
	int i = 0, k;

	for (k = 0; k < TPO_HIST_NBUCKETS; k++)
		total += b[k] = LD(&h->bucket[k]);
	if (total == 0) {
		for (k = 0; k < n; k++)
			out[k] = 0;
		return;
	}
	lo = LD(&h->min);
	hi = LD(&h->max);
	for (k = 0; k < n; k++) {
		double qq = q[k] < 0 ? 0 : q[k] > 1 ? 1 : q[k];
		uint64_t rank = (uint64_t)ceil(qq * (double)total), v;

		if (rank < 1)
			rank = 1;
		if (rank > total)
			rank = total;
		while (cum + b[i] < rank)
			cum += b[i++];
		/* The smallest and largest samples are known exactly. */
		v = rank == 1 ? lo : rank == total ? hi : bucket_mid(i);
		/* min/max may lag the buckets by a sample a concurrent writer is
		 * recording; they still bound every earlier sample. */
		if (v < lo)
			v = lo;
		if (v > hi && hi >= lo)
			v = hi;
		out[k] = v;
	}
}

uint64_t tpo_hist_quantile(const struct tpo_hist *h, double q)
{
	uint64_t v;

	tpo_hist_quantiles(h, &q, &v, 1);
	return v;
}

uint64_t tpo_hist_count_le(const struct tpo_hist *h, uint64_t ns)
{
	uint64_t total = 0;
	int last = TPO_HIST_NBUCKETS - 1;

	if (LD(&h->count) == 0 || ns < LD(&h->min))
		return 0;
	if (ns < LD(&h->max))
		last = tpo_hist_bucket_of(ns);
	for (int i = 0; i <= last; i++)
		total += LD(&h->bucket[i]);
	return total;
}
