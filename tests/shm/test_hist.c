/*
 * test_hist.c — log-linear histogram (shm/hist.h): bucket geometry, the
 * quantile error bound against exact quantiles, extremes, merge, count_le.
 */
#include "shm/hist.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rnd(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

/* Uniform in [0, 1). */
static double unit(uint64_t *s)
{
	return (double)(rnd(s) >> 11) / 9007199254740992.0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static struct tpo_hist *hist_new(void)
{
	struct tpo_hist *h = calloc(1, sizeof(*h));

	cr_assert_not_null(h);
	return h;
}

/* Same rank rule as tpo_hist_quantile: the ceil(q * n)-th smallest. */
static uint64_t exact_q(const uint64_t *sorted, size_t n, double q)
{
	uint64_t rank = (uint64_t)ceil(q * (double)n);

	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return sorted[rank - 1];
}

static void check_quantiles(uint64_t *v, size_t n, const char *what)
{
	static const double qs[] = { 0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95,
				     0.99, 0.999, 1 };
	const int nq = (int)(sizeof(qs) / sizeof(qs[0]));
	struct tpo_hist *h = hist_new();
	uint64_t got[sizeof(qs) / sizeof(qs[0])];

	for (size_t i = 0; i < n; i++)
		tpo_hist_record(h, v[i]);
	qsort(v, n, sizeof(v[0]), cmp_u64);
	cr_assert_eq(tpo_hist_count(h), n);
	tpo_hist_quantiles(h, qs, got, nq);
	for (int k = 0; k < nq; k++) {
		uint64_t want = exact_q(v, n, qs[k]);
		double err = fabs((double)got[k] - (double)want) / (double)want;
		cr_assert_leq(err, 0.025, "%s: q=%g got %llu want %llu (err %.4f)", what,
			      qs[k], (unsigned long long)got[k], (unsigned long long)want, err);
		cr_assert_eq(tpo_hist_quantile(h, qs[k]), got[k], "one-pass = single");
	}
	free(h);
}

Test(hist, geometry)
{
	cr_assert_eq(tpo_hist_bucket_of(0), tpo_hist_bucket_of(TPO_HIST_LO));
	cr_assert_eq(tpo_hist_bucket_of(1), tpo_hist_bucket_of(TPO_HIST_LO));
	cr_assert_eq(tpo_hist_bucket_of(UINT64_MAX), tpo_hist_bucket_of(TPO_HIST_HI));
	cr_assert_lt(tpo_hist_bucket_of(TPO_HIST_HI), TPO_HIST_NBUCKETS);
	cr_assert_geq(tpo_hist_bucket_of(0), 0);
	cr_assert_eq(tpo_hist_bucket_lo(tpo_hist_bucket_of(TPO_HIST_LO)), 100);
	for (int i = 0; i + 1 < TPO_HIST_NBUCKETS; i++) {
		uint64_t lo = tpo_hist_bucket_lo(i), hi = tpo_hist_bucket_hi(i);
		cr_assert_eq(hi, tpo_hist_bucket_lo(i + 1), "contiguous at %d", i);
		cr_assert_leq((double)(hi - lo) / (double)lo, 1.0 / 64 + 1e-12, "width %d", i);
	}
	uint64_t s = 42;
	for (int k = 0; k < 100000; k++) {
		uint64_t v = TPO_HIST_LO + rnd(&s) % (TPO_HIST_HI - TPO_HIST_LO + 1);
		int i = tpo_hist_bucket_of(v);
		cr_assert(tpo_hist_bucket_lo(i) <= v && v < tpo_hist_bucket_hi(i),
			  "%llu in bucket %d", (unsigned long long)v, i);
	}
}

Test(hist, error_bound_log_uniform)
{
	size_t n = 200000;
	uint64_t *v = malloc(n * sizeof(*v)), s = 7;

	cr_assert_not_null(v);
	/* 100 ns .. 100 s, uniform in the logarithm. */
	for (size_t i = 0; i < n; i++)
		v[i] = (uint64_t)(100.0 * pow(1e9, unit(&s)));
	check_quantiles(v, n, "log-uniform");
	free(v);
}

Test(hist, error_bound_narrow_and_heavy_tail)
{
	size_t n = 100000;
	uint64_t *v = malloc(n * sizeof(*v)), s = 99;

	cr_assert_not_null(v);
	/* Tight cluster around 1 ms: many samples share few buckets. */
	for (size_t i = 0; i < n; i++)
		v[i] = 1000000 + rnd(&s) % 20000;
	check_quantiles(v, n, "narrow");
	/* Pareto-like tail from 2 us. */
	for (size_t i = 0; i < n; i++)
		v[i] = (uint64_t)(2000.0 / pow(1.0 - unit(&s), 1.0 / 1.5));
	for (size_t i = 0; i < n; i++)
		if (v[i] > TPO_HIST_HI)
			v[i] = TPO_HIST_HI;
	check_quantiles(v, n, "pareto");
	/* Small exact values: buckets are 1 ns wide below 128 ns. */
	for (size_t i = 0; i < n; i++)
		v[i] = 100 + rnd(&s) % 28;
	check_quantiles(v, n, "sub-128ns");
	free(v);
}

Test(hist, extremes)
{
	static const uint64_t v[] = { 0, 1, 100, 100000000000ull, 1000000000000ull };
	struct tpo_hist *h = hist_new();
	uint64_t sum = 0;

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		tpo_hist_record(h, v[i]);
		sum += v[i];
	}
	cr_assert_eq(tpo_hist_count(h), 5);
	cr_assert_eq(tpo_hist_sum(h), sum);
	cr_assert_eq(tpo_hist_min(h), 0);
	cr_assert_eq(tpo_hist_max(h), 1000000000000ull);
	cr_assert_eq(tpo_hist_quantile(h, 0), 0, "min is exact");
	cr_assert_eq(tpo_hist_quantile(h, 1), 1000000000000ull, "max is exact");
	/* 0, 1, 100 share the first bucket; the 100 s one is clamped too. */
	cr_assert_eq(h->bucket[tpo_hist_bucket_of(100)], 3);
	cr_assert_eq(h->bucket[tpo_hist_bucket_of(TPO_HIST_HI)], 2);
	cr_assert_eq(tpo_hist_count_le(h, 0), 3, "first bucket holds 0, 1, 100");
	cr_assert_eq(tpo_hist_count_le(h, 1000000000000ull), 5);
	cr_assert_eq(tpo_hist_count_le(h, 50000000000ull), 3);
	free(h);
}

