/*
 * test_h1.c — tpo-infer's HTTP/1.1 client (workers/h1.c) against a scripted
 * loopback server: a child process that answers each request it reads with
 * the next raw bytes of its script, then keeps, closes or resets the
 * connection. What a real server sends (chunked, 100 Continue, close-
 * delimited, kept-alive) and what a broken one does (garbage, bad chunk
 * sizes, two lengths, an answer cut short, a connection closed while idle)
 * each get a test; the server writes a byte to a pipe per connection it
 * accepts, so reuse is counted, not guessed.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workers/h1.h"

#define HANG_MS 20000

enum { KEEP, CLOSE, RESET, SILENT, CLOSE_LATER };

struct step {
	const char *bytes;     /* written in pieces of `piece` bytes (0: at once) */
	int then;              /* KEEP, CLOSE, RESET; SILENT: read, never answer */
};

static pid_t srv_pid = -1;
static int srv_port, accepts_fd = -1;

static void srv_stop(void)
{
	if (srv_pid > 0) {
		kill(srv_pid, SIGKILL);
		waitpid(srv_pid, NULL, 0);
	}
	srv_pid = -1;
	if (accepts_fd >= 0)
		close(accepts_fd);
	accepts_fd = -1;
}

TestSuite(h1, .fini = srv_stop, .timeout = 60);

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Reads one request (head and Content-Length body); 0 at EOF. */
static int read_request(int fd)
{
	char buf[65536];
	size_t n = 0;
	char *end;
	long len;

	for (;;) {
		ssize_t r = read(fd, buf + n, sizeof(buf) - 1 - n);
		if (r <= 0)
			return 0;
		n += (size_t)r;
		buf[n] = 0;
		end = strstr(buf, "\r\n\r\n");
		if (end)
			break;
	}
	{
		char *cl = strcasestr(buf, "\r\nContent-Length: ");
		len = cl ? strtol(cl + 18, NULL, 10) : 0;
	}
	while ((long)(n - (size_t)(end + 4 - buf)) < len) {
		ssize_t r = read(fd, buf + n, sizeof(buf) - 1 - n);
		if (r <= 0)
			return 0;
		n += (size_t)r;
	}
	return 1;
}

static void serve(int lfd, int afd, const struct step *s, int n, int piece)
{
	int fd = -1;

	for (int i = 0; i < n; i++) {
		if (fd < 0) {
			fd = accept(lfd, NULL, NULL);
			if (fd < 0)
				_exit(1);
			if (write(afd, "a", 1) != 1)
				_exit(1);
		}
		if (!read_request(fd)) {      /* the client closed it: take the next */
			close(fd);
			fd = -1;
			i--;
			continue;
		}
		if (s[i].then == SILENT) {
			pause();
			_exit(0);
		}
		for (size_t off = 0, len = strlen(s[i].bytes); off < len;) {
			size_t k = piece && len - off > (size_t)piece ? (size_t)piece : len - off;
			if (write(fd, s[i].bytes + off, k) != (ssize_t)k)
				_exit(1);
			off += k;
			if (piece)
				usleep(1000);
		}
		if (s[i].then == RESET) {
			struct linger l = { 1, 0 };
			setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
		}
		if (s[i].then == CLOSE_LATER)
			usleep(50000);       /* the client has it idle by then */
		if (s[i].then != KEEP) {
			close(fd);
			fd = -1;
		}
	}
	pause();
	_exit(0);
}

/* Starts the scripted server; its port in srv_port. */
static void srv_start(const struct step *s, int n, int piece)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	int lfd = socket(AF_INET, SOCK_STREAM, 0), p[2];

	cr_assert_geq(lfd, 0);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(listen(lfd, 16), 0);
	cr_assert_eq(getsockname(lfd, (struct sockaddr *)&a, &al), 0);
	srv_port = ntohs(a.sin_port);
	cr_assert_eq(pipe(p), 0);
	srv_pid = fork();
	cr_assert_geq(srv_pid, 0);
	if (srv_pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(p[0]);
		serve(lfd, p[1], s, n, piece);
	}
	close(lfd);
	close(p[1]);
	accepts_fd = p[0];
	fcntl(accepts_fd, F_SETFL, O_NONBLOCK);
}

