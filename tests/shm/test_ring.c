/*
 * test_ring.c — single-process tests of the SPSC record ring (shm/ring.h):
 * boundaries, wrap-around at every offset, 64-bit position wrap, corruption
 * detection, crash semantics of reopening either side, and doorbells.
 */
#include "shm/ring.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

/* Exactly footprint bytes, so ASan flags any read past the data area. */
static void *ring_mem(uint64_t cap)
{
	void *m = aligned_alloc(64, tpo_ring_footprint(cap));

	cr_assert_not_null(m);
	memset(m, 0xa5, tpo_ring_footprint(cap));
	return m;
}

static uint8_t pat(uint64_t seq, uint32_t i)
{
	return (uint8_t)(seq * 131 + i * 7 + (i >> 8));
}

/* Reserve + fill + commit one record; returns tpo_ring_reserve's error. */
static int put(struct tpo_ring *p, uint64_t seq, uint32_t len)
{
	struct tpo_rec *h;
	int err = tpo_ring_reserve(p, len, &h);

	if (err < 0)
		return err;
	cr_assert_eq(h->len, len);
	cr_assert_eq(h->type, 0);
	cr_assert_eq(h->req_id, 0);
	h->type = (uint16_t)(TPO_REC_USER + seq % 7);
	h->req_id = seq;
	h->seq = (uint32_t)seq;
	for (uint32_t i = 0; i < len; i++)
		((uint8_t *)tpo_rec_data(h))[i] = pat(seq, i);
	tpo_ring_commit(p);
	return 0;
}

static void check_rec(const struct tpo_rec *h, uint64_t seq, uint32_t len)
{
	const uint8_t *d = tpo_rec_data(h);

	cr_assert_eq(h->len, len, "seq %llu: len %u, want %u",
		     (unsigned long long)seq, h->len, len);
	cr_assert_eq(h->type, TPO_REC_USER + seq % 7);
	cr_assert_eq(h->req_id, seq);
	cr_assert_eq(h->seq, (uint32_t)seq);
	for (uint32_t i = 0; i < len; i++)
		cr_assert_eq(d[i], pat(seq, i), "seq %llu byte %u",
			     (unsigned long long)seq, i);
}

/* Peek, verify, advance, release one record. */
static void get(struct tpo_ring *c, uint64_t seq, uint32_t len)
{
	const struct tpo_rec *h;

	cr_assert_eq(tpo_ring_peek(c, &h), 0, "seq %llu missing", (unsigned long long)seq);
	check_rec(h, seq, len);
	tpo_ring_advance(c, h);
	tpo_ring_release(c);
}

static void open_both(struct tpo_ring *p, struct tpo_ring *c, void *m)
{
	cr_assert_eq(tpo_ring_open_producer(p, m, -1), 0);
	cr_assert_eq(tpo_ring_open_consumer(c, m, -1), 0);
}

Test(ring, init_rejects_bad_geometry)
{
	void *m = ring_mem(1024);
	struct tpo_ring r;

	cr_assert_eq(tpo_ring_init(m, 1000, 64, 0, 0), -EINVAL);       /* not pow2 */
	cr_assert_eq(tpo_ring_init(m, 1024, 0, 0, 0), -EINVAL);        /* max_len 0 */
	cr_assert_eq(tpo_ring_init(m, 1024, 1024, 0, 0), -EINVAL);     /* too small */
	cr_assert_eq(tpo_ring_init(m, 1024, 64, 0, 4), -EINVAL);       /* start & 7 */
	cr_assert_eq(tpo_ring_init((char *)m + 8, 512, 64, 0, 0), -EINVAL); /* align */
	cr_assert_eq(tpo_ring_open_producer(&r, m, -1), -EPROTO);      /* garbage */
	cr_assert_eq(tpo_ring_init(m, 1024, 256, 3, 0), 0);
	cr_assert_eq(((struct tpo_ring_shm *)m)->id, 3);
	cr_assert_eq(tpo_ring_open_consumer(&r, m, -1), 0);
	free(m);
}

Test(ring, empty)
{
	void *m = ring_mem(1024);
	struct tpo_ring p, c;
	const struct tpo_rec *h, *v[4];

	cr_assert_eq(tpo_ring_init(m, 1024, 256, 0, 0), 0);
	open_both(&p, &c, m);
	cr_assert_eq(tpo_ring_peek(&c, &h), -EAGAIN);
	cr_assert_eq(tpo_ring_peek_batch(&c, v, 4), 0);
	cr_assert_eq(tpo_ring_readable(&c), 0);
	cr_assert_eq(tpo_ring_depth(&p), 0);
	cr_assert_eq(tpo_ring_writable(&p, 256), 1);
	/* A reservation is invisible until committed. */
	struct tpo_rec *w;
	cr_assert_eq(tpo_ring_reserve(&p, 10, &w), 0);
	cr_assert_eq(tpo_ring_peek(&c, &h), -EAGAIN);
	cr_assert_eq(tpo_ring_depth(&p), tpo_rec_size(10));
	free(m);
}

