/*
 * test_seg.c — named shared-memory segments (shm/seg.h): creation, the
 * distinct refusals of tpo_seg_attach, stale-owner cleanup and names.
 */
#include "shm/seg.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Per-process instance name: "ts<pid>"; Criterion runs each test in its
 * own process, so tests do not collide either. */
static const char *inst(void)
{
	static char name[TPO_NAME_MAX + 1];

	/* Cached: a forked child keeps using its parent's name. */
	if (!name[0])
		snprintf(name, sizeof(name), "ts%d", (int)getpid());
	return name;
}

static void devshm(char *buf, size_t len, const char *what)
{
	snprintf(buf, len, "/dev/shm/tpo.%s.%s", inst(), what);
}

static void cleanup(void)
{
	tpo_seg_sweep(inst(), 1);
}

static void published(struct tpo_seg *s, const char *what, uint32_t kind,
		      uint32_t version)
{
	cr_assert_eq(tpo_seg_create(s, inst(), what, kind, 4096), 0);
	tpo_seg_publish(s, version);
}

TestSuite(seg, .fini = cleanup);

Test(seg, create_attach_unlink)
{
	struct tpo_seg s, a;
	struct tpo_seg_hdr *h;
	uint32_t found = 0;
	char path[128];
	struct stat st;

	cr_assert_eq(tpo_seg_create(&s, inst(), "a", TPO_SEG_TEST, 8192), 0);
	cr_assert_not_null(s.base);
	cr_assert_eq(s.size, 8192);
	cr_assert_eq(s.writable, 1);
	h = s.base;
	cr_assert_eq(h->magic, TPO_SEG_MAGIC);
	cr_assert_eq(h->kind, TPO_SEG_TEST);
	cr_assert_eq(h->size, 8192);
	cr_assert_eq(h->owner_pid, (uint32_t)getpid());
	cr_assert_eq(h->version, 0);
	cr_assert_neq(h->created_ns, 0);
	cr_assert_eq(((uint8_t *)s.base)[8191], 0, "body not zeroed");
	strcpy((char *)s.base + TPO_SEG_HDR_SIZE, "body");
	tpo_seg_publish(&s, 3);

	cr_assert_eq(tpo_seg_attach(&a, inst(), "a", TPO_SEG_TEST, 3, 0, &found), 0);
	cr_assert_eq(found, 3);
	cr_assert_eq(a.size, 8192);
	cr_assert_eq(a.writable, 0);
	cr_assert_str_eq((char *)a.base + TPO_SEG_HDR_SIZE, "body");
	tpo_seg_close(&a);
	cr_assert_null(a.base);
	tpo_seg_close(&a); /* twice is harmless */

	cr_assert_eq(tpo_seg_attach(&a, inst(), "a", TPO_SEG_TEST, 3, 1, NULL), 0);
	strcpy((char *)a.base + TPO_SEG_HDR_SIZE, "BODY");
	cr_assert_str_eq((char *)s.base + TPO_SEG_HDR_SIZE, "BODY");
	tpo_seg_close(&a);

	devshm(path, sizeof(path), "a");
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(tpo_seg_unlink(inst(), "a"), 0);
	cr_assert_eq(stat(path, &st), -1);
	cr_assert_eq(tpo_seg_unlink(inst(), "a"), -ENOENT);
	cr_assert_eq(tpo_seg_attach(&a, inst(), "a", TPO_SEG_TEST, 3, 0, NULL), -ENOENT);
	/* The creator's mapping outlives the name. */
	cr_assert_str_eq((char *)s.base + TPO_SEG_HDR_SIZE, "BODY");
	tpo_seg_close(&s);
	cr_assert_eq(tpo_seg_create(&s, inst(), "a", TPO_SEG_TEST, 10), -EINVAL);
}

Test(seg, mode_0600)
{
	struct tpo_seg s;
	char path[128];
	struct stat st;
	mode_t old = umask(0);
	int fd;

	cr_assert_eq(tpo_seg_create(&s, inst(), "m", TPO_SEG_TEST, 4096), 0);
	umask(old);
	devshm(path, sizeof(path), "m");
	fd = open(path, O_RDONLY);
	cr_assert_geq(fd, 0);
	cr_assert_eq(fstat(fd, &st), 0);
	cr_assert_eq(st.st_mode & 07777, 0600, "mode %o", st.st_mode & 07777);
	cr_assert_eq(st.st_uid, getuid());
	cr_assert_eq(st.st_size, 4096);
	close(fd);
	tpo_seg_close(&s);
	cr_assert_eq(tpo_seg_unlink(inst(), "m"), 0);
}