Test(hist, empty)
{
	struct tpo_hist *h = hist_new();

	cr_assert_eq(tpo_hist_count(h), 0);
	cr_assert_eq(tpo_hist_quantile(h, 0.5), 0);
	cr_assert_eq(tpo_hist_count_le(h, UINT64_MAX), 0);
	cr_assert_eq(tpo_hist_min(h), 0);
	cr_assert_eq(tpo_hist_max(h), 0);
	tpo_hist_record(h, 5000);
	cr_assert_eq(tpo_hist_quantile(h, 0.5), 5000);
	tpo_hist_reset(h);
	cr_assert_eq(tpo_hist_count(h), 0);
	cr_assert_eq(tpo_hist_count_le(h, UINT64_MAX), 0);
	free(h);
}

Test(hist, merge)
{
	struct tpo_hist *a = hist_new(), *b = hist_new(), *all = hist_new(),
			*m = hist_new();
	uint64_t s = 3;

	for (int i = 0; i < 50000; i++) {
		uint64_t v = (uint64_t)(1000.0 * pow(1e6, unit(&s)));
		tpo_hist_record(i % 3 ? a : b, v + (i % 3 ? 0 : 7777));
		tpo_hist_record(all, v + (i % 3 ? 0 : 7777));
	}
	tpo_hist_merge(m, a);     /* into an empty one */
	tpo_hist_merge(m, b);
	cr_assert_eq(tpo_hist_count(m), tpo_hist_count(all));
	cr_assert_eq(tpo_hist_sum(m), tpo_hist_sum(all));
	cr_assert_eq(tpo_hist_min(m), tpo_hist_min(all));
	cr_assert_eq(tpo_hist_max(m), tpo_hist_max(all));
	cr_assert_eq(memcmp(m->bucket, all->bucket, sizeof(m->bucket)), 0);
	cr_assert_eq(tpo_hist_quantile(m, 0.99), tpo_hist_quantile(all, 0.99));
	/* Merging an empty histogram changes nothing. */
	tpo_hist_reset(b);
	tpo_hist_merge(m, b);
	cr_assert_eq(tpo_hist_count(m), tpo_hist_count(all));
	cr_assert_eq(tpo_hist_min(m), tpo_hist_min(all));
	free(a);
	free(b);
	free(all);
	free(m);
}

Test(hist, count_le)
{
	size_t n = 50000;
	uint64_t *v = malloc(n * sizeof(*v)), s = 11;
	struct tpo_hist *h = hist_new();
	static const uint64_t le[] = { 1000, 5000, 10000, 50000, 100000, 1000000,
				       10000000, 100000000, 1000000000 };

	cr_assert_not_null(v);
	for (size_t i = 0; i < n; i++) {
		v[i] = (uint64_t)(500.0 * pow(1e6, unit(&s)));
		tpo_hist_record(h, v[i]);
	}
	qsort(v, n, sizeof(v[0]), cmp_u64);
	cr_assert_eq(tpo_hist_count_le(h, v[0] - 1), 0);
	cr_assert_eq(tpo_hist_count_le(h, v[n - 1]), n);
	for (size_t k = 0; k < sizeof(le) / sizeof(le[0]); k++) {
		uint64_t top = tpo_hist_bucket_hi(tpo_hist_bucket_of(le[k])) - 1;
		size_t lo_n = 0, hi_n = 0;
		while (lo_n < n && v[lo_n] <= le[k])
			lo_n++;
		while (hi_n < n && v[hi_n] <= top)
			hi_n++;
		uint64_t c = tpo_hist_count_le(h, le[k]);
		cr_assert(c >= lo_n && c <= hi_n, "le %llu: %llu not in [%zu, %zu]",
			  (unsigned long long)le[k], (unsigned long long)c, lo_n, hi_n);
		if (k)
			cr_assert_geq(c, tpo_hist_count_le(h, le[k - 1]), "cumulative");
	}
	free(v);
	free(h);
}