Test(ring, full_then_release_frees)
{
	void *m = ring_mem(1024);
	struct tpo_ring p, c;
	struct tpo_rec *w;
	uint64_t n = 0;

	cr_assert_eq(tpo_ring_init(m, 1024, 256, 0, 0), 0);
	open_both(&p, &c, m);
	/* 24-byte payload: 56-byte records, 18 fit in 1024 (1008 bytes). */
	while (put(&p, n, 24) == 0)
		n++;
	cr_assert_eq(n, 1024 / tpo_rec_size(24));
	cr_assert_eq(tpo_ring_reserve(&p, 1, &w), -EAGAIN);
	cr_assert_eq(tpo_ring_writable(&p, 1), 0);
	/* Read but not released: still full. */
	const struct tpo_rec *h;
	cr_assert_eq(tpo_ring_peek(&c, &h), 0);
	tpo_ring_advance(&c, h);
	cr_assert_eq(tpo_ring_reserve(&p, 1, &w), -EAGAIN);
	tpo_ring_release(&c);
	/* 56 bytes freed at the start, 16 left at the end: a 24-byte record
	 * takes a 16-byte pad plus 56, exactly what is free. */
	cr_assert_eq(put(&p, n, 24), 0);
	cr_assert_eq(tpo_ring_depth(&p), 1024);
	cr_assert_eq(tpo_ring_reserve(&p, 1, &w), -EAGAIN);
	for (uint64_t s = 1; s <= n; s++)
		get(&c, s, 24);
	cr_assert_eq(tpo_ring_peek(&c, &h), -EAGAIN);
	cr_assert_eq(((struct tpo_ring_shm *)m)->cons_records, n + 1);
	cr_assert_eq(((struct tpo_ring_shm *)m)->prod_records, n + 1);
	free(m);
}

Test(ring, exact_fit)
{
	void *m = ring_mem(1024);
	struct tpo_ring p, c;
	struct tpo_rec *w;
	/* 288 * 3 + 160 = 1024 */
	static const uint32_t lens[] = { 256, 256, 256, 128 };

	cr_assert_eq(tpo_ring_init(m, 1024, 256, 0, 0), 0);
	open_both(&p, &c, m);
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < 4; i++)
			cr_assert_eq(put(&p, round * 4 + i, lens[i]), 0);
		cr_assert_eq(tpo_ring_depth(&p), 1024);
		cr_assert_eq(tpo_ring_reserve(&p, 1, &w), -EAGAIN);
		for (int i = 0; i < 4; i++)
			get(&c, round * 4 + i, lens[i]);
		cr_assert_eq(tpo_ring_depth(&p), 0);
	}
	cr_assert_eq(((struct tpo_ring_shm *)m)->hwm, 1024);
	free(m);
}

/*
 * From every 8-byte-aligned start offset, stream records whose sizes force
 * padding records at varying distances from the end, keeping the ring
 * nearly full, and verify every byte.
 */