static int accepts;

static int srv_accepts(void)
{
	char b[64];
	ssize_t r;

	while ((r = read(accepts_fd, b, sizeof(b))) > 0)
		accepts += (int)r;
	return accepts;
}

/* ---- the client side ----------------------------------------------------- */

struct res {
	int done, result;
	char err[256];
	char body[16384];
	size_t len;
	int refuse;            /* on_data refuses bytes */
};

static size_t on_data(void *arg, const char *p, size_t n)
{
	struct res *r = arg;

	if (r->refuse)
		return 0;
	cr_assert_lt(r->len + n, sizeof(r->body));
	memcpy(r->body + r->len, p, n);
	r->len += n;
	r->body[r->len] = 0;
	return n;
}

static void on_done(struct tpo_h1_xfer *x, int result, const char *err)
{
	struct res *r = x->arg;

	cr_assert_eq(r->done, 0, "done() twice");
	r->done = 1;
	r->result = result;
	snprintf(r->err, sizeof(r->err), "%s", err);
}

static struct tpo_h1_target tgt;

static void target(int port)
{
	char url[64];
	const char *path;
	static char head[128];

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1", port);
	cr_assert_eq(tpo_h1_target_parse(&tgt, url, &path), 0);
	cr_assert_str_eq(path, "/v1");
	snprintf(head, sizeof(head), "POST /v1 HTTP/1.1\r\nHost: %s\r\nContent-Length: ",
		 tgt.name);
	tgt.head = head;
	tgt.head_len = strlen(head);
}

/* The transfer run_one finished last: its status, ctype, retry_after_ms. */
static struct tpo_h1_xfer last_x;

/* One request through h; the outcome in r. */
static void run_one(struct tpo_h1 *h, struct res *r, uint64_t deadline_ms)
{
	struct tpo_h1_xfer x = { 0 };
	uint64_t t0 = now_ns();
	int refuse = r->refuse;

	memset(r, 0, sizeof(*r));
	r->refuse = refuse;
	x.t = &tgt;
	x.body = "{\"prompt\":\"hi\"}";
	x.body_len = strlen(x.body);
	x.connect_ns = t0 + 5000000000ull;
	x.deadline_ns = deadline_ms ? t0 + deadline_ms * 1000000ull : 0;
	x.on_data = on_data;
	x.done = on_done;
	x.arg = r;
	cr_assert_eq(tpo_h1_start(h, &x), 0);
	while (!r->done) {
		cr_assert_lt(now_ns() - t0, HANG_MS * 1000000ull, "the transfer hangs");
		cr_assert_eq(tpo_h1_wait(h, -1, 100), 0);
		tpo_h1_run(h, now_ns());
	}
	cr_assert_null(x.conn);
	r->done = x.status;    /* keep the status for the caller */
	last_x = x;
}

#define OK_HEAD "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"

Test(h1, length_delimited_answers_share_a_connection)
{
	static const struct step s[] = {
		{ OK_HEAD "Content-Length: 5\r\n\r\nhello", KEEP },
		{ "HTTP/1.1 503 Busy\r\nRetry-After: 2\r\nContent-Length: 4\r\n\r\nbusy", KEEP },
		{ "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", KEEP },
	};
	struct tpo_h1 *h = tpo_h1_new(4);
	struct res r = { 0 };

	srv_start(s, 3, 0);
	target(srv_port);
	run_one(h, &r, 0);
	cr_assert_eq(r.result, TPO_H1_OK, "%s", r.err);
	cr_assert_eq(r.done, 200);
	cr_assert_str_eq(r.body, "hello");
	run_one(h, &r, 0);
	cr_assert_eq(r.result, TPO_H1_OK, "%s", r.err);
	cr_assert_eq(r.done, 503);
	cr_assert_str_eq(r.body, "busy");
	run_one(h, &r, 0);
	cr_assert_eq(r.result, TPO_H1_OK, "%s", r.err);
	cr_assert_eq(r.len, 0);
	cr_assert_eq(srv_accepts(), 1, "three answers over %d connections", srv_accepts());
	tpo_h1_free(h);
}