Test(seg, other_version)
{
	struct tpo_seg s, a;
	uint32_t found = 0;

	published(&s, "v", TPO_SEG_TEST, 2);
	cr_assert_eq(tpo_seg_attach(&a, inst(), "v", TPO_SEG_TEST, 1, 0, &found),
		     -EPROTONOSUPPORT);
	cr_assert_eq(found, 2);
	cr_assert_null(a.base);
	cr_assert_eq(tpo_seg_attach(&a, inst(), "v", TPO_SEG_TEST, 3, 0, NULL),
		     -EPROTONOSUPPORT);
	tpo_seg_close(&s);
	cr_assert_eq(tpo_seg_unlink(inst(), "v"), 0);
}

Test(seg, foreign_magic)
{
	struct tpo_seg s, a;

	published(&s, "f", TPO_SEG_TEST, 1);
	((struct tpo_seg_hdr *)s.base)->magic = 0x0123456789abcdefull;
	cr_assert_eq(tpo_seg_attach(&a, inst(), "f", TPO_SEG_TEST, 1, 0, NULL), -EPROTO);
	/* A foreign file under our name is never removed by create, by its
	 * magic: nobody holds a lock on it (ours is closed). */
	tpo_seg_close(&s);
	cr_assert_eq(tpo_seg_create(&a, inst(), "f", TPO_SEG_TEST, 4096), -EEXIST);
	cr_assert_eq(tpo_seg_sweep(inst(), 0), 0);
	cr_assert_eq(tpo_seg_owner_alive(inst(), "f"), -EPROTO);
	cr_assert_eq(tpo_seg_unlink(inst(), "f"), 0);
}

Test(seg, wrong_kind)
{
	struct tpo_seg s, a;

	published(&s, "k", TPO_SEG_RINGS, 1);
	cr_assert_eq(tpo_seg_attach(&a, inst(), "k", TPO_SEG_STATS, 1, 0, NULL), -EPROTO);
	cr_assert_eq(tpo_seg_attach(&a, inst(), "k", TPO_SEG_RINGS, 1, 0, NULL), 0);
	tpo_seg_close(&a);
	tpo_seg_close(&s);
	cr_assert_eq(tpo_seg_unlink(inst(), "k"), 0);
}

Test(seg, truncated)
{
	struct tpo_seg s, a;
	char path[128];
	int fd;

	published(&s, "t", TPO_SEG_TEST, 1);
	tpo_seg_close(&s);
	devshm(path, sizeof(path), "t");
	fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, 4095), 0);
	cr_assert_eq(tpo_seg_attach(&a, inst(), "t", TPO_SEG_TEST, 1, 0, NULL), -EBADF);
	cr_assert_eq(ftruncate(fd, 100), 0);
	cr_assert_eq(tpo_seg_attach(&a, inst(), "t", TPO_SEG_TEST, 1, 0, NULL), -EBADF);
	cr_assert_eq(ftruncate(fd, 10), 0); /* not even a header */
	cr_assert_eq(tpo_seg_attach(&a, inst(), "t", TPO_SEG_TEST, 1, 0, NULL), -EBADF);
	cr_assert_eq(ftruncate(fd, 0), 0);
	cr_assert_eq(tpo_seg_attach(&a, inst(), "t", TPO_SEG_TEST, 1, 0, NULL), -EBADF);
	close(fd);
	cr_assert_eq(tpo_seg_unlink(inst(), "t"), 0);
}

Test(seg, unpublished)
{
	struct tpo_seg s, a;
	uint32_t found = 7;

	cr_assert_eq(tpo_seg_create(&s, inst(), "u", TPO_SEG_TEST, 4096), 0);
	cr_assert_eq(tpo_seg_attach(&a, inst(), "u", TPO_SEG_TEST, 1, 0, &found), -EAGAIN);
	cr_assert_eq(found, 0);
	tpo_seg_publish(&s, 1);
	cr_assert_eq(tpo_seg_attach(&a, inst(), "u", TPO_SEG_TEST, 1, 0, &found), 0);
	tpo_seg_close(&a);
	tpo_seg_close(&s);
	cr_assert_eq(tpo_seg_unlink(inst(), "u"), 0);
}

Test(seg, live_owner_exists)
{
	struct tpo_seg s, s2;

	published(&s, "l", TPO_SEG_TEST, 1);
	cr_assert_eq(tpo_seg_create(&s2, inst(), "l", TPO_SEG_TEST, 4096), -EEXIST);
	cr_assert_null(s2.base);
	/* The refused create left the original intact. */
	cr_assert_eq(((struct tpo_seg_hdr *)s.base)->version, 1);
	tpo_seg_close(&s);
	cr_assert_eq(tpo_seg_unlink(inst(), "l"), 0);
}

/* Creates the named segments in a child that exits without unlinking;
 * with name_parent their headers name our pid, a live one, as owner. */