Test(ring, wrap_at_every_offset)
{
	const uint64_t cap = 1024;
	static const uint32_t lens[] = { 1, 13, 100, 256, 57, 200, 8, 255, 31 };
	void *m = ring_mem(cap);
	struct tpo_ring p, c;
	unsigned pads = 0;

	for (uint64_t start = 0; start < cap; start += 8) {
		uint64_t base = start + 5 * cap * start; /* vary the high bits too */
		uint64_t pushed = 0, popped = 0, bytes = 0;
		unsigned k = (unsigned)(start / 8);

		cr_assert_eq(tpo_ring_init(m, cap, 256, 0, base), 0);
		open_both(&p, &c, m);
		while (bytes < 4 * cap) {
			uint32_t len = lens[(pushed + k) % 9];
			uint64_t off = p.pos & (cap - 1);
			int padded = tpo_rec_size(len) > cap - off;
			struct tpo_rec *w;
			int err = tpo_ring_reserve(&p, len, &w);

			if (err == -EAGAIN) {
				/* Drain half of what is queued. */
				tpo_ring_commit(&p);
				uint64_t stop = popped + (pushed - popped + 1) / 2;
				cr_assert_gt(pushed, popped);
				for (; popped < stop; popped++)
					get(&c, popped, lens[(popped + k) % 9]);
				continue;
			}
			cr_assert_eq(err, 0);
			if (padded) {
				pads++;
				cr_assert_eq((uint8_t *)w, p.data, "record after pad not at 0");
			}
			w->type = (uint16_t)(TPO_REC_USER + pushed % 7);
			w->req_id = pushed;
			w->seq = (uint32_t)pushed;
			for (uint32_t i = 0; i < len; i++)
				((uint8_t *)tpo_rec_data(w))[i] = pat(pushed, i);
			/* Commit every other record: batches straddle the pad. */
			if (pushed & 1)
				tpo_ring_commit(&p);
			pushed++;
			bytes += tpo_rec_size(len);
		}
		tpo_ring_commit(&p);
		for (; popped < pushed; popped++)
			get(&c, popped, lens[(popped + k) % 9]);
		const struct tpo_rec *h;
		cr_assert_eq(tpo_ring_peek(&c, &h), -EAGAIN);
		cr_assert_eq(atomic_load(&((struct tpo_ring_shm *)m)->tail), c.pos);
		cr_assert_eq(c.pos, p.pos);
		cr_assert_eq(c.records, pushed);
	}
	cr_assert_gt(pads, cap / 8, "too few padding records exercised: %u", pads);
	free(m);
}

Test(ring, max_len_round_trip_and_wrap)
{
	const uint32_t max = TPO_RING_MIN_MAX_LEN;
	const uint64_t cap = 4 * 65536;  /* >= 2 * tpo_rec_size(max) */
	void *m = ring_mem(cap);
	struct tpo_ring p, c;
	struct tpo_rec *w;
	static const uint64_t starts[] = { 0, 8, 65536, 4 * 65536 - 8,
		4 * 65536 - 65560, 4 * 65536 - 65568, 4 * 65536 - 65576 };

	for (unsigned s = 0; s < sizeof(starts) / sizeof(starts[0]); s++) {
		cr_assert_eq(tpo_ring_init(m, cap, max, 0, starts[s]), 0);
		open_both(&p, &c, m);
		cr_assert_eq(tpo_ring_reserve(&p, 0, &w), -EINVAL);
		cr_assert_eq(tpo_ring_reserve(&p, max + 1, &w), -EMSGSIZE);
		cr_assert_eq(tpo_ring_reserve(&p, UINT32_MAX, &w), -EMSGSIZE);
		for (uint64_t i = 0; i < 9; i++) {
			uint32_t len = (i % 3 == 2) ? 3 : max;
			cr_assert_eq(put(&p, i, len), 0);
			if (i % 2 == 0)
				cr_assert_eq(put(&p, 1000 + i, max), 0);
			get(&c, i, len);
			if (i % 2 == 0)
				get(&c, 1000 + i, max);
		}
	}
	free(m);
}

Test(ring, push_helper)
{
	void *m = ring_mem(1024);
	struct tpo_ring p, c;
	const struct tpo_rec *h;
	uint64_t t0 = tpo_now_ns();

	cr_assert_eq(tpo_ring_init(m, 1024, 256, 0, 0), 0);
	open_both(&p, &c, m);
	cr_assert_eq(tpo_ring_push(&p, 9, 77, 5, "hello", 5), 0);
	cr_assert_eq(tpo_ring_push(&p, 9, 77, 5, "", 0), -EINVAL);
	cr_assert_eq(tpo_ring_push(&p, 9, 77, 5, "x", 257), -EMSGSIZE);
	cr_assert_eq(tpo_ring_peek(&c, &h), 0);
	cr_assert_eq(h->type, 9);
	cr_assert_eq(h->req_id, 77);
	cr_assert_eq(h->seq, 5);
	cr_assert_eq(h->len, 5);
	cr_assert_geq(h->ts_ns, t0);
	cr_assert_eq(memcmp(tpo_rec_data(h), "hello", 5), 0);
	free(m);
}

