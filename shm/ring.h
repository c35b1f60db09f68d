/*
 * ring.h — lock-free single-producer/single-consumer byte ring in shared
 * memory, carrying variable-length records.
 *
 * Shared layout of one ring (struct tpo_ring_shm, 256 bytes, then data):
 *
 *   offset  size  written by  field
 *   0       4     creator     magic "RING"
 *   4       4     creator     id (index in its ring set)
 *   8       8     creator     capacity: bytes of data, a power of two
 *   16      4     creator     max_len: largest payload accepted
 *   20      4     creator     reserved
 *   24      40    -           padding to the cache line
 *   64      8     producer    head: committed position (release store)
 *   72      4     -           reserved
 *   76      4     producer    prod_pid
 *   80      8     producer    records: records committed
 *   88      8     producer    hwm: highest depth in bytes seen at commit
 *   96      32    -           padding to the cache line
 *   128     8     consumer    tail: released position (release store)
 *   136     4     -           reserved
 *   140     4     consumer    cons_pid
 *   144     8     consumer    records: records released
 *   152     8     consumer    busy: 1 + position of the record being
 *                             processed, 0 if none (crash accounting)
 *   160     32    -           padding to the cache line
 *   192     4     producer    prod_sleeping: producer waits for space
 *   196     4     consumer    cons_sleeping: consumer waits for records
 *                             (TPO_SLEEP_*; the producer that wakes it moves
 *                             FUTEX to WOKEN, BELL to RUNG)
 *   200     56    -           padding to the cache line
 *   256     cap   producer    data: records, 8-byte aligned
 *
 * The sleep flags have a line of their own: each side reads the other's flag
 * after every commit or release, and they change only when a side sleeps, so
 * the line stays shared in both caches. On the head or tail line the flag
 * read would pull the other side's hottest line across on every record
 * (measured: per-record 16-byte throughput 8 -> 30+ M/s when moved).
 *
 * Positions are free-running 64-bit byte counts; offset = pos & (cap - 1).
 * A record is a 32-byte struct tpo_rec followed by len payload bytes, padded
 * to 8. When a record does not fit before the end of the data area, the
 * producer writes a padding record (type TPO_REC_PAD, len = bytes to the end;
 * only its first 8 bytes are meaningful) and starts at offset 0.
 *
 * Visibility is by position only: a record exists for the consumer once head
 * has moved past it. A producer killed between reserve and commit therefore
 * leaves nothing visible, and a replacement producer resumes from head. A
 * consumer releases by moving tail; records it had read but not released are
 * delivered again to a replacement consumer.
 *
 * Wake-ups (see ../shared/rings-notes.md): only a sleeper sets and clears its
 * own flag. The sleeper sets the flag, issues a full fence, re-checks the
 * other side's position, then blocks: an I/O stage on its doorbell (an
 * eventfd, so it can wait on sockets and rings in one epoll), a stage that
 * waits on rings alone on the flags themselves (futex_waitv: one system call
 * per sleep where poll + read of an eventfd take two). The other side stores
 * its position with release, issues a full fence, and only if the flag is
 * set rings the doorbell, or moves the flag from FUTEX to WOKEN and wakes the
 * futex: under load no system call is made. The fence costs the
 * committing side one wait for its store to reach the other cache; an
 * asymmetric fence (membarrier GLOBAL_EXPEDITED from the sleeper) would move
 * it to the sleep path, but an IPI there costs ~17 us on these VMs, paid on
 * every sleep of every stage: worse than ~100 ns per batch.
 */
#ifndef TPO_RING_H
#define TPO_RING_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define TPO_RING_MAGIC     0x474e4952u  /* "RING" */
#define TPO_RING_HDR_SIZE  256
#define TPO_REC_HDR_SIZE   32
#define TPO_RING_MIN_MAX_LEN  (64u * 1024)  /* max_len may not be smaller */

