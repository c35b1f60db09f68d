/*
 * fuzz_h1 — libFuzzer target for workers/h1.c, tpo-infer's HTTP/1.1
 * client, against a model server that answers anything at all.
 *
 * Each input is one server's whole answer: a listener on this thread
 * accepts the client's connection, reads its request, writes the input and
 * closes. The first byte picks how: whole or in pieces, and whether the
 * client keeps idle connections (so an answer that leaves the connection
 * reusable or not is exercised too). Checks: done() comes exactly once,
 * within a bounded number of rounds, with a known result other than a
 * timeout (the server has closed: the 2 s deadline is only a backstop); a
 * failure has a message;
 * OK has a final status; the bytes handed to on_data never exceed what
 * was sent.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "workers/h1.h"

#define check(c) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); __builtin_trap(); } } while (0)

static int lfd = -1;
static struct tpo_h1_target tgt;
static char head[128];
static struct tpo_h1 *keep, *once;

struct run {
	int done, result;
	size_t data;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static size_t on_data(void *arg, const char *p, size_t len)
{
	struct run *r = arg;

	(void)p;
	r->data += len;
	return len;
}

static void done(struct tpo_h1_xfer *x, int result, const char *err)
{
	struct run *r = x->arg;

	check(!r->done);
	r->done = 1;
	r->result = result;
	check(result >= TPO_H1_OK && result <= TPO_H1_ABORTED);
	check(result == TPO_H1_OK || (err && err[0]));
	check(result != TPO_H1_OK || x->status >= 200);
}

static void setup(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	char url[64];
	const char *path;

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	check(lfd >= 0 && bind(lfd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(lfd, 16) == 0);
	check(getsockname(lfd, (struct sockaddr *)&a, &al) == 0);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1", ntohs(a.sin_port));
	check(tpo_h1_target_parse(&tgt, url, &path) == 0);
	snprintf(head, sizeof(head), "POST /v1 HTTP/1.1\r\nHost: %s\r\nContent-Length: ", tgt.name);
	tgt.head = head;
	tgt.head_len = strlen(head);
	keep = tpo_h1_new(4);
	once = tpo_h1_new(0);
	check(keep && once);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char body[] = "{\"prompt\":\"hi\"}";
	struct run r = { 0 };
	struct tpo_h1_xfer x = { 0 };
	struct tpo_h1 *h;
	char req[4096];
	size_t got = 0, off = 0, piece;
	int sfd = -1, closed = 0, rounds;

	if (size < 1)
		return 0;
	if (lfd < 0)
		setup();
	h = data[0] & 1 ? keep : once;
	piece = data[0] & 2 ? 1 + (data[0] >> 2) : SIZE_MAX;
	data++, size--;
	x.t = &tgt;
	x.body = body;
	x.body_len = sizeof(body) - 1;
	x.deadline_ns = now_ns() + 2000000000ull;
	x.on_data = on_data;
	x.done = done;
	x.arg = &r;
	check(tpo_h1_start(h, &x) == 0);
	for (rounds = 0; !r.done && rounds < 100000; rounds++) {
		tpo_h1_run(h, now_ns());
		if (r.done)
			break;
		if (sfd < 0 && !closed)
			sfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (sfd >= 0) {
			ssize_t n = recv(sfd, req + got % sizeof(req), sizeof(req) - got % sizeof(req), 0);
			if (n > 0)
				got += (size_t)n;
			/* the whole request is in once its body is */
			if (got >= x.body_len && off < size) {
				size_t k = size - off < piece ? size - off : piece;
				n = send(sfd, data + off, k, MSG_NOSIGNAL);
				if (n > 0)
					off += (size_t)n;
				else if (n < 0 && errno != EAGAIN)
					off = size;
			}
			if (off == size && got >= x.body_len) {
				close(sfd);
				sfd = -1;
				closed = 1;
			}
		}
		tpo_h1_wait(h, -1, 1);
	}
	check(r.done);
	/* The server always closes at once: only a missed EOF could wait for
	 * the deadline. */
	check(r.result != TPO_H1_TIMEOUT);
	check(r.data <= size);
	if (sfd >= 0)
		close(sfd);
	/* An idle connection the client kept is closed by our side now: the
	 * client notices on its next run (or reuses it and retries once). */
	return 0;
}