Test(ring, positions_wrap_2_64)
{
	const uint64_t cap = 1024;
	const uint64_t start = (UINT64_MAX - 4095) & ~(uint64_t)7;
	void *m = ring_mem(cap);
	struct tpo_ring p, c;
	struct tpo_rec *w;
	uint64_t n = 0, got = 0;

	cr_assert_eq(tpo_ring_init(m, cap, 256, 0, start), 0);
	open_both(&p, &c, m);
	/* Stream 16 KiB through the ring, keeping it nearly full. */
	while (n < 200) {
		uint32_t len = 1 + (uint32_t)(n * 37 % 256);
		int err = put(&p, n, len);

		if (err == -EAGAIN) {
			cr_assert_lt(got, n);
			get(&c, got, 1 + (uint32_t)(got * 37 % 256));
			got++;
			continue;
		}
		cr_assert_eq(err, 0);
		cr_assert_leq(tpo_ring_depth(&p), cap);
		n++;
	}
	for (; got < n; got++)
		get(&c, got, 1 + (uint32_t)(got * 37 % 256));
	cr_assert_lt(c.pos, start, "positions did not wrap past 2^64");
	cr_assert_eq(tpo_ring_reserve(&p, 257, &w), -EMSGSIZE);

	/* A full ring straddling 2^64. */
	cr_assert_eq(tpo_ring_init(m, cap, 256, 0, UINT64_MAX - 519), 0);
	open_both(&p, &c, m);
	for (n = 0; put(&p, n, 24) == 0; n++)
		;
	cr_assert_eq(n, cap / tpo_rec_size(24));
	cr_assert_eq(tpo_ring_depth(&p), cap); /* 18 records and a pad */
	for (got = 0; got < n; got++)
		get(&c, got, 24);
	free(m);
}

/* One committed 64-byte record (len 32) at offset off of a fresh ring. */
static struct tpo_rec *corrupt_setup(void *m, struct tpo_ring *p, struct tpo_ring *c,
				     uint64_t start)
{
	struct tpo_rec *w;

	cr_assert_eq(tpo_ring_init(m, 1024, 256, 0, start), 0);
	open_both(p, c, m);
	cr_assert_eq(put(p, 0, 32), 0);
	w = (struct tpo_rec *)(p->data + (start & 1023));
	cr_assert_eq(w->len, 32);
	return w;
}

/*
 * A producer does not open on positions no ring can have: a head off the
 * 8-byte grid (a padding record written there would run past the data area;
 * fuzz_ring found it) or a head more than the capacity ahead of tail.
 */
Test(ring, producer_refuses_corrupt_positions)
{
	void *m = ring_mem(1024);
	struct tpo_ring_shm *s = m;
	struct tpo_ring p;
	const uint64_t start = 0 - (uint64_t)104;  /* across the 64-bit wrap */

	cr_assert_eq(tpo_ring_init(m, 1024, 256, 0, start), 0);
	cr_assert_eq(tpo_ring_open_producer(&p, m, -1), 0);
	atomic_store(&s->head, start + 1024);      /* full: still a ring */
	cr_assert_eq(tpo_ring_open_producer(&p, m, -1), 0);
	atomic_store(&s->head, start + 1032);
	cr_assert_eq(tpo_ring_open_producer(&p, m, -1), -EBADMSG);
	atomic_store(&s->head, start - 8);         /* behind tail */
	cr_assert_eq(tpo_ring_open_producer(&p, m, -1), -EBADMSG);
	atomic_store(&s->head, start + 1021);
	atomic_store(&s->tail, start + 1021);
	cr_assert_eq(tpo_ring_open_producer(&p, m, -1), -EBADMSG);
	atomic_store(&s->head, start + 1024);
	atomic_store(&s->tail, start + 1024);
	cr_assert_eq(tpo_ring_open_producer(&p, m, -1), 0);
	free(m);
}