static void create_in_dead_child(const char *const *what, int n, int name_parent)
{
	int st;
	pid_t pid;

	(void)inst();
	pid = fork();

	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct tpo_seg s;

		for (int i = 0; i < n; i++) {
			if (tpo_seg_create(&s, inst(), what[i], TPO_SEG_TEST, 4096) < 0)
				_exit(1);
			if (name_parent)
				((struct tpo_seg_hdr *)s.base)->owner_pid = (uint32_t)getppid();
			tpo_seg_publish(&s, 1);
		}
		_exit(0);
	}
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

Test(seg, dead_owner_replaced)
{
	static const char *const what[] = { "d" };
	struct tpo_seg s, a;
	uint32_t found;

	create_in_dead_child(what, 1, 0);
	cr_assert_eq(tpo_seg_attach(&a, inst(), "d", TPO_SEG_TEST, 1, 0, &found), 0,
		     "child's segment not found under the parent's name");
	tpo_seg_close(&a);
	cr_assert_eq(tpo_seg_create(&s, inst(), "d", TPO_SEG_TEST, 8192), 0);
	cr_assert_eq(((struct tpo_seg_hdr *)s.base)->owner_pid, (uint32_t)getpid());
	cr_assert_eq(s.size, 8192);
	tpo_seg_close(&s);
	cr_assert_eq(tpo_seg_unlink(inst(), "d"), 0);
}

/*
 * Whether an owner lives is its lock, not its pid: a dead creator's segment
 * whose header names a live process (a pid reused after a crash; in a
 * container the supervisor is pid 1 every time) is stale, and
 * tpo_seg_owner_alive says so; a live creator's is not, closed it is.
 */
Test(seg, owner_is_its_lock_not_its_pid)
{
	static const char *const what[] = { "p" };
	struct tpo_seg s, a;

	create_in_dead_child(what, 1, 1);
	cr_assert_eq(tpo_seg_owner_alive(inst(), "p"), 0);
	cr_assert_eq(tpo_seg_create(&s, inst(), "p", TPO_SEG_TEST, 4096), 0,
		     "a dead creator's segment kept by a live pid in its header");
	cr_assert_eq(tpo_seg_owner_alive(inst(), "p"), 1);
	cr_assert_eq(tpo_seg_create(&a, inst(), "p", TPO_SEG_TEST, 4096), -EEXIST);
	cr_assert_eq(tpo_seg_sweep(inst(), 0), 0);
	tpo_seg_close(&s);
	cr_assert_eq(tpo_seg_owner_alive(inst(), "p"), 0);
	cr_assert_eq(tpo_seg_owner_alive(inst(), "none"), 0);
	cr_assert_eq(tpo_seg_owner_alive("a/b", "p"), -EINVAL);
	cr_assert_eq(tpo_seg_unlink(inst(), "p"), 0);
}

/* A segment of an older creator (no TPO_SEG_LOCKED, no lock) is judged by
 * the pid in its header, as it was. */
Test(seg, unlocked_segment_judged_by_its_pid)
{
	struct tpo_seg s;
	struct tpo_seg_hdr *h;

	published(&s, "o", TPO_SEG_TEST, 1);
	h = s.base;
	h->flags = 0;
	h->owner_pid = (uint32_t)getpid();
	tpo_seg_close(&s);                              /* no lock held */
	cr_assert_eq(tpo_seg_owner_alive(inst(), "o"), 1);
	cr_assert_eq(tpo_seg_sweep(inst(), 0), 0);
	/* Re-open it writable to name a pid that is gone. */
	{
		char path[128];
		int fd, st;
		pid_t pid = fork();

		cr_assert_geq(pid, 0);
		if (pid == 0)
			_exit(0);
		cr_assert_eq(waitpid(pid, &st, 0), pid);
		devshm(path, sizeof(path), "o");
		fd = open(path, O_RDWR);
		cr_assert_geq(fd, 0);
		cr_assert_eq(pwrite(fd, &(uint32_t){ (uint32_t)pid }, 4,
				    offsetof(struct tpo_seg_hdr, owner_pid)), 4);
		close(fd);
	}
	cr_assert_eq(tpo_seg_owner_alive(inst(), "o"), 0);
	cr_assert_eq(tpo_seg_sweep(inst(), 0), 1);
}

/* A creator that died before writing its header leaves a file of zeros:
 * kept through the grace a live creator has, then swept; another
 * program's file (not zeros, not ours) never is. */
