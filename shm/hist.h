/*
 * hist.h — fixed-size log-linear latency histogram, usable in shared memory.
 *
 * Values are nanoseconds. Every power of two [2^e, 2^(e+1)) for e in
 * TPO_HIST_MIN_EXP..TPO_HIST_MAX_EXP is cut into 64 equal sub-buckets, so a
 * bucket is at most 1/64 of its lower bound wide and reading its midpoint is
 * off by at most 1/128 (0.8 %). Values are clamped to [TPO_HIST_LO,
 * TPO_HIST_HI] (100 ns .. 100 s) before bucketing: anything below lands in
 * the bucket holding 100 ns, anything above in the one holding 100 s. count,
 * sum, min and max are kept exactly (unclamped), and quantiles are clamped
 * to [min, max], so extremes read back exactly.
 *
 * Layout of struct tpo_hist (15936 bytes, 64-byte multiple):
 *
 *   offset  size        field
 *   0       8           count     samples recorded
 *   8       8           sum       of the samples, ns
 *   16      8           min       smallest sample (meaningless if count == 0)
 *   24      8           max       largest sample
 *   32      32          reserved
 *   64      8 * 1984    bucket[i] samples in [tpo_hist_bucket_lo(i),
 *                                  tpo_hist_bucket_hi(i))
 *
 * Concurrency: ONE writer (the owning process) records with relaxed atomic
 * loads and stores (no read-modify-write instruction: nobody else writes).
 * Any number of readers, in any process and on read-only mappings, read
 * concurrently with relaxed atomic loads: no 64-bit value is ever torn, but
 * a read is not a snapshot (count may run ahead of or behind the buckets by
 * the samples recorded during the read). Quantiles and count_le therefore
 * use the bucket totals they read, never the count field. A zeroed
 * struct tpo_hist is a valid empty histogram.
 */
#ifndef TPO_HIST_H
#define TPO_HIST_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define TPO_HIST_SUB_BITS  6
#define TPO_HIST_SUB       (1 << TPO_HIST_SUB_BITS)   /* sub-buckets per 2^e */
#define TPO_HIST_MIN_EXP   6                          /* 2^6 = 64 <= 100 */
#define TPO_HIST_MAX_EXP   36                         /* 2^36 <= 1e11 < 2^37 */
#define TPO_HIST_NBUCKETS  ((TPO_HIST_MAX_EXP - TPO_HIST_MIN_EXP + 1) * TPO_HIST_SUB)
#define TPO_HIST_LO        100ull                     /* 100 ns */
#define TPO_HIST_HI        100000000000ull            /* 100 s */

struct tpo_hist {
	_Atomic uint64_t count;
	_Atomic uint64_t sum;
	_Atomic uint64_t min;
	_Atomic uint64_t max;
	uint64_t         reserved[4];
	_Atomic uint64_t bucket[TPO_HIST_NBUCKETS];
};
_Static_assert(TPO_HIST_NBUCKETS == 1984, "hist buckets");
_Static_assert(sizeof(struct tpo_hist) == 64 + 8 * TPO_HIST_NBUCKETS, "hist size");
_Static_assert(sizeof(struct tpo_hist) % 64 == 0, "hist cache lines");
_Static_assert(offsetof(struct tpo_hist, sum) == 8, "hist sum");
_Static_assert(offsetof(struct tpo_hist, min) == 16, "hist min");
_Static_assert(offsetof(struct tpo_hist, max) == 24, "hist max");
_Static_assert(offsetof(struct tpo_hist, bucket) == 64, "hist buckets");
_Static_assert(TPO_HIST_HI >> TPO_HIST_MAX_EXP == 1, "HI in the last power");
_Static_assert(TPO_HIST_LO >> TPO_HIST_MIN_EXP == 1, "LO in the first power");

/* Empties h. Writer only; zeroed memory is already empty. */
void tpo_hist_reset(struct tpo_hist *h);

/* Adds one sample of ns nanoseconds. Writer only; lock-free, no syscall. */
void tpo_hist_record(struct tpo_hist *h, uint64_t ns);

/*
 * Adds src's samples to dst (counts, sum, min, max). dst must be written by
 * the caller only (typically a private struct tpo_hist, e.g. on the heap:
 * it is ~16 KB); src may be live in shared memory.
 */
void tpo_hist_merge(struct tpo_hist *dst, const struct tpo_hist *src);

/*
 * Value at quantile q (0 <= q <= 1): the midpoint of the bucket holding the
 * sample of rank ceil(q * n) (at least 1), clamped to [min, max]; ranks 1
 * and n give min and max exactly. 0 when the
 * histogram is empty. tpo_hist_quantiles() reads n quantiles in one pass;
 * q[] must be ascending.
 */
uint64_t tpo_hist_quantile(const struct tpo_hist *h, double q);
void tpo_hist_quantiles(const struct tpo_hist *h, const double *q, uint64_t *out,
			int n);

/*
 * Samples <= ns, at bucket granularity: every sample in ns's bucket counts
 * (so the answer may include samples up to one bucket width above ns), but
 * ns < min gives 0 and ns >= max gives every sample. For Prometheus
 * histogram "le" boundaries.
 */
uint64_t tpo_hist_count_le(const struct tpo_hist *h, uint64_t ns);

/* Bucket geometry: index of the bucket holding ns (after clamping), and a
 * bucket's bounds [lo, hi). */
int tpo_hist_bucket_of(uint64_t ns);
uint64_t tpo_hist_bucket_lo(int i);
uint64_t tpo_hist_bucket_hi(int i);

static inline uint64_t tpo_hist_count(const struct tpo_hist *h)
{ return atomic_load_explicit(&h->count, memory_order_relaxed); }
static inline uint64_t tpo_hist_sum(const struct tpo_hist *h)
{ return atomic_load_explicit(&h->sum, memory_order_relaxed); }
/* min and max are 0 for an empty histogram. */
uint64_t tpo_hist_min(const struct tpo_hist *h);
uint64_t tpo_hist_max(const struct tpo_hist *h);

#endif
