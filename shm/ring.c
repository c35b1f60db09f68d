/*
 * ring.c — SPSC byte ring with variable-length records (see ring.h).
 *
 * Hot paths make no system call and take no lock: reserve/commit touch the
 * producer's cache line and, when the cached tail says the ring looks full,
 * one acquire load of the consumer's line; peek/release do the mirror image.
 */
#include "shm/ring.h"

#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAD_MIN 8   /* a padding record needs only len and type */

/*
 * Spinning: the first look after SPIN_FIRST pauses, then each wait half the
 * last, down to one pause (~13 ns here). A reply that comes within a few
 * hundred ns is seen within one pause; a consumer that keeps catching up with
 * a fast producer reads the producer's head line less often, so the
 * producer's commits do not keep losing the line (measured: per-record 16 B
 * throughput halves when every look is one pause apart).
 */
#define SPIN_FIRST 8
#define SPIN_CLOCK_EVERY 16   /* looks between clock reads */

static inline void cpu_pause(unsigned n)
{
#if defined(__x86_64__) || defined(__i386__)
	while (n--)
		__builtin_ia32_pause();
#else
	(void)n;
#endif
}

/* Spins until ready(arg) or spin_ns have passed. Returns 1 if ready. */
static int spin_until(int (*ready)(void *), void *arg, uint64_t spin_ns)
{
	uint64_t end = tpo_now_ns() + spin_ns;
	unsigned k = SPIN_FIRST, looks = 0;

	for (;;) {
		cpu_pause(k);
		if (k > 1)
			k >>= 1;
		if (ready(arg))
			return 1;
		if (++looks % SPIN_CLOCK_EVERY == 0 && tpo_now_ns() >= end)
			return 0;
	}
}

uint64_t tpo_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int tpo_ring_init(void *mem, uint64_t capacity, uint32_t max_len, uint32_t id,
		  uint64_t start)
{
	struct tpo_ring_shm *s = mem;

	if (!mem || ((uintptr_t)mem & 63) || max_len == 0 || capacity < 64 ||
	    (capacity & (capacity - 1)) || capacity < 2 * tpo_rec_size(max_len) ||
	    (start & 7))
		return -EINVAL;
	memset(s, 0, sizeof(*s));
	s->magic = TPO_RING_MAGIC;
	s->id = id;
	s->capacity = capacity;
	s->max_len = max_len;
	atomic_store_explicit(&s->head, start, memory_order_relaxed);
	atomic_store_explicit(&s->tail, start, memory_order_relaxed);
	/* Publication of the whole ring to other processes is the segment's
	 * release store of its version (tpo_seg_publish). */
	return 0;
}

static int ring_open(struct tpo_ring *r, void *mem, int peer_bell)
{
	struct tpo_ring_shm *s = mem;

	if (!s || s->magic != TPO_RING_MAGIC || !s->capacity ||
	    (s->capacity & (s->capacity - 1)) || s->max_len == 0 ||
	    s->capacity < 2 * tpo_rec_size(s->max_len))
		return -EPROTO;
	memset(r, 0, sizeof(*r));
	r->shm = s;
	r->data = (uint8_t *)mem + TPO_RING_HDR_SIZE;
	r->mask = s->capacity - 1;
	r->max_len = s->max_len;
	r->peer_bell = peer_bell;
	return 0;
}

int tpo_ring_open_producer(struct tpo_ring *r, void *mem, int peer_bell)
{
	int err = ring_open(r, mem, peer_bell);

	if (err < 0)
		return err;
	/* Our own line: a predecessor's uncommitted reservations vanish here. */
	r->pos = atomic_load_explicit(&r->shm->head, memory_order_relaxed);
	/* Pairs with the consumer's release store of tail in tpo_ring_release. */
	r->cached = atomic_load_explicit(&r->shm->tail, memory_order_acquire);
	/* Records start 8-aligned and tail never passes head: positions that
	 * say otherwise were scribbled on, and writing from them would put a
	 * padding record's header past the data area (found by fuzz_ring). */
	if ((r->pos & 7) || r->pos - r->cached > (r->mask + 1))
		return -EBADMSG;
	r->records = atomic_load_explicit(&r->shm->prod_records, memory_order_relaxed);
	atomic_store_explicit(&r->shm->prod_sleeping, 0, memory_order_relaxed);
	atomic_store_explicit(&r->shm->prod_pid, (uint32_t)getpid(), memory_order_relaxed);
	return 0;
}