Test(h1, chunked_in_pieces_with_extensions_trailers_and_headers)
{
	static const struct step s[] = {
		{ "HTTP/1.1 100 Continue\r\n\r\n"
		  "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
		  "Retry-After: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
		  "6;ext=1\r\ndata: \r\n"
		  "1A\r\n{\"text\":\"abcdefghijklm\"}\n\n\r\n"
		  "0\r\nX-Trailer: t\r\n\r\n", KEEP },
		{ OK_HEAD "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", KEEP },
	};
	struct tpo_h1 *h = tpo_h1_new(4);
	struct res r = { 0 };

	srv_start(s, 2, 3);      /* three bytes at a time */
	target(srv_port);
	run_one(h, &r, 0);
	cr_assert_eq(r.result, TPO_H1_OK, "%s", r.err);
	cr_assert_eq(last_x.status, 200, "the interim 100 was taken for the answer");
	cr_assert_str_eq(last_x.ctype, "text/event-stream; charset=utf-8");
	cr_assert_eq(last_x.retry_after_ms, 3000);
	cr_assert_str_eq(r.body, "data: {\"text\":\"abcdefghijklm\"}\n\n");
	run_one(h, &r, 0);
	cr_assert_eq(r.result, TPO_H1_OK, "%s", r.err);
	cr_assert_str_eq(r.body, "abc");
	cr_assert_eq(srv_accepts(), 1);
	tpo_h1_free(h);
}

Test(h1, close_delimited_answer_then_a_new_connection)
{
	static const struct step s[] = {
		{ "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":1}", CLOSE },
		{ OK_HEAD "Content-Length: 2\r\n\r\nok", KEEP },
	};
	struct tpo_h1 *h = tpo_h1_new(4);
	struct res r = { 0 };

	srv_start(s, 2, 0);
	target(srv_port);
	run_one(h, &r, 0);
	cr_assert_eq(r.result, TPO_H1_OK, "%s", r.err);
	cr_assert_str_eq(r.body, "{\"a\":1}");
	run_one(h, &r, 0);
	cr_assert_eq(r.result, TPO_H1_OK, "%s", r.err);
	cr_assert_str_eq(r.body, "ok");
	cr_assert_eq(srv_accepts(), 2);
	tpo_h1_free(h);
}

/* The server closes a kept-alive connection while it idles (its keep-alive
 * timeout) or just as the next request goes out: the request is sent again
 * over a new connection, once. */
Test(h1, connection_closed_while_idle_is_replaced)
{
	static const struct step s[] = {
		{ OK_HEAD "Content-Length: 1\r\n\r\na", CLOSE_LATER },
		{ OK_HEAD "Content-Length: 1\r\n\r\nb", KEEP },
	};
	struct tpo_h1 *h = tpo_h1_new(4);
	struct res r = { 0 };

	srv_start(s, 2, 0);
	target(srv_port);
	run_one(h, &r, 0);
	cr_assert_eq(r.result, TPO_H1_OK, "%s", r.err);
	usleep(100000);          /* the server has closed it; nobody polled */
	run_one(h, &r, 0);
	cr_assert_eq(r.result, TPO_H1_OK, "%s", r.err);
	cr_assert_str_eq(r.body, "b");
	cr_assert_eq(srv_accepts(), 2);
	tpo_h1_free(h);
}

/* Each malformed answer fails its transfer with a message saying what was
 * wrong, and the connection is not used again. */