Test(ring, corrupt_header_detected)
{
	void *m = ring_mem(1024);
	struct tpo_ring_shm *s = m;
	struct tpo_ring p, c;
	struct tpo_rec *w;
	const struct tpo_rec *h, *v[4];

	w = corrupt_setup(m, &p, &c, 0);
	w->len = 0;
	cr_assert_eq(tpo_ring_peek(&c, &h), -EBADMSG);
	cr_assert_eq(tpo_ring_peek_batch(&c, v, 4), -EBADMSG);

	w = corrupt_setup(m, &p, &c, 0);
	w->len = 257; /* > max_len */
	cr_assert_eq(tpo_ring_peek(&c, &h), -EBADMSG);

	w = corrupt_setup(m, &p, &c, 0);
	w->len = UINT32_MAX;
	cr_assert_eq(tpo_ring_peek(&c, &h), -EBADMSG);

	w = corrupt_setup(m, &p, &c, 0);
	w->len = 33; /* crosses the committed head */
	cr_assert_eq(tpo_ring_peek(&c, &h), -EBADMSG);

	w = corrupt_setup(m, &p, &c, 1024 - 64);
	cr_assert_eq(tpo_ring_peek(&c, &h), 0); /* fine as written */
	w->len = 200;  /* would run off the end of the data area */
	atomic_store(&s->head, 1024 - 64 + 512);
	cr_assert_eq(tpo_ring_peek(&c, &h), -EBADMSG);

	w = corrupt_setup(m, &p, &c, 0);
	w->type = 0;
	cr_assert_eq(tpo_ring_peek(&c, &h), -EBADMSG);

	w = corrupt_setup(m, &p, &c, 0);
	w->type = TPO_REC_TYPE_LIMIT;
	cr_assert_eq(tpo_ring_peek(&c, &h), -EBADMSG);

	w = corrupt_setup(m, &p, &c, 0);
	w->type = UINT16_MAX;
	cr_assert_eq(tpo_ring_peek(&c, &h), -EBADMSG);

	/* A padding record whose length is not "to the end". */
	w = corrupt_setup(m, &p, &c, 0);
	w->type = TPO_REC_PAD;
	cr_assert_eq(tpo_ring_peek(&c, &h), -EBADMSG);
	w->len = 1024; /* right length but longer than what is committed */
	cr_assert_eq(tpo_ring_peek(&c, &h), -EBADMSG);

	/* A padding record at the very end with a too-short length. */
	w = corrupt_setup(m, &p, &c, 1024 - 64);
	w->type = TPO_REC_PAD;
	w->len = 32;
	cr_assert_eq(tpo_ring_peek(&c, &h), -EBADMSG);

	/* Last 8 bytes of the data area: a record header cannot fit there. */
	cr_assert_eq(tpo_ring_init(m, 1024, 256, 0, 1024 - 8), 0);
	open_both(&p, &c, m);
	w = (struct tpo_rec *)(p.data + 1024 - 8);
	w->len = 1;
	w->type = TPO_REC_USER;
	atomic_store(&s->head, 1024 - 8 + 64);
	cr_assert_eq(tpo_ring_peek(&c, &h), -EBADMSG);

	/* Head moved beyond the capacity. */
	w = corrupt_setup(m, &p, &c, 0);
	atomic_store(&s->head, 1024 + 8);
	cr_assert_eq(tpo_ring_peek(&c, &h), -EBADMSG);
	cr_assert_eq(tpo_ring_open_consumer(&c, m, -1), 0);
	atomic_store(&s->head, UINT64_MAX - 7); /* "behind" tail */
	cr_assert_eq(tpo_ring_peek(&c, &h), -EBADMSG);

	/* Head not a record boundary: fewer bytes than any header. */
	cr_assert_eq(tpo_ring_init(m, 1024, 256, 0, 0), 0);
	open_both(&p, &c, m);
	atomic_store(&s->head, 4);
	cr_assert_eq(tpo_ring_peek(&c, &h), -EBADMSG);

	/* A good record, then a corrupt one: the batch stops before it. */
	cr_assert_eq(tpo_ring_init(m, 1024, 256, 0, 0), 0);
	open_both(&p, &c, m);
	cr_assert_eq(put(&p, 0, 32), 0);
	cr_assert_eq(put(&p, 1, 32), 0);
	((struct tpo_rec *)(p.data + 64))->type = 0;
	cr_assert_eq(tpo_ring_peek_batch(&c, v, 4), 1);
	check_rec(v[0], 0, 32);
	cr_assert_eq(tpo_ring_peek_batch(&c, v, 4), -EBADMSG);
	free(m);
}

Test(ring, batch_peek_release)
{
	void *m = ring_mem(1024);
	struct tpo_ring_shm *s = m;
	struct tpo_ring p, c;
	const struct tpo_rec *v[16];
	struct tpo_rec *w;

	cr_assert_eq(tpo_ring_init(m, 1024, 256, 0, 0), 0);
	open_both(&p, &c, m);
	for (int i = 0; i < 10; i++) {
		cr_assert_eq(tpo_ring_reserve(&p, 50, &w), 0);
		w->type = (uint16_t)(TPO_REC_USER + i % 7);
		w->req_id = (uint64_t)i;
		w->seq = (uint32_t)i;
		for (uint32_t j = 0; j < 50; j++)
			((uint8_t *)tpo_rec_data(w))[j] = pat((uint64_t)i, j);
	}
	cr_assert_eq(tpo_ring_peek_batch(&c, v, 16), 0, "visible before commit");
	tpo_ring_commit(&p);
	cr_assert_eq(s->prod_records, 10);
	cr_assert_eq(tpo_ring_peek_batch(&c, v, 4), 4);
	cr_assert_eq(tpo_ring_peek_batch(&c, v + 4, 4), 4);
	cr_assert_eq(tpo_ring_peek_batch(&c, v + 8, 8), 2);
	cr_assert_eq(tpo_ring_peek_batch(&c, v + 10, 6), 0);
	/* All ten stay in place until released. */
	for (int i = 0; i < 10; i++)
		check_rec(v[i], (uint64_t)i, 50);
	cr_assert_eq(tpo_ring_depth(&p), 10 * tpo_rec_size(50));
	cr_assert_eq(s->cons_records, 0);
	tpo_ring_release(&c);
	cr_assert_eq(tpo_ring_depth(&p), 0);
	cr_assert_eq(s->cons_records, 10);
	cr_assert_eq(atomic_load(&s->tail), 10 * tpo_rec_size(50));
	free(m);
}