int tpo_ring_open_consumer(struct tpo_ring *r, void *mem, int peer_bell)
{
	int err = ring_open(r, mem, peer_bell);

	if (err < 0)
		return err;
	r->pos = atomic_load_explicit(&r->shm->tail, memory_order_relaxed);
	/* Pairs with the producer's release store of head in tpo_ring_commit. */
	r->cached = atomic_load_explicit(&r->shm->head, memory_order_acquire);
	r->records = atomic_load_explicit(&r->shm->cons_records, memory_order_relaxed);
	atomic_store_explicit(&r->shm->cons_sleeping, 0, memory_order_relaxed);
	atomic_store_explicit(&r->shm->cons_pid, (uint32_t)getpid(), memory_order_relaxed);
	return 0;
}

/*
 * A consumer asleep on its flag (TPO_SLEEP_FUTEX) is woken by moving the
 * flag to TPO_SLEEP_WOKEN and a FUTEX_WAKE on it: its futex_waitv returns at
 * once if the move came first. Only a sleeper stores AWAKE, BELL or FUTEX,
 * and a producer only moves FUTEX to WOKEN or BELL to RUNG, so a late move
 * by a producer that saw an earlier sleep can only cut a later sleep short
 * (a spurious wake-up), never make one last.
 */
static int futex_wake(_Atomic uint32_t *flag)
{
	uint32_t want = TPO_SLEEP_FUTEX;

	if (!atomic_compare_exchange_strong_explicit(flag, &want, TPO_SLEEP_WOKEN,
						     memory_order_seq_cst, memory_order_relaxed))
		return 0;
	/* Not FUTEX_PRIVATE_FLAG: the word is in memory shared by processes. */
	syscall(SYS_futex, (uint32_t *)flag, FUTEX_WAKE, 1, NULL, NULL, 0);
	return 1;
}

static int wake_consumer(struct tpo_ring *r, uint32_t flag)
{
	/* Rung once per sleep: more commits before the consumer runs (a batch
	 * too long for one commit) would each cost a write(2) for nothing. */
	if (flag == TPO_SLEEP_BELL && r->peer_bell >= 0) {
		if (!atomic_compare_exchange_strong_explicit(&r->shm->cons_sleeping, &flag,
							     TPO_SLEEP_RUNG, memory_order_seq_cst,
							     memory_order_relaxed))
			return 0;
		tpo_bell_ring(r->peer_bell);
		return 1;
	}
	if (flag == TPO_SLEEP_FUTEX)
		return futex_wake(&r->shm->cons_sleeping);
	return 0;
}

/* ---- producer ---- */

int tpo_ring_reserve(struct tpo_ring *r, uint32_t len, struct tpo_rec **rec)
{
	uint64_t size, off, room, need, cap = r->mask + 1;
	struct tpo_rec *h;

	if (len == 0)
		return -EINVAL;
	if (len > r->max_len)
		return -EMSGSIZE;
	size = tpo_rec_size(len);
	off = r->pos & r->mask;
	room = cap - off;
	need = size <= room ? size : room + size;
	if (cap - (r->pos - r->cached) < need) {
		/* Pairs with the consumer's release store in tpo_ring_release:
		 * the bytes it freed are no longer read once we see tail. */
		r->cached = atomic_load_explicit(&r->shm->tail, memory_order_acquire);
		if (cap - (r->pos - r->cached) < need)
			return -EAGAIN;
	}
	if (size > room) {
		h = (struct tpo_rec *)(r->data + off);
		h->len = (uint32_t)room;
		h->type = TPO_REC_PAD;
		r->pos += room;
		off = 0;
	}
	h = (struct tpo_rec *)(r->data + off);
	memset(h, 0, TPO_REC_HDR_SIZE);
	h->len = len;
	r->pos += size;
	r->records++;
	*rec = h;
	return 0;
}

void tpo_ring_shrink(struct tpo_ring *r, struct tpo_rec *rec, uint32_t len)
{
	if (len == 0 || len > rec->len)
		return;
	r->pos -= tpo_rec_size(rec->len) - tpo_rec_size(len);
	rec->len = len;
}

void tpo_ring_unreserve(struct tpo_ring *r, struct tpo_rec *rec)
{
	r->pos -= tpo_rec_size(rec->len);
	r->records--;
}

