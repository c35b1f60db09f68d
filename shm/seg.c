/*
 * seg.c — named POSIX shared-memory segments (see seg.h for the layout).
 */
#include "shm/seg.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A segment that never became ready is considered abandoned after this. */
#define UNREADY_GRACE_NS (5ull * 1000000000ull)

static uint64_t realtime_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int tpo_seg_name_ok(const char *instance)
{
	size_t n = instance ? strlen(instance) : 0;

	if (n == 0 || n > TPO_NAME_MAX)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		char c = instance[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '_' || c == '-'))
			return -EINVAL;
	}
	return 0;
}

int tpo_seg_path(char *path, size_t len, const char *instance, const char *what)
{
	int n;

	if (tpo_seg_name_ok(instance) < 0 || tpo_seg_name_ok(what) < 0)
		return -EINVAL;
	n = snprintf(path, len, "/tpo.%s.%s", instance, what);
	return (n < 0 || (size_t)n >= len) ? -ENAMETOOLONG : 0;
}

/* Older than the grace a creator has to lay out its header. */
static int past_grace(const struct stat *st)
{
	return (uint64_t)st->st_mtim.tv_sec * 1000000000ull + (uint64_t)st->st_mtim.tv_nsec +
	       UNREADY_GRACE_NS < realtime_ns();
}

static int pid_alive(pid_t pid)
{
	if (pid <= 0)
		return 0;
	return kill(pid, 0) == 0 || errno == EPERM;
}

/*
 * Of the segment open on fd: 1 if its creator lives, 0 if it is gone, 2 if
 * it is not a tpo segment at all, -errno. The creator holds a lock on it
 * (flock, on the descriptor it keeps until tpo_seg_close) for as long as it
 * lives: held, the segment is in use whatever its state. Free, a header
 * without TPO_SEG_LOCKED is an older creator's, judged by its pid; one not
 * written yet is a live creator's within the grace (it locks right after
 * creating the file), a dead one's after it.
 */
static int creator_alive(int fd)
{
	struct tpo_seg_hdr h;
	struct stat st;

	if (flock(fd, LOCK_SH | LOCK_NB) < 0)
		return errno == EWOULDBLOCK ? 1 : -errno;
	if (fstat(fd, &st) < 0)
		return -errno;
	if ((size_t)st.st_size < sizeof(h) || pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
	    h.magic == 0)
		return !past_grace(&st);
	if (h.magic != TPO_SEG_MAGIC)
		return 2;
	if (!(h.flags & TPO_SEG_LOCKED))
		return pid_alive((pid_t)h.owner_pid);
	return 0;
}

/* creator_alive of the segment at path; 0 if there is none. */
static int alive_at(const char *path)
{
	int fd = shm_open(path, O_RDONLY, 0), alive;

	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	alive = creator_alive(fd);
	close(fd);
	return alive;
}

/* Whether the segment at path may be removed: 1 yes, 0 no, -errno. */
static int seg_is_stale(const char *path)
{
	int alive = alive_at(path);

	return alive < 0 ? alive : alive == 0;
}

int tpo_seg_owner_alive(const char *instance, const char *what)
{
	char path[TPO_SEG_PATH_MAX];
	int alive, err = tpo_seg_path(path, sizeof(path), instance, what);

	if (err < 0)
		return err;
	alive = alive_at(path);
	return alive == 2 ? -EPROTO : alive;
}

int tpo_seg_create(struct tpo_seg *seg, const char *instance, const char *what,
		   uint32_t kind, size_t size)
{
	struct tpo_seg_hdr *h;
	void *base;
	int fd, err, tries = 0;

	memset(seg, 0, sizeof(*seg));
	if (size < TPO_SEG_HDR_SIZE)
		return -EINVAL;
	err = tpo_seg_path(seg->path, sizeof(seg->path), instance, what);
	if (err < 0)
		return err;
again:
	fd = shm_open(seg->path, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (fd < 0) {
		if (errno != EEXIST || tries++ > 0)
			return -errno;
		err = seg_is_stale(seg->path);
		if (err < 0)
			return err;
		if (!err)
			return -EEXIST;
		shm_unlink(seg->path);
		goto again;
	}
	/* The owner's lock, held as long as fd (kept until tpo_seg_close) and
	 * gone with the process however it ends: what says we are alive.
	 * Blocking: a checker may hold a shared lock for a moment. */
	if (flock(fd, LOCK_EX) < 0) {
		err = -errno;
		goto err_unlink;
	}
	/* shm_open honours the umask only downwards; make 0600 explicit. */
	if (fchmod(fd, 0600) < 0 || ftruncate(fd, (off_t)size) < 0) {
		err = -errno;
		goto err_unlink;
	}
	base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED) {
		err = -errno;
		goto err_unlink;
	}
	seg->lock = fd + 1;
	h = base;
	h->magic = TPO_SEG_MAGIC;
	h->kind = kind;
	h->size = size;
	h->owner_pid = (uint32_t)getpid();
	h->flags = TPO_SEG_LOCKED;
	h->created_ns = realtime_ns();
	seg->base = base;
	seg->size = size;
	seg->writable = 1;
	return 0;

err_unlink:
	shm_unlink(seg->path);       /* while we hold its lock */
	close(fd);
	return err;
}