Test(ring, producer_reopen_forgets_uncommitted)
{
	void *m = ring_mem(1024);
	struct tpo_ring_shm *s = m;
	struct tpo_ring p, p2, c;
	struct tpo_rec *w;
	const struct tpo_rec *h;

	cr_assert_eq(tpo_ring_init(m, 1024, 256, 0, 0), 0);
	open_both(&p, &c, m);
	cr_assert_eq(put(&p, 0, 10), 0);
	get(&c, 0, 10);
	/* Dies between reserve and commit. */
	cr_assert_eq(tpo_ring_reserve(&p, 100, &w), 0);
	w->type = TPO_REC_USER;
	memset(tpo_rec_data(w), 0xee, 100);
	cr_assert_eq(tpo_ring_reserve(&p, 100, &w), 0);
	w->type = TPO_REC_USER;
	cr_assert_eq(tpo_ring_open_producer(&p2, m, -1), 0);
	cr_assert_eq(s->prod_pid, (uint32_t)getpid());
	cr_assert_eq(tpo_ring_peek(&c, &h), -EAGAIN);
	cr_assert_eq(tpo_ring_readable(&c), 0);
	cr_assert_eq(p2.records, 1);
	cr_assert_eq(put(&p2, 1, 20), 0);
	cr_assert_eq(put(&p2, 2, 30), 0);
	get(&c, 1, 20);
	get(&c, 2, 30);
	cr_assert_eq(tpo_ring_peek(&c, &h), -EAGAIN);
	cr_assert_eq(s->prod_records, 3);
	free(m);
}

Test(ring, consumer_reopen_redelivers_unreleased)
{
	void *m = ring_mem(1024);
	struct tpo_ring_shm *s = m;
	struct tpo_ring p, c, c2;
	const struct tpo_rec *v[8], *h;

	cr_assert_eq(tpo_ring_init(m, 1024, 256, 0, 0), 0);
	open_both(&p, &c, m);
	for (int i = 0; i < 6; i++)
		cr_assert_eq(put(&p, (uint64_t)i, 40), 0);
	get(&c, 0, 40);
	get(&c, 1, 40);
	/* Reads three more but dies before releasing them. */
	cr_assert_eq(tpo_ring_peek_batch(&c, v, 3), 3);
	check_rec(v[2], 4, 40);
	cr_assert_eq(tpo_ring_open_consumer(&c2, m, -1), 0);
	cr_assert_eq(s->cons_pid, (uint32_t)getpid());
	cr_assert_eq(c2.records, 2);
	for (int i = 2; i < 6; i++)
		get(&c2, (uint64_t)i, 40);
	cr_assert_eq(tpo_ring_peek(&c2, &h), -EAGAIN);
	cr_assert_eq(s->cons_records, 6);
	free(m);
}