static void publish(struct tpo_ring *r)
{
	struct tpo_ring_shm *s = r->shm;
	uint64_t depth = r->pos - r->cached;

	if (depth > atomic_load_explicit(&s->hwm, memory_order_relaxed))
		atomic_store_explicit(&s->hwm, depth, memory_order_relaxed);
	/* Pairs with the consumer's acquire load of head in tpo_ring_peek and
	 * tpo_ring_readable: the records' bytes are visible before head. */
	/* A seq_cst exchange (x86: one locked xchg, cheaper than a store and
	 * mfence) then a seq_cst load of cons_sleeping; pairs with the seq_cst
	 * store of the flag and load of head in tpo_ring_sleep_begin. In the
	 * single total order one side sees the other's store: no lost
	 * wake-up. */
	atomic_exchange_explicit(&s->head, r->pos, memory_order_seq_cst);
	/* Statistics only, after head: a producer killed in between leaves the
	 * count behind what was committed, never ahead of it. */
	atomic_store_explicit(&s->prod_records, r->records, memory_order_relaxed);
}

int tpo_ring_commit(struct tpo_ring *r)
{
	publish(r);
	return tpo_ring_nudge(r);
}

void tpo_ring_commit_quiet(struct tpo_ring *r)
{
	publish(r);
}

int tpo_ring_nudge(struct tpo_ring *r)
{
	/* After publish's seq_cst exchange of head, however much later. */
	return wake_consumer(r, atomic_load_explicit(&r->shm->cons_sleeping,
						     memory_order_seq_cst));
}

int tpo_ring_push(struct tpo_ring *r, uint16_t type, uint64_t req_id,
		  uint32_t seq, const void *payload, uint32_t len)
{
	struct tpo_rec *h;
	int err = tpo_ring_reserve(r, len, &h);

	if (err < 0)
		return err;
	h->type = type;
	h->req_id = req_id;
	h->seq = seq;
	h->ts_ns = tpo_now_ns();
	memcpy(tpo_rec_data(h), payload, len);
	tpo_ring_commit(r);
	return 0;
}

uint64_t tpo_ring_depth(const struct tpo_ring *r)
{
	return r->pos - atomic_load_explicit(&r->shm->tail, memory_order_relaxed);
}

int tpo_ring_writable(struct tpo_ring *r, uint32_t len)
{
	uint64_t size = tpo_rec_size(len), cap = r->mask + 1;
	uint64_t room = cap - (r->pos & r->mask);
	uint64_t need = size <= room ? size : room + size;

	/* Pairs with the consumer's release store of tail. */
	r->cached = atomic_load_explicit(&r->shm->tail, memory_order_acquire);
	return cap - (r->pos - r->cached) >= need;
}

/* ---- consumer ---- */

int tpo_ring_readable(struct tpo_ring *r)
{
	if (r->pos != r->cached)
		return 1;
	/* Pairs with the producer's release store of head in tpo_ring_commit. */
	r->cached = atomic_load_explicit(&r->shm->head, memory_order_acquire);
	return r->pos != r->cached;
}

int tpo_ring_peek(struct tpo_ring *r, const struct tpo_rec **rec)
{
	const struct tpo_rec *h;
	uint64_t avail, off, room, cap = r->mask + 1;

	for (;;) {
		avail = r->cached - r->pos;
		if (avail == 0) {
			/* Pairs with the release store of head in tpo_ring_commit. */
			r->cached = atomic_load_explicit(&r->shm->head, memory_order_acquire);
			avail = r->cached - r->pos;
			if (avail == 0)
				return -EAGAIN;
		}
		off = r->pos & r->mask;
		room = cap - off;
		if (avail > cap || (off & 7) || avail < PAD_MIN)
			return -EBADMSG;
		h = (const struct tpo_rec *)(r->data + off);
		if (h->type == TPO_REC_PAD) {
			if (h->len != room || avail < room)
				return -EBADMSG;
			r->pos += room;
			continue;
		}
		if (room < TPO_REC_HDR_SIZE || avail < TPO_REC_HDR_SIZE ||
		    h->type < TPO_REC_USER || h->type >= TPO_REC_TYPE_LIMIT ||
		    h->len == 0 || h->len > r->max_len ||
		    tpo_rec_size(h->len) > room || tpo_rec_size(h->len) > avail)
			return -EBADMSG;
		*rec = h;
		return 0;
	}
}

