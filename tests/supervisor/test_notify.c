/*
 * test_notify.c — the supervisor speaks the sd_notify protocol: READY=1 once
 * every stage runs, STATUS= lines, WATCHDOG=1 when the watchdog is on,
 * STOPPING=1 on SIGTERM; stage processes do not inherit NOTIFY_SOCKET.
 * Runs the real supervisor from $TPO_BUILD against a datagram socket we own.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shm/stats.h"

static const char *build_dir(void)
{
	const char *b = getenv("TPO_BUILD");
	return b && *b ? b : "build";
}

static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
	socklen_t n = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	cr_assert(fd >= 0);
	cr_assert(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	getsockname(fd, (struct sockaddr *)&a, &n);
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

/* What a test started, for fini to stop when an assertion ends it early. */
static pid_t sup_pid = -1;
static char sock_path[108];

static void stop_leftovers(void)
{
	if (sup_pid > 0) {
		int status;

		kill(sup_pid, SIGTERM);
		waitpid(sup_pid, &status, 0);
		sup_pid = -1;
	}
	if (sock_path[0])
		unlink(sock_path);
}

/* Collects datagrams until one contains want or the hang detector fires. */
static int wait_for(int fd, const char *want, char *seen, size_t cap)
{
	time_t end = time(NULL) + 60;

	while (time(NULL) < end) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		char buf[1024];
		ssize_t n;

		if (poll(&p, 1, 500) <= 0)
			continue;
		n = recv(fd, buf, sizeof(buf) - 1, 0);
		if (n <= 0)
			continue;
		buf[n] = 0;
		if (strlen(seen) + (size_t)n + 2 < cap) {
			strcat(seen, buf);
			strcat(seen, "\n");
		}
		if (strstr(buf, want))
			return 1;
	}
	return 0;
}

Test(notify, ready_status_watchdog_stopping, .timeout = 120, .fini = stop_leftovers)
{
	char path[108], name[32], listen[32], exe[512], seen[16384] = "";
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd, status;
	pid_t pid;

	snprintf(path, sizeof(path), "/tmp/tpo-notify-%d.sock", getpid());
	snprintf(name, sizeof(name), "nt%d", getpid());
	snprintf(listen, sizeof(listen), "127.0.0.1:%d", free_port());
	snprintf(exe, sizeof(exe), "%s/tpo-supervisor", build_dir());
	unlink(path);
	memcpy(sock_path, path, sizeof(sock_path));
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	cr_assert(fd >= 0);
	memcpy(a.sun_path, path, strlen(path) + 1);
	cr_assert(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);

	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		char wpid[16];
		/* A test killed by its timeout takes its supervisor with it. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		snprintf(wpid, sizeof(wpid), "%d", getpid());
		setenv("NOTIFY_SOCKET", path, 1);
		setenv("WATCHDOG_USEC", "1000000", 1);
		setenv("WATCHDOG_PID", wpid, 1);
		execl(exe, exe, "start", "--name", name, "--listen", listen, (char *)NULL);
		_exit(127);
	}
	sup_pid = pid;
	cr_expect(wait_for(fd, "READY=1", seen, sizeof(seen)), "no READY=1; got:\n%s", seen);
	cr_expect(strstr(seen, "STATUS=") != NULL, "no STATUS=; got:\n%s", seen);
	cr_expect(strstr(seen, "lanes ready") != NULL, "STATUS lacks lanes; got:\n%s", seen);
	cr_expect(wait_for(fd, "WATCHDOG=1", seen, sizeof(seen)), "no WATCHDOG=1; got:\n%s", seen);

	/* No stage process carries NOTIFY_SOCKET. */
	{
		struct tpo_stats st;
		struct tpo_stats_info info;
		memset(&st, 0, sizeof(st));
		cr_assert_eq(tpo_stats_attach(&st, name, 0), 0);
		cr_assert_eq(tpo_stats_read_info(&st, &info), 0);
		for (int s = 0; s < TPO_NSTAGES; s++) {
			for (uint32_t l = 0; l < info.nlanes; l++) {
				struct tpo_proc_snapshot p;
				char envp[64], env[65536];
				FILE *f;
				size_t n;
				cr_assert_eq(tpo_stats_read_proc(&st, s, (int)l, &p), 0);
				/* The default runs no rag (no retrieval configured). */
				if (s == TPO_STAGE_RAG && p.state == TPO_UNIT_OFF && p.pid == 0)
					continue;
				snprintf(envp, sizeof(envp), "/proc/%d/environ", (int)p.pid);
				f = fopen(envp, "r");
				cr_assert(f, "stage %d lane %u: no /proc entry", s, l);
				n = fread(env, 1, sizeof(env) - 1, f);
				fclose(f);
				cr_expect(!memmem(env, n, "NOTIFY_SOCKET=", 14),
					  "stage %d lane %u inherited NOTIFY_SOCKET", s, l);
			}
		}
		tpo_stats_close(&st);
	}

	kill(pid, SIGTERM);
	cr_expect(wait_for(fd, "STOPPING=1", seen, sizeof(seen)), "no STOPPING=1; got:\n%s", seen);
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	sup_pid = -1;
	cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
	close(fd);
	unlink(path);
}
