/*
 * seg.h — named POSIX shared-memory segments of one tpo instance.
 *
 * Every segment is called /tpo.<instance>.<what>, is created mode 0600 and
 * starts with this header:
 *
 *   offset  size  field
 *   0       8     magic       "TPOSEG\0\1" — refuses foreign segments
 *   8       4     kind        TPO_SEG_RINGS, TPO_SEG_STATS, ...
 *   12      4     version     layout version of the kind; written LAST,
 *                             with a release store: 0 means "not ready"
 *   16      8     size        bytes mapped, header included
 *   24      4     owner_pid   process that created it (the supervisor)
 *   28      4     flags       TPO_SEG_LOCKED: its creator holds a lock on
 *                             it while it lives (0 from older creators,
 *                             judged by owner_pid then)
 *   32      8     created_ns  CLOCK_REALTIME at creation
 *   40      24    reserved    (pads the header to 64 bytes)
 *   64      ...   body        laid out by the kind (see ring.h, stats.h)
 *
 * A reader that finds another version, a size smaller than the file, a wrong
 * magic or kind refuses the segment with a distinct error.
 */
#ifndef TPO_SEG_H
#define TPO_SEG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TPO_SEG_MAGIC     0x01004745534f5054ull /* "TPOSEG\0\1" little-endian */
#define TPO_SEG_HDR_SIZE  64
#define TPO_NAME_MAX      32   /* instance name, [A-Za-z0-9_-]{1,32} */
#define TPO_SEG_PATH_MAX  64
#define TPO_SEG_LOCKED    1u   /* hdr.flags: the creator's flock says it lives */

enum tpo_seg_kind {
	TPO_SEG_RINGS = 1,
	TPO_SEG_STATS = 2,
	TPO_SEG_TEST  = 99,
};

struct tpo_seg_hdr {
	uint64_t magic;
	uint32_t kind;
	uint32_t version;       /* atomic; release store last, acquire load */
	uint64_t size;
	uint32_t owner_pid;
	uint32_t flags;         /* TPO_SEG_LOCKED */
	uint64_t created_ns;
	uint8_t  reserved1[24];
};
_Static_assert(sizeof(struct tpo_seg_hdr) == TPO_SEG_HDR_SIZE, "seg hdr size");
_Static_assert(offsetof(struct tpo_seg_hdr, kind) == 8, "kind");
_Static_assert(offsetof(struct tpo_seg_hdr, version) == 12, "version");
_Static_assert(offsetof(struct tpo_seg_hdr, size) == 16, "size");
_Static_assert(offsetof(struct tpo_seg_hdr, owner_pid) == 24, "owner_pid");
_Static_assert(offsetof(struct tpo_seg_hdr, created_ns) == 32, "created_ns");

/* A mapping of one segment, owned by the caller. */
struct tpo_seg {
	void  *base;
	size_t size;
	char   path[TPO_SEG_PATH_MAX];
	int    writable;
	int    lock;        /* creator: 1 + the descriptor holding its lock; 0 */
};

/* Fills path with "/tpo.<instance>.<what>"; -EINVAL on a bad name. */
int tpo_seg_path(char *path, size_t len, const char *instance, const char *what);

/* Returns 0 if instance is a valid instance name, -EINVAL otherwise. */
int tpo_seg_name_ok(const char *instance);

/*
 * Creates and maps a zeroed segment of size bytes (header included) for the
 * calling process as owner, which holds a lock on it (flock) until
 * tpo_seg_close or its death. The header is filled except for version: the
 * caller lays out the body, then calls tpo_seg_publish(). If the name exists
 * and its creator is gone (its lock free; one that died before writing the
 * header: once older than a few seconds) it is unlinked first; a live
 * creator's segment gives -EEXIST, ready or not. When done with the name,
 * tpo_seg_unlink() it before tpo_seg_close(): unlinked after the lock goes,
 * it could be a newer instance's segment by then.
 */
int tpo_seg_create(struct tpo_seg *seg, const char *instance, const char *what,
		   uint32_t kind, size_t size);

/*
 * 1 while the creator of the segment is alive (it holds a lock on the
 * segment from tpo_seg_create until tpo_seg_close or its death: a pid in the
 * header may be reused, the lock cannot; a segment of an older creator,
 * without TPO_SEG_LOCKED, by its pid), 0 if not or if there is no such
 * segment, -errno on a bad name or a segment that cannot be read.
 */
int tpo_seg_owner_alive(const char *instance, const char *what);

/* Writes the version with a release store: the segment is now ready. */
void tpo_seg_publish(struct tpo_seg *seg, uint32_t version);

/*
 * Maps an existing segment. Errors: -ENOENT no such segment, -EPROTO not a
 * tpo segment (magic) or the wrong kind, -EAGAIN not published yet,
 * -EPROTONOSUPPORT another layout version (*found gets it if non-NULL),
 * -EBADF truncated (file smaller than its header says), or a mapping errno.
 */
int tpo_seg_attach(struct tpo_seg *seg, const char *instance, const char *what,
		   uint32_t kind, uint32_t version, int writable, uint32_t *found);

void tpo_seg_close(struct tpo_seg *seg);
int  tpo_seg_unlink(const char *instance, const char *what);

/* Unlinks every /dev/shm/tpo.<instance>.* whose owner is dead (or all of
 * them if force). Returns the number removed. */
int tpo_seg_sweep(const char *instance, int force);

/* Human text for the errors above, e.g. for "tpo-top: cannot attach: ...". */
const char *tpo_seg_strerror(int err);

#endif