void tpo_ring_advance(struct tpo_ring *r, const struct tpo_rec *rec)
{
	r->pos += tpo_rec_size(rec->len);
	r->records++;
}

int tpo_ring_peek_batch(struct tpo_ring *r, const struct tpo_rec **recs, int max)
{
	int n = 0, err;

	while (n < max) {
		err = tpo_ring_peek(r, &recs[n]);
		if (err < 0) {
			if (err == -EBADMSG && n == 0)
				return err;
			break;
		}
		tpo_ring_advance(r, recs[n]);
		n++;
	}
	return n;
}

int tpo_ring_release(struct tpo_ring *r)
{
	return tpo_ring_release_to(r, r->pos);
}

int tpo_ring_release_to(struct tpo_ring *r, uint64_t pos)
{
	struct tpo_ring_shm *s = r->shm;

	atomic_store_explicit(&s->cons_records, r->records, memory_order_relaxed);
	/* Pairs with the producer's acquire load of tail in tpo_ring_reserve:
	 * our reads of the released records happen before it may reuse them. */
	atomic_exchange_explicit(&s->tail, pos, memory_order_seq_cst);
	/* Exchange(tail) then load(prod_sleeping), both seq_cst; pairs with
	 * tpo_ring_wait_space's seq_cst flag store and load of tail. */
	if (atomic_load_explicit(&s->prod_sleeping, memory_order_seq_cst) &&
	    r->peer_bell >= 0) {
		tpo_bell_ring(r->peer_bell);
		return 1;
	}
	return 0;
}

/* ---- doorbells ---- */

int tpo_bell_open(void)
{
	int fd = eventfd(0, EFD_NONBLOCK);

	return fd < 0 ? -errno : fd;
}