static void assert_fails(const char *answer, int then, const char *want)
{
	struct step s[2] = { { answer, then }, { OK_HEAD "Content-Length: 1\r\n\r\nz", KEEP } };
	struct tpo_h1 *h = tpo_h1_new(4);
	struct res r = { 0 };

	accepts = 0;
	srv_start(s, 2, 0);
	target(srv_port);
	run_one(h, &r, 0);
	cr_assert_eq(r.result, TPO_H1_FAILED, "'%s' was accepted (%s)", answer, r.body);
	cr_assert(strstr(r.err, want), "'%s': the error is '%s', not '%s'", answer, r.err, want);
	run_one(h, &r, 0);
	cr_assert_eq(r.result, TPO_H1_OK, "after '%s': %s", answer, r.err);
	cr_assert_str_eq(r.body, "z");
	cr_assert_eq(srv_accepts(), 2, "the connection of a failed answer was reused");
	tpo_h1_free(h);
	srv_stop();
}

Test(h1, malformed_answers_fail_clearly)
{
	assert_fails("SMTP ready\r\n\r\n", KEEP, "malformed HTTP response");
	assert_fails("HTTP/1.1 2x0 OK\r\n\r\n", KEEP, "malformed HTTP response");
	/* a status below 100 is no status (http_parser takes 1-3 digits; found
	 * by fuzz_h1, where "20" ended the transfer as a success) */
	assert_fails("HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", KEEP, "malformed HTTP response");
	assert_fails("HTTP/1.1 0 OK\r\nContent-Length: 0\r\n\r\n", KEEP, "malformed HTTP response");
	assert_fails(OK_HEAD "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n", KEEP,
		     "malformed HTTP response");
	assert_fails(OK_HEAD "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", KEEP,
		     "malformed HTTP response");
	assert_fails(OK_HEAD "Content-Length: 10\r\n\r\nabc", CLOSE,
		     "closed the connection before the answer ended");
	assert_fails(OK_HEAD "Transfer-Encoding: chunked\r\n\r\n5\r\nab", RESET, "");
	assert_fails("", CLOSE, "closed the connection before the answer ended (0 bytes");
}

/* Bytes after a complete answer: the answer stands, the connection goes. */
Test(h1, bytes_after_the_answer_retire_the_connection)
{
	static const struct step s[] = {
		{ OK_HEAD "Content-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n\r\n", KEEP },
		{ OK_HEAD "Content-Length: 1\r\n\r\ny", KEEP },
	};
	struct tpo_h1 *h = tpo_h1_new(4);
	struct res r = { 0 };

	srv_start(s, 2, 0);
	target(srv_port);
	run_one(h, &r, 0);
	cr_assert_eq(r.result, TPO_H1_OK, "%s", r.err);
	cr_assert_str_eq(r.body, "x");
	run_one(h, &r, 0);
	cr_assert_eq(r.result, TPO_H1_OK, "%s", r.err);
	cr_assert_eq(srv_accepts(), 2);
	tpo_h1_free(h);
}

Test(h1, refused_silent_and_refusing_reader)
{
	static const struct step silent[] = { { "", SILENT } };
	static const struct step one[] = { { OK_HEAD "Content-Length: 3\r\n\r\nabc", KEEP },
					   { OK_HEAD "Content-Length: 1\r\n\r\nd", KEEP } };
	struct tpo_h1 *h = tpo_h1_new(4);
	struct res r = { 0 };
	int port;

	/* Nothing listens: connect refused. */
	{
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in a = { .sin_family = AF_INET,
					 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t al = sizeof(a);
		cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
		cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &al), 0);
		port = ntohs(a.sin_port);
		close(fd);
	}
	target(port);
	run_one(h, &r, 0);
	cr_assert_eq(r.result, TPO_H1_FAILED);
	cr_assert(strstr(r.err, "could not connect to 127.0.0.1:") &&
		  strstr(r.err, "refused"), "%s", r.err);

	/* A server that reads and never answers: the deadline ends it. */
	srv_start(silent, 1, 0);
	target(srv_port);
	run_one(h, &r, 100);
	cr_assert_eq(r.result, TPO_H1_TIMEOUT, "%s", r.err);
	cr_assert(strstr(r.err, "timed out"), "%s", r.err);
	srv_stop();

	/* The reader refuses the body: aborted, the connection closed. */
	accepts = 0;
	srv_start(one, 2, 0);
	target(srv_port);
	r.refuse = 1;
	run_one(h, &r, 0);
	cr_assert_eq(r.result, TPO_H1_ABORTED, "%s", r.err);
	r.refuse = 0;
	run_one(h, &r, 0);
	cr_assert_eq(r.result, TPO_H1_OK, "%s", r.err);
	cr_assert_eq(srv_accepts(), 2);
	tpo_h1_free(h);
}