/* cons_sleeping (prod_sleeping uses AWAKE and BELL only) */
enum {
	TPO_SLEEP_AWAKE = 0,
	TPO_SLEEP_BELL = 1,     /* asleep on its doorbell (tpo_ring_sleep_begin) */
	TPO_SLEEP_FUTEX = 2,    /* asleep on the flag itself (tpo_ring_wait) */
	TPO_SLEEP_WOKEN = 3,    /* moved from FUTEX by the producer that woke it */
	TPO_SLEEP_RUNG = 4      /* moved from BELL by the producer that rang it */
};

/* Record types. 0 is never valid (zeroed memory must look corrupt). */
enum {
	TPO_REC_PAD = 1,        /* skip to the end of the data area */
	TPO_REC_USER = 2,       /* first type free for users of the ring */
	TPO_REC_TYPE_LIMIT = 64 /* types >= this are corrupt */
};

struct tpo_rec {
	uint32_t len;       /* payload bytes, 1..max_len */
	uint16_t type;
	uint16_t attempt;   /* delivery attempt, for redelivery/quarantine */
	uint64_t req_id;
	uint32_t seq;
	uint32_t aux;       /* free for the pipeline (e.g. origin lane) */
	uint64_t ts_ns;     /* enqueue time, CLOCK_MONOTONIC */
	/* payload follows */
};
_Static_assert(sizeof(struct tpo_rec) == TPO_REC_HDR_SIZE, "rec size");
_Static_assert(offsetof(struct tpo_rec, type) == 4, "rec type");
_Static_assert(offsetof(struct tpo_rec, req_id) == 8, "rec req_id");
_Static_assert(offsetof(struct tpo_rec, seq) == 16, "rec seq");
_Static_assert(offsetof(struct tpo_rec, ts_ns) == 24, "rec ts");

static inline void *tpo_rec_data(const struct tpo_rec *r)
{ return (uint8_t *)r + TPO_REC_HDR_SIZE; }

struct tpo_ring_shm {
	uint32_t magic;
	uint32_t id;
	uint64_t capacity;
	uint32_t max_len;
	uint32_t reserved0;
	uint8_t  pad0[40];

	_Atomic uint64_t head;
	uint32_t reserved1;
	_Atomic uint32_t prod_pid;
	_Atomic uint64_t prod_records;
	_Atomic uint64_t hwm;
	uint8_t  pad1[32];

	_Atomic uint64_t tail;
	uint32_t reserved2;
	_Atomic uint32_t cons_pid;
	_Atomic uint64_t cons_records;
	_Atomic uint64_t busy;
	uint8_t  pad2[32];

	_Atomic uint32_t prod_sleeping;
	_Atomic uint32_t cons_sleeping;
	uint8_t  pad3[56];
	/* data follows */
};
_Static_assert(sizeof(struct tpo_ring_shm) == TPO_RING_HDR_SIZE, "ring shm size");
_Static_assert(offsetof(struct tpo_ring_shm, capacity) == 8, "capacity");
_Static_assert(offsetof(struct tpo_ring_shm, max_len) == 16, "max_len");
_Static_assert(offsetof(struct tpo_ring_shm, head) == 64, "head line");
_Static_assert(offsetof(struct tpo_ring_shm, prod_records) == 80, "prod_records");
_Static_assert(offsetof(struct tpo_ring_shm, hwm) == 88, "hwm");
_Static_assert(offsetof(struct tpo_ring_shm, tail) == 128, "tail line");
_Static_assert(offsetof(struct tpo_ring_shm, cons_records) == 144, "cons_records");
_Static_assert(offsetof(struct tpo_ring_shm, busy) == 152, "busy");
_Static_assert(offsetof(struct tpo_ring_shm, prod_sleeping) == 192, "flags line");
_Static_assert(offsetof(struct tpo_ring_shm, cons_sleeping) == 196, "cons_sleeping");