Test(seg, headerless_segment_swept_after_the_grace)
{
	char path[128];
	struct timespec old[2] = { { .tv_sec = 1 }, { .tv_sec = 1 } };
	struct stat sb;
	int fd;

	devshm(path, sizeof(path), "z0");
	fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, 4096), 0);
	close(fd);
	devshm(path, sizeof(path), "zf");
	fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, "not a tpo segment, someone else's data", 38), 38);
	cr_assert_eq(ftruncate(fd, 4096), 0);
	cr_assert_eq(futimens(fd, old), 0);
	close(fd);
	cr_assert_eq(tpo_seg_sweep(inst(), 0), 0, "swept within the grace");
	devshm(path, sizeof(path), "z0");
	cr_assert_eq(utimensat(AT_FDCWD, path, old, 0), 0);
	cr_assert_eq(tpo_seg_sweep(inst(), 0), 1);
	cr_assert_eq(stat(path, &sb), -1, "the zero-header file is still there");
	devshm(path, sizeof(path), "zf");
	cr_assert_eq(stat(path, &sb), 0, "another program's file was swept");
	unlink(path);
}

Test(seg, sweep)
{
	static const char *const what[] = { "x", "y" };
	struct tpo_seg s, a;
	char path[128];
	struct stat st;

	create_in_dead_child(what, 2, 0);
	published(&s, "z", TPO_SEG_TEST, 1);
	cr_assert_eq(tpo_seg_sweep(inst(), 0), 2);
	cr_assert_eq(tpo_seg_attach(&a, inst(), "x", TPO_SEG_TEST, 1, 0, NULL), -ENOENT);
	cr_assert_eq(tpo_seg_attach(&a, inst(), "y", TPO_SEG_TEST, 1, 0, NULL), -ENOENT);
	devshm(path, sizeof(path), "z");
	cr_assert_eq(stat(path, &st), 0, "live owner's segment swept");
	cr_assert_eq(tpo_seg_sweep(inst(), 0), 0);
	cr_assert_eq(tpo_seg_sweep(inst(), 1), 1);
	cr_assert_eq(stat(path, &st), -1);
	cr_assert_eq(tpo_seg_sweep("bad/name", 0), -EINVAL);
	tpo_seg_close(&s);
}

Test(seg, names)
{
	char path[TPO_SEG_PATH_MAX], n32[33], n33[34];
	struct tpo_seg s;

	memset(n32, 'a', 32);
	n32[32] = 0;
	memset(n33, 'b', 33);
	n33[33] = 0;
	cr_assert_eq(tpo_seg_name_ok("A-z_09"), 0);
	cr_assert_eq(tpo_seg_name_ok(n32), 0);
	cr_assert_eq(tpo_seg_name_ok(n33), -EINVAL);
	cr_assert_eq(tpo_seg_name_ok(""), -EINVAL);
	cr_assert_eq(tpo_seg_name_ok(NULL), -EINVAL);
	cr_assert_eq(tpo_seg_name_ok("a.b"), -EINVAL);
	cr_assert_eq(tpo_seg_name_ok("a/b"), -EINVAL);
	cr_assert_eq(tpo_seg_name_ok("a b"), -EINVAL);
	cr_assert_eq(tpo_seg_name_ok("\xc3\xa9"), -EINVAL);
	cr_assert_eq(tpo_seg_path(path, sizeof(path), "x1", "rings"), 0);
	cr_assert_str_eq(path, "/tpo.x1.rings");
	cr_assert_eq(tpo_seg_path(path, sizeof(path), n32, "rings"), 0);
	cr_assert_eq(tpo_seg_path(path, sizeof(path), n32, n32), -ENAMETOOLONG);
	cr_assert_eq(tpo_seg_path(path, sizeof(path), "..", "rings"), -EINVAL);
	cr_assert_eq(tpo_seg_path(path, sizeof(path), "x", "a/b"), -EINVAL);
	cr_assert_eq(tpo_seg_create(&s, "../etc", "a", TPO_SEG_TEST, 4096), -EINVAL);
	cr_assert_eq(tpo_seg_create(&s, inst(), "", TPO_SEG_TEST, 4096), -EINVAL);
	cr_assert_eq(tpo_seg_attach(&s, "a.b", "a", TPO_SEG_TEST, 1, 0, NULL), -EINVAL);
	cr_assert_eq(tpo_seg_unlink(n33, "a"), -EINVAL);
}

Test(seg, strerror)
{
	static const int errs[] = { -ENOENT, -EPROTO, -EAGAIN, -EPROTONOSUPPORT,
				    -EBADF, -EEXIST, -EINVAL };
	const int n = (int)(sizeof(errs) / sizeof(errs[0]));

	for (int i = 0; i < n; i++) {
		cr_assert_not_null(tpo_seg_strerror(errs[i]));
		for (int j = 0; j < i; j++)
			cr_assert_str_neq(tpo_seg_strerror(errs[i]), tpo_seg_strerror(errs[j]));
	}
	cr_assert_str_eq(tpo_seg_strerror(-ENOMEM), strerror(ENOMEM));
}