Test(ring, doorbell_only_when_sleeping)
{
	void *m = ring_mem(1024);
	struct tpo_ring_shm *s = m;
	struct tpo_ring p, c;
	struct tpo_rec *w;
	const struct tpo_rec *h;
	struct tpo_ring *set[1] = { &c };
	int bell = tpo_bell_open();

	cr_assert_geq(bell, 0);
	cr_assert_eq(tpo_ring_init(m, 1024, 256, 0, 0), 0);
	cr_assert_eq(tpo_ring_open_producer(&p, m, bell), 0);
	cr_assert_eq(tpo_ring_open_consumer(&c, m, -1), 0);
	cr_assert_eq(tpo_bell_drain(bell), 0);

	cr_assert_eq(tpo_ring_reserve(&p, 8, &w), 0);
	w->type = TPO_REC_USER;
	cr_assert_eq(tpo_ring_commit(&p), 0, "rang a consumer that is awake");
	cr_assert_eq(tpo_bell_drain(bell), 0);

	/* Readable: sleep_begin declines and withdraws the flag. */
	cr_assert_eq(tpo_ring_sleep_begin(set, 1), 1);
	cr_assert_eq(s->cons_sleeping, 0);
	cr_assert_eq(tpo_ring_peek(&c, &h), 0);
	tpo_ring_advance(&c, h);
	cr_assert_eq(tpo_ring_release(&c), 0); /* producer not waiting */

	cr_assert_eq(tpo_ring_sleep_begin(set, 1), 0);
	cr_assert_eq(s->cons_sleeping, 1);
	cr_assert_eq(tpo_ring_reserve(&p, 8, &w), 0);
	w->type = TPO_REC_USER;
	cr_assert_eq(tpo_ring_commit(&p), 1, "did not ring a sleeping consumer");
	cr_assert_eq(s->cons_sleeping, TPO_SLEEP_RUNG);
	/* Once per sleep: a second commit before the consumer runs does not. */
	cr_assert_eq(tpo_ring_reserve(&p, 8, &w), 0);
	w->type = TPO_REC_USER;
	cr_assert_eq(tpo_ring_commit(&p), 0, "rang twice in one sleep");
	cr_assert_eq(tpo_bell_drain(bell), 1);
	cr_assert_eq(tpo_bell_drain(bell), 0);
	tpo_ring_sleep_end(set, 1);
	cr_assert_eq(s->cons_sleeping, 0);
	cr_assert_eq(tpo_ring_reserve(&p, 8, &w), 0);
	w->type = TPO_REC_USER;
	cr_assert_eq(tpo_ring_commit(&p), 0);
	cr_assert_eq(tpo_bell_drain(bell), 0);

	/* A sleeping consumer but no bell (-1): never rings. */
	struct tpo_ring p2;
	cr_assert_eq(tpo_ring_open_producer(&p2, m, -1), 0);
	cr_assert_eq(tpo_ring_peek_batch(&c, &h, 1), 1);
	cr_assert_eq(tpo_ring_peek_batch(&c, &h, 1), 1);
	cr_assert_eq(tpo_ring_peek_batch(&c, &h, 1), 1);
	tpo_ring_release(&c);
	cr_assert_eq(tpo_ring_sleep_begin(set, 1), 0);
	cr_assert_eq(tpo_ring_reserve(&p2, 8, &w), 0);
	w->type = TPO_REC_USER;
	cr_assert_eq(tpo_ring_commit(&p2), 0);
	tpo_ring_sleep_end(set, 1);
	close(bell);
	free(m);
}

Test(ring, wait_timeout)
{
	void *m = ring_mem(1024);
	struct tpo_ring_shm *s = m;
	struct tpo_ring c;
	struct tpo_ring *set[1] = { &c };
	int bell = tpo_bell_open();

	cr_assert_geq(bell, 0);
	cr_assert_eq(tpo_ring_init(m, 1024, 256, 0, 0), 0);
	cr_assert_eq(tpo_ring_open_consumer(&c, m, -1), 0);
	cr_assert_eq(tpo_ring_wait(set, 1, bell, 0, 20), 0);
	cr_assert_eq(tpo_ring_wait(set, 1, bell, 100000, 0), 0);
	cr_assert_eq(s->cons_sleeping, 0, "flag left set after the wait");
	/* A kick before the wait ends it at once and reports nothing. */
	tpo_ring_kick(set, 1);
	uint64_t t0 = tpo_now_ns();
	cr_assert_eq(tpo_ring_wait(set, 1, bell, 0, 20000), 0);
	cr_assert_lt(tpo_now_ns() - t0, 10000000000ull, "the kick did not end the wait");
	cr_assert_eq(s->cons_sleeping, 0);
	close(bell);
	free(m);
}

static struct tpo_ring *kick_set[1];
static void kick_on_alarm(int sig)
{
	(void)sig;
	tpo_ring_kick(kick_set, 1);
}

/* A signal handler's kick ends a wait asleep on the ring's flag (how a
 * stage's SIGTERM handler wakes it). */