/*
 * One side's process-local handle. pos is the producer's reserve cursor
 * (>= head) or the consumer's read cursor (>= tail); cached is its last look
 * at the other side's position. peer_bell is the eventfd of the other side,
 * rung when it sleeps (-1: never ring).
 */
struct tpo_ring {
	struct tpo_ring_shm *shm;
	uint8_t  *data;
	uint64_t  mask;
	uint64_t  pos;
	uint64_t  cached;
	uint64_t  records;   /* producer: committed + reserved; consumer: read */
	uint32_t  max_len;
	int       peer_bell;
};

/* Bytes a ring of this capacity takes in a segment (header + data). */
static inline size_t tpo_ring_footprint(uint64_t capacity)
{ return TPO_RING_HDR_SIZE + (size_t)capacity; }

/* Space one record of len payload bytes takes in the data area. */
static inline uint64_t tpo_rec_size(uint32_t len)
{ return ((uint64_t)TPO_REC_HDR_SIZE + len + 7) & ~(uint64_t)7; }

/*
 * Lays out a ring in mem (tpo_ring_footprint(capacity) bytes, 64-byte
 * aligned). capacity must be a power of two of at least 2 * tpo_rec_size(
 * max_len); max_len at least 1. start is the initial position (tests use
 * positions near 2^64). Returns 0 or -EINVAL.
 */
int tpo_ring_init(void *mem, uint64_t capacity, uint32_t max_len, uint32_t id,
		  uint64_t start);

/*
 * Opens one side of an initialised ring. The producer resumes at head (what
 * a dead predecessor reserved but never committed is forgotten); the consumer
 * resumes at tail (what a dead predecessor read but never released is read
 * again). Returns 0, -EPROTO if mem is not a valid ring, or (producer)
 * -EBADMSG if its head and tail are corrupt (head not 8-aligned, or more
 * than the capacity ahead of tail).
 */
int tpo_ring_open_producer(struct tpo_ring *r, void *mem, int peer_bell);
int tpo_ring_open_consumer(struct tpo_ring *r, void *mem, int peer_bell);

/* ---- producer (one process, one thread) ---- */

/*
 * Reserves room for one record of len payload bytes and returns its header
 * in *rec with len set and the other fields zeroed; the caller fills type,
 * ids and payload in place. Several reservations may precede one commit.
 * Returns 0, -EAGAIN if the ring lacks room, -EINVAL if len is 0,
 * -EMSGSIZE if len > max_len.
 */
int tpo_ring_reserve(struct tpo_ring *r, uint32_t len, struct tpo_rec **rec);

/*
 * Publishes every reserved record (release store of head; pairs with the
 * consumer's acquire load in tpo_ring_peek), then rings the consumer's
 * doorbell if it announced it sleeps. Returns 1 if it rang, else 0.
 */
int tpo_ring_commit(struct tpo_ring *r);

/*
 * tpo_ring_commit without the wake-up: a sleeping consumer sees the records
 * when something else wakes it. A producer that owes it the wake-up pays it
 * with a later tpo_ring_commit or tpo_ring_nudge (returns 1 if it woke it).
 */
void tpo_ring_commit_quiet(struct tpo_ring *r);
int tpo_ring_nudge(struct tpo_ring *r);

/*
 * Shrinks the most recent reservation rec to len bytes (1..its length), or
 * withdraws it (tpo_ring_unreserve) before it is committed. Only the last
 * reservation may be changed.
 */
void tpo_ring_shrink(struct tpo_ring *r, struct tpo_rec *rec, uint32_t len);
void tpo_ring_unreserve(struct tpo_ring *r, struct tpo_rec *rec);

/* reserve + copy + commit. Same errors as tpo_ring_reserve. */
int tpo_ring_push(struct tpo_ring *r, uint16_t type, uint64_t req_id,
		  uint32_t seq, const void *payload, uint32_t len);

/* Bytes reserved but not yet released by the consumer (producer side). */
uint64_t tpo_ring_depth(const struct tpo_ring *r);