int tpo_bell_ring(int fd)
{
	uint64_t one = 1;

	/* EAGAIN means the counter is saturated: it has rung already. */
	if (write(fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		return -errno;
	return 0;
}

int tpo_bell_drain(int fd)
{
	uint64_t v;

	if (read(fd, &v, sizeof(v)) == (ssize_t)sizeof(v))
		return 1;
	return 0;
}

static int bell_sleep(int bell, int timeout_ms)
{
	struct pollfd p = { .fd = bell, .events = POLLIN };
	int n = poll(&p, 1, timeout_ms);

	if (n < 0)
		return errno == EINTR ? 0 : -errno;
	if (n > 0)
		tpo_bell_drain(bell);
	return 0;
}

static int announce(struct tpo_ring *const *rings, int n, uint32_t how)
{
	/* seq_cst store of the flag then seq_cst load of head; pairs with the
	 * seq_cst exchange of head and load of the flag in tpo_ring_commit. */
	for (int i = 0; i < n; i++)
		atomic_store_explicit(&rings[i]->shm->cons_sleeping, how, memory_order_seq_cst);
	for (int i = 0; i < n; i++) {
		struct tpo_ring *r = rings[i];
		if (r->pos != r->cached ||
		    (r->cached = atomic_load_explicit(&r->shm->head, memory_order_seq_cst)) != r->pos) {
			tpo_ring_sleep_end(rings, n);
			return 1;
		}
	}
	return 0;
}

int tpo_ring_sleep_begin(struct tpo_ring *const *rings, int n)
{
	return announce(rings, n, TPO_SLEEP_BELL);
}

void tpo_ring_sleep_end(struct tpo_ring *const *rings, int n)
{
	for (int i = 0; i < n; i++)
		atomic_store_explicit(&rings[i]->shm->cons_sleeping, 0, memory_order_relaxed);
}

static int any_readable(struct tpo_ring *const *rings, int n)
{
	for (int i = 0; i < n; i++)
		if (tpo_ring_readable(rings[i]))
			return 1;
	return 0;
}

struct readable_arg {
	struct tpo_ring *const *rings;
	int n;
};

static int readable_ready(void *arg)
{
	struct readable_arg *a = arg;

	return any_readable(a->rings, a->n);
}

struct writable_arg {
	struct tpo_ring *r;
	uint32_t len;
};

static int writable_ready(void *arg)
{
	struct writable_arg *a = arg;

	return tpo_ring_writable(a->r, a->len);
}

static int futex_waitv_ok = 1;
static volatile sig_atomic_t kicked;

void tpo_ring_kick(struct tpo_ring *const *rings, int n)
{
	kicked = 1;
	atomic_signal_fence(memory_order_seq_cst);
	for (int i = 0; i < n; i++)
		futex_wake(&rings[i]->shm->cons_sleeping);
}

/*
 * Sleeps on the rings' own flags: one futex_waitv, where the doorbell costs
 * a poll(2) and a read(2) (~1.3 us each on these VMs). Returns 1 if a ring
 * became readable before the sleep, 0 after it, -ENOSYS if the kernel has no
 * futex_waitv, or -errno.
 */
static int flag_sleep(struct tpo_ring *const *rings, int n, int timeout_ms)
{
	struct futex_waitv wv[FUTEX_WAITV_MAX];
	struct timespec ts;
	long rc;

	if (n > FUTEX_WAITV_MAX)
		return -ENOSYS;
	if (announce(rings, n, TPO_SLEEP_FUTEX))
		return 1;
	/* A kick (a signal handler's) that came before the flags were set. */
	if (kicked) {
		kicked = 0;
		tpo_ring_sleep_end(rings, n);
		return 0;
	}
	for (int i = 0; i < n; i++)
		wv[i] = (struct futex_waitv){ .val = TPO_SLEEP_FUTEX, .flags = FUTEX_32,
			.uaddr = (uintptr_t)&rings[i]->shm->cons_sleeping };
	if (timeout_ms >= 0) {
		uint64_t due = tpo_now_ns() + (uint64_t)timeout_ms * 1000000ull;
		ts.tv_sec = (time_t)(due / 1000000000ull);
		ts.tv_nsec = (long)(due % 1000000000ull);
	}
	rc = syscall(SYS_futex_waitv, wv, (unsigned)n, 0u,
		     timeout_ms >= 0 ? &ts : NULL, CLOCK_MONOTONIC);
	tpo_ring_sleep_end(rings, n);
	kicked = 0;
	/* EAGAIN: a flag had moved (woken before we slept). */
	if (rc < 0 && errno != EAGAIN && errno != ETIMEDOUT && errno != EINTR)
		return -errno;
	return 0;
}

int tpo_ring_wait(struct tpo_ring *const *rings, int n, int bell,
		  uint64_t spin_ns, int timeout_ms)
{
	struct readable_arg ra = { rings, n };
	int err;

	/* No look before the first pause: callers come here after finding the
	 * rings empty, and sleep_begin looks again before sleeping. */
	if (spin_ns && spin_until(readable_ready, &ra, spin_ns))
		return 1;
	if (n > 0 && futex_waitv_ok) {
		err = flag_sleep(rings, n, timeout_ms);
		if (err != -ENOSYS)
			return err < 0 ? err : any_readable(rings, n);
		futex_waitv_ok = 0;        /* before Linux 5.16: the doorbell */
	}
	if (tpo_ring_sleep_begin(rings, n))
		return 1;
	err = bell_sleep(bell, timeout_ms);
	tpo_ring_sleep_end(rings, n);
	if (err < 0)
		return err;
	return any_readable(rings, n);
}

int tpo_ring_wait_space(struct tpo_ring *r, uint32_t len, int bell,
			uint64_t spin_ns, int timeout_ms)
{
	struct tpo_ring_shm *s = r->shm;
	struct writable_arg wa = { r, len };
	int err;

	if (tpo_ring_writable(r, len))
		return 1;
	if (spin_ns && spin_until(writable_ready, &wa, spin_ns))
		return 1;
	/* seq_cst store of the flag then seq_cst load of tail; pairs with the
	 * seq_cst exchange of tail and load of the flag in tpo_ring_release. */
	atomic_store_explicit(&s->prod_sleeping, 1, memory_order_seq_cst);
	r->cached = atomic_load_explicit(&s->tail, memory_order_seq_cst);
	if (tpo_ring_writable(r, len)) {
		atomic_store_explicit(&s->prod_sleeping, 0, memory_order_relaxed);
		return 1;
	}
	err = bell_sleep(bell, timeout_ms);
	atomic_store_explicit(&s->prod_sleeping, 0, memory_order_relaxed);
	if (err < 0)
		return err;
	return tpo_ring_writable(r, len);
}