void tpo_seg_publish(struct tpo_seg *seg, uint32_t version)
{
	struct tpo_seg_hdr *h = seg->base;

	/* Pairs with the acquire load in tpo_seg_attach: everything the creator
	 * laid out before this store is visible to whoever sees the version. */
	atomic_store_explicit((_Atomic uint32_t *)&h->version, version,
			      memory_order_release);
}

int tpo_seg_attach(struct tpo_seg *seg, const char *instance, const char *what,
		   uint32_t kind, uint32_t version, int writable, uint32_t *found)
{
	struct tpo_seg_hdr h;
	struct stat st;
	void *base;
	uint32_t v;
	int fd, err;

	memset(seg, 0, sizeof(*seg));
	err = tpo_seg_path(seg->path, sizeof(seg->path), instance, what);
	if (err < 0)
		return err;
	fd = shm_open(seg->path, writable ? O_RDWR : O_RDONLY, 0);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		err = -errno;
		goto err_close;
	}
	err = -EBADF;
	if ((size_t)st.st_size < sizeof(h) ||
	    pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h))
		goto err_close;
	err = -EPROTO;
	if (h.magic != TPO_SEG_MAGIC || h.kind != kind)
		goto err_close;
	err = -EBADF;
	if (h.size < sizeof(h) || h.size > (uint64_t)st.st_size)
		goto err_close;
	base = mmap(NULL, h.size, writable ? PROT_READ | PROT_WRITE : PROT_READ,
		    MAP_SHARED, fd, 0);
	if (base == MAP_FAILED) {
		err = -errno;
		goto err_close;
	}
	close(fd);
	/* Pairs with the release store in tpo_seg_publish. */
	v = atomic_load_explicit((_Atomic uint32_t *)&((struct tpo_seg_hdr *)base)->version,
				 memory_order_acquire);
	if (found)
		*found = v;
	if (v != version) {
		munmap(base, h.size);
		return v == 0 ? -EAGAIN : -EPROTONOSUPPORT;
	}
	seg->base = base;
	seg->size = h.size;
	seg->writable = writable;
	return 0;

err_close:
	close(fd);
	return err;
}

void tpo_seg_close(struct tpo_seg *seg)
{
	if (seg->lock)
		close(seg->lock - 1);
	seg->lock = 0;
	if (seg->base)
		munmap(seg->base, seg->size);
	seg->base = NULL;
	seg->size = 0;
}

int tpo_seg_unlink(const char *instance, const char *what)
{
	char path[TPO_SEG_PATH_MAX];
	int err = tpo_seg_path(path, sizeof(path), instance, what);

	if (err < 0)
		return err;
	return shm_unlink(path) < 0 ? -errno : 0;
}

int tpo_seg_sweep(const char *instance, int force)
{
	char prefix[TPO_SEG_PATH_MAX], path[TPO_SEG_PATH_MAX + 256];
	struct dirent *d;
	DIR *dir;
	int n = 0;

	if (tpo_seg_name_ok(instance) < 0)
		return -EINVAL;
	snprintf(prefix, sizeof(prefix), "tpo.%s.", instance);
	dir = opendir("/dev/shm");
	if (!dir)
		return -errno;
	while ((d = readdir(dir))) {
		if (strncmp(d->d_name, prefix, strlen(prefix)) != 0)
			continue;
		snprintf(path, sizeof(path), "/%s", d->d_name);
		if (force || seg_is_stale(path) == 1) {
			if (shm_unlink(path) == 0)
				n++;
		}
	}
	closedir(dir);
	return n;
}

const char *tpo_seg_strerror(int err)
{
	switch (err) {
	case -ENOENT: return "no such instance (segment not found)";
	case -EPROTO: return "not a tpo segment of the expected kind";
	case -EAGAIN: return "segment is still being created";
	case -EPROTONOSUPPORT: return "segment has an unsupported layout version";
	case -EBADF: return "segment is truncated";
	case -EEXIST: return "segment belongs to a running instance";
	case -EINVAL: return "invalid instance name (use [A-Za-z0-9_-], at most 32)";
	default: return strerror(-err);
	}
}