Test(ring, kick_from_signal_handler)
{
	void *m = ring_mem(1024);
	struct tpo_ring_shm *s = m;
	struct tpo_ring c;
	struct sigaction sa = { .sa_handler = kick_on_alarm };
	struct itimerval it = { .it_value = { .tv_usec = 20000 } };
	uint64_t t0;

	cr_assert_eq(tpo_ring_init(m, 1024, 256, 0, 0), 0);
	cr_assert_eq(tpo_ring_open_consumer(&c, m, -1), 0);
	kick_set[0] = &c;
	cr_assert_eq(sigaction(SIGALRM, &sa, NULL), 0);
	cr_assert_eq(setitimer(ITIMER_REAL, &it, NULL), 0);
	t0 = tpo_now_ns();
	cr_assert_eq(tpo_ring_wait(kick_set, 1, -1, 0, 20000), 0);
	cr_assert_lt(tpo_now_ns() - t0, 10000000000ull, "the kick did not end the wait");
	cr_assert_eq(s->cons_sleeping, 0);
	free(m);
}

Test(ring, wait_space)
{
	const uint64_t cap = 1024;
	struct tpo_ring_shm *s;
	struct tpo_ring p, c;
	void *m = mmap(NULL, tpo_ring_footprint(cap), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int bell = tpo_bell_open(), st;
	uint64_t n = 0;
	pid_t pid;

	cr_assert_neq(m, MAP_FAILED);
	cr_assert_geq(bell, 0);
	s = m;
	cr_assert_eq(tpo_ring_init(m, cap, 256, 0, 0), 0);
	cr_assert_eq(tpo_ring_open_producer(&p, m, -1), 0);
	while (put(&p, n, 100) == 0)
		n++;
	cr_assert_eq(tpo_ring_wait_space(&p, 100, bell, 0, 20), 0);
	cr_assert_eq(tpo_ring_wait_space(&p, 100, bell, 20000, 0), 0);
	cr_assert_eq(s->prod_sleeping, 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		const struct tpo_rec *h;
		uint64_t end = tpo_now_ns() + 10000000000ull;
		int rang;

		if (tpo_ring_open_consumer(&c, m, bell) < 0)
			_exit(10);
		/* Release only once the producer sleeps, to test the bell. */
		while (!atomic_load(&s->prod_sleeping))
			if (tpo_now_ns() > end)
				_exit(11);
		if (tpo_ring_peek(&c, &h) < 0)
			_exit(12);
		tpo_ring_advance(&c, h);
		rang = tpo_ring_release(&c);
		_exit(rang == 1 ? 0 : 13);
	}
	cr_assert_eq(tpo_ring_wait_space(&p, 100, bell, 0, 10000), 1);
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
	cr_assert_eq(put(&p, n, 100), 0);
	close(bell);
	munmap(m, tpo_ring_footprint(cap));
}

/* One consumer sleeps on three rings with one bell; a forked producer pushes
 * into one of them once the consumer has announced its sleep. */
Test(ring, wait_several_rings_one_bell)
{
	const uint64_t cap = 1024;
	const size_t fp = tpo_ring_footprint(cap);
	struct tpo_ring c[3], *set[3] = { &c[0], &c[1], &c[2] };
	uint8_t *m = mmap(NULL, 3 * fp, PROT_READ | PROT_WRITE,
			  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int bell = tpo_bell_open(), st, r;
	pid_t pid;

	cr_assert_neq(m, MAP_FAILED);
	cr_assert_geq(bell, 0);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(tpo_ring_init(m + i * fp, cap, 256, (uint32_t)i, 0), 0);
		cr_assert_eq(tpo_ring_open_consumer(&c[i], m + i * fp, -1), 0);
	}
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct tpo_ring p;
		struct tpo_ring_shm *s = (struct tpo_ring_shm *)(m + 2 * fp);
		struct tpo_rec *w;
		uint64_t end = tpo_now_ns() + 10000000000ull;

		if (tpo_ring_open_producer(&p, m + 2 * fp, bell) < 0)
			_exit(10);
		while (!atomic_load(&s->cons_sleeping))
			if (tpo_now_ns() > end)
				_exit(11);
		if (tpo_ring_reserve(&p, 16, &w) < 0)
			_exit(12);
		w->type = TPO_REC_USER;
		w->req_id = 42;
		_exit(tpo_ring_commit(&p) == 1 ? 0 : 13);
	}
	r = tpo_ring_wait(set, 3, bell, 0, 10000);
	cr_assert_eq(r, 1);
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
	cr_assert_eq(tpo_ring_readable(&c[0]), 0);
	cr_assert_eq(tpo_ring_readable(&c[1]), 0);
	const struct tpo_rec *h;
	cr_assert_eq(tpo_ring_peek(&c[2], &h), 0);
	cr_assert_eq(h->req_id, 42);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(((struct tpo_ring_shm *)(m + i * fp))->cons_sleeping, 0);
	close(bell);
	munmap(m, 3 * fp);
}