/* tpo_h1_abort of a running transfer: no done(), the connection closed (the
 * server sees EOF), and the client serves the next one. */
Test(h1, abort_closes_the_connection)
{
	static const struct step s[] = { { "", SILENT } };
	struct tpo_h1 *h = tpo_h1_new(4);
	struct tpo_h1_xfer x = { 0 };
	struct res r = { 0 };

	srv_start(s, 1, 0);
	target(srv_port);
	x.t = &tgt;
	x.body = "{}";
	x.body_len = 2;
	x.on_data = on_data;
	x.done = on_done;
	x.arg = &r;
	cr_assert_eq(tpo_h1_start(h, &x), 0);
	for (int i = 0; i < 5; i++) {
		tpo_h1_wait(h, -1, 10);
		tpo_h1_run(h, now_ns());
	}
	cr_assert_eq(tpo_h1_running(h), 1);
	tpo_h1_abort(h, &x);
	cr_assert_null(x.conn);
	cr_assert_eq(tpo_h1_running(h), 0);
	tpo_h1_abort(h, &x);     /* a second abort is a no-op */
	tpo_h1_run(h, now_ns());
	cr_assert_eq(r.done, 0, "done() after abort");
	tpo_h1_free(h);
}

Test(h1, which_urls_are_ours)
{
	struct tpo_h1_target t;
	const char *path;
	static const char *const ours[] = {
		"http://127.0.0.1:8080", "http://10.1.2.3/v1", "HTTP://127.0.0.1:1/a?b=c",
		"http://[::1]:9000/v1", "http://192.168.0.1",
	};
	static const char *const curls[] = {
		"https://127.0.0.1:8080", "http://localhost:8080", "http://user:pw@127.0.0.1/",
		"http://127.0.0.1:/v1", "http://127.0.0.1:0", "http://127.0.0.1:65536",
		"http://127.1:80", "http://[::1/v1", "http://example.com/v1", "http://",
		"http://127.0.0.1/a b", "ftp://127.0.0.1/",
	};

	for (size_t i = 0; i < sizeof(ours) / sizeof(ours[0]); i++)
		cr_assert_eq(tpo_h1_target_parse(&t, ours[i], &path), 0, "%s", ours[i]);
	cr_assert_eq(tpo_h1_target_parse(&t, "http://[::1]:9000/v1", &path), 0);
	cr_assert_str_eq(path, "/v1");
	cr_assert_str_eq(t.name, "[::1]:9000");
	cr_assert_eq(t.addr.ss_family, AF_INET6);
	cr_assert_eq(tpo_h1_target_parse(&t, "http://10.1.2.3", &path), 0);
	cr_assert_str_eq(path, "");
	cr_assert_eq(ntohs(((struct sockaddr_in *)&t.addr)->sin_port), 80);
	for (size_t i = 0; i < sizeof(curls) / sizeof(curls[0]); i++)
		cr_assert_eq(tpo_h1_target_parse(&t, curls[i], &path), -EPROTONOSUPPORT, "%s",
			     curls[i]);
}