/* Whether a record of len bytes fits now (refreshes the cached tail). */
int tpo_ring_writable(struct tpo_ring *r, uint32_t len);

/* ---- consumer (one process, one thread) ---- */

/*
 * Returns in *rec the next record after the read cursor, without moving it
 * (the cursor may skip a padding record: afterwards r->pos is rec's position).
 * The record stays valid and in place until tpo_ring_release().
 * Returns 0, -EAGAIN if empty, -EBADMSG if the ring is corrupt (impossible
 * length or type, or a record crossing the committed position); nothing is
 * read outside the data area.
 */
int tpo_ring_peek(struct tpo_ring *r, const struct tpo_rec **rec);

/* Moves the read cursor past the record tpo_ring_peek returned. */
void tpo_ring_advance(struct tpo_ring *r, const struct tpo_rec *rec);

/*
 * peek + advance for up to max records. Returns how many (>= 0) or -EBADMSG
 * if the first record is corrupt; a corrupt record after good ones ends the
 * batch early and is reported by the next call.
 */
int tpo_ring_peek_batch(struct tpo_ring *r, const struct tpo_rec **recs, int max);

/*
 * Frees everything the read cursor has passed (records returned by
 * tpo_ring_peek_batch included, processed or not: use tpo_ring_release_to to
 * keep some) (release store of tail; pairs
 * with the producer's acquire load in tpo_ring_reserve), then rings the
 * producer's doorbell if it waits for space. Returns 1 if it rang, else 0.
 */
int tpo_ring_release(struct tpo_ring *r);

/*
 * Releases up to position pos only (tail <= pos <= read cursor): a consumer
 * that finishes records out of order keeps the unfinished ones, so they are
 * redelivered if it dies. Same wake-up rule as tpo_ring_release.
 */
int tpo_ring_release_to(struct tpo_ring *r, uint64_t pos);

/* Whether a record is ready to be read (refreshes the cached head). */
int tpo_ring_readable(struct tpo_ring *r);

/* ---- doorbells and waiting ---- */

/* An eventfd (non-blocking, inherited across fork and exec). Returns the
 * fd or -errno. */
int tpo_bell_open(void);
int tpo_bell_ring(int fd);
/* Clears a doorbell; returns 1 if it had rung, 0 if not. */
int tpo_bell_drain(int fd);

/*
 * Announces that the consumer of rings[0..n) is going to sleep, then
 * re-checks them. Returns 1 if a ring became readable (flags withdrawn: do
 * not sleep), or 0: the caller may now block on its doorbell (poll or epoll)
 * and must call tpo_ring_sleep_end() when it wakes.
 */
int  tpo_ring_sleep_begin(struct tpo_ring *const *rings, int n);
void tpo_ring_sleep_end(struct tpo_ring *const *rings, int n);

/*
 * Consumer wait on several rings: spins for spin_ns (0: never), then sleeps
 * for at most timeout_ms (-1: forever) on the rings' flags (futex_waitv), or
 * on bell where the kernel lacks it (before 5.16) or n is 0. Returns 1 if
 * some ring is readable, 0 on timeout, tpo_ring_kick or a bell rung for
 * another reason, -errno on error.
 */
int tpo_ring_wait(struct tpo_ring *const *rings, int n, int bell,
		  uint64_t spin_ns, int timeout_ms);

/*
 * Ends this process's current or next tpo_ring_wait on rings[0..n) early
 * (async-signal-safe: for a signal handler; ring the bell too, for a
 * consumer asleep on it).
 */
void tpo_ring_kick(struct tpo_ring *const *rings, int n);

/* Producer wait until a record of len bytes fits, same conventions. */
int tpo_ring_wait_space(struct tpo_ring *r, uint32_t len, int bell,
			uint64_t spin_ns, int timeout_ms);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t tpo_now_ns(void);

#endif
