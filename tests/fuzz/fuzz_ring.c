/*
 * fuzz_ring — libFuzzer target for shm/ring.c over a ring in any state.
 *
 * A ring lives in shared memory that every stage of a lane maps writable: a
 * buggy stage, a user's own among them, can leave any bytes in it. The
 * promise (design.md) is that a corrupt ring is reported, never followed
 * off the end. The input gives the ring's head and tail (any 64-bit values)
 * and its data area; then
 *   - a consumer reads it to the end: every record it is given lies whole
 *     inside the data area, has a valid type and a length of 1..max_len,
 *     and its cursor never passes head; it ends with "empty" or "corrupt";
 *   - a producer opened on the same state either refuses it or reserves and
 *     fills records (lengths from the input) that lie whole inside the data
 *     area, and a consumer that then starts where that producer started reads
 *     back exactly what it wrote.
 * The ring is allocated to its exact size, so ASan reports any byte read or
 * written past the data area.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shm/ring.h"

#define check(c) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); __builtin_trap(); } } while (0)

#define CAP     1024u
#define MAX_LEN 200u

static uint64_t u64_at(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static void check_inside(const struct tpo_ring *r, const struct tpo_rec *rec)
{
	const uint8_t *p = (const uint8_t *)rec, *d = r->data;

	check(p >= d && p + TPO_REC_HDR_SIZE <= d + CAP);
	check(rec->len >= 1 && rec->len <= MAX_LEN);
	check(p + tpo_rec_size(rec->len) <= d + CAP);
	check(rec->type >= TPO_REC_USER && rec->type < TPO_REC_TYPE_LIMIT);
}

/* Reads everything readable; returns the records read. */
static int drain(struct tpo_ring *r, uint64_t head)
{
	const struct tpo_rec *recs[4];
	volatile uint8_t sink = 0;
	int total = 0;

	for (int pass = 0; pass < (int)(CAP / TPO_REC_HDR_SIZE) + 2; pass++) {
		int n = tpo_ring_peek_batch(r, recs, 4);

		if (n == -EBADMSG || n == 0)
			break;
		check(n > 0 && n <= 4);
		for (int i = 0; i < n; i++) {
			const uint8_t *pl = tpo_rec_data(recs[i]);
			check_inside(r, recs[i]);
			for (uint32_t k = 0; k < recs[i]->len; k++)
				sink ^= pl[k];
		}
		check(head - r->pos <= head - atomic_load(&r->shm->tail));
		tpo_ring_release(r);
		check(atomic_load(&r->shm->tail) == r->pos);
		total += n;
	}
	(void)sink;
	return total;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t n)
{
	static uint8_t *mem, *saved;
	struct tpo_ring p, c;
	uint64_t tail, head, start;
	const uint8_t *lens;
	size_t nlens;
	struct tpo_rec *wrote[64];
	int nw = 0;

	if (n < 17)
		return 0;
	if (!mem) {
		mem = aligned_alloc(64, tpo_ring_footprint(CAP));
		saved = malloc(tpo_ring_footprint(CAP));
		check(mem && saved);
	}
	check(tpo_ring_init(mem, CAP, MAX_LEN, 0, 0) == 0);
	tail = u64_at(in);
	head = tail + u64_at(in + 8);
	lens = in + 16;
	nlens = in[16] % 16;           /* records the producer writes */
	lens = in + 17;
	n -= 17;
	if (nlens > n)
		nlens = n;
	memcpy(mem + TPO_RING_HDR_SIZE, lens + nlens, n - nlens < CAP ? n - nlens : CAP);
	atomic_store(&((struct tpo_ring_shm *)mem)->head, head);
	atomic_store(&((struct tpo_ring_shm *)mem)->tail, tail);
	memcpy(saved, mem, tpo_ring_footprint(CAP));

	/* The consumer, on the ring as the input left it. */
	check(tpo_ring_open_consumer(&c, mem, -1) == 0);
	drain(&c, head);

	/* A producer, on the same state. */
	memcpy(mem, saved, tpo_ring_footprint(CAP));
	if (tpo_ring_open_producer(&p, mem, -1) < 0)
		return 0;                /* refused: reported, not followed */
	start = p.pos;
	for (size_t i = 0; i < nlens; i++) {
		uint32_t len = 1 + lens[i] % MAX_LEN;
		struct tpo_rec *rec;
		int err = tpo_ring_reserve(&p, len, &rec);

		if (err == -EAGAIN)
			break;
		check(err == 0);
		check(rec->len == len);
		rec->type = (uint16_t)(TPO_REC_USER + i % 8);
		rec->req_id = i;
		memset(tpo_rec_data(rec), (int)i, len);
		check_inside(&p, rec);
		wrote[nw++] = rec;
		if (lens[i] & 0x80)
			tpo_ring_commit(&p);
	}
	tpo_ring_commit(&p);
	if (!nw)
		return 0;
	/* What it wrote reads back, in order, from where it started. */
	atomic_store(&p.shm->tail, start);
	check(tpo_ring_open_consumer(&c, mem, -1) == 0);
	for (int i = 0; i < nw; i++) {
		const struct tpo_rec *rec;

		check(tpo_ring_peek(&c, &rec) == 0);
		check(rec == wrote[i] && rec->req_id == (uint64_t)i);
		tpo_ring_advance(&c, rec);
	}
	{
		const struct tpo_rec *rec;
		check(tpo_ring_peek(&c, &rec) == -EAGAIN);
	}
	return 0;
}
