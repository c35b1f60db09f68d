/*
 * fuzz_http — libFuzzer target for the front's HTTP/1.1 server layer
 * (stagebin/http.c over http_parser), through a real loopback socket.
 *
 * Each input is what one client sends on one connection before it shuts
 * down its side; the server runs on this thread's epoll loop and answers
 * every request (a plain answer, or a chunked stream for "/s", or an
 * error for "/e"). Checks: every request handed over is well formed
 * (NUL-terminated path, query, header strings and body, within the
 * limits), the client's bytes back begin with a status line, and the
 * connection always ends: the server closes it within a bounded number of
 * loop rounds (an input that left it hanging would trap), and no
 * connection is left behind.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "stagebin/http.h"

#define check(c) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); __builtin_trap(); } } while (0)

static struct tpo_http_server *srv;
static struct tpo_http_config cfg;
static int epfd = -1, port;

static void on_request(struct tpo_http_conn *c, struct tpo_http_req *req, void *arg)
{
	(void)arg;
	check(req->path && req->path[req->path_len] == 0 && strlen(req->path) == req->path_len);
	check(req->query && req->query[req->query_len] == 0);
	check(req->method_str && req->method_str[0]);
	check(req->nheaders <= cfg.max_headers);
	for (uint32_t i = 0; i < req->nheaders; i++) {
		const struct tpo_http_header *h = &req->headers[i];
		check(h->name[h->name_len] == 0 && h->value[h->value_len] == 0);
		check(h->name_len + h->value_len <= cfg.max_header_line);
	}
	check(req->body_len <= cfg.max_body_bytes && (!req->body || req->body[req->body_len] == 0));
	(void)tpo_http_header(req, "content-type");
	if (strcmp(req->path, "/s") == 0) {
		tpo_http_stream_begin(c, 200, "text/event-stream", NULL);
		tpo_http_stream_write(c, req->body ? req->body : "", req->body_len);
		tpo_http_stream_end(c);
	} else if (strcmp(req->path, "/e") == 0) {
		tpo_http_error_ex(c, 429, "busy \"now\"", "Retry-After: 1\r\n");
	} else {
		tpo_http_respond(c, 200, "text/plain", NULL, req->body ? req->body : "",
				 req->body_len);
	}
}

static void on_close(struct tpo_http_conn *c, void *arg)
{
	(void)c;
	(void)arg;
}

static void setup(void)
{
	static const struct tpo_http_callbacks cb = { on_request, on_close };

	tpo_http_config_default(&cfg);
	cfg.max_header_bytes = 2048;   /* small limits: reachable by the fuzzer */
	cfg.max_header_line = 512;
	cfg.max_headers = 16;
	cfg.max_body_bytes = 1024;
	epfd = epoll_create1(EPOLL_CLOEXEC);
	check(epfd >= 0);
	check(tpo_http_create(&srv, epfd, &cfg, &cb, NULL) == 0);
	check(tpo_http_listen(srv, "127.0.0.1:0") == 0);
	port = tpo_http_local_port(srv);
	check(port > 0);
}

static void pump(int timeout_ms)
{
	struct epoll_event evs[16];
	int n = epoll_wait(epfd, evs, 16, timeout_ms);

	for (int i = 0; i < n; i++)
		tpo_http_on_event(srv, &evs[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	char head[8];
	size_t off = 0, got = 0;
	int fd, eof = 0, shut = 0, rounds;

	if (epfd < 0)
		setup();
	a.sin_port = htons((uint16_t)port);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	check(fd >= 0);
	check(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 || errno == EINPROGRESS);
	/* The linger after an error answer is 1 s of loop rounds at most. */
	for (rounds = 0; !eof && rounds < 4000; rounds++) {
		char buf[65536];
		ssize_t r;

		if (off < size) {
			r = send(fd, data + off, size - off, MSG_NOSIGNAL);
			if (r > 0)
				off += (size_t)r;
			else if (r < 0 && errno != EAGAIN && errno != ENOTCONN)
				off = size;   /* the server closed on us: fine */
		}
		if (off == size && !shut)
			shut = shutdown(fd, SHUT_WR) == 0;
		pump(off < size ? 0 : 1);
		while ((r = recv(fd, buf, sizeof(buf), 0)) > 0) {
			if (got < sizeof(head))
				memcpy(head + got, buf, (size_t)r < sizeof(head) - got ?
				       (size_t)r : sizeof(head) - got);
			got += (size_t)r;
		}
		if (r == 0 || (r < 0 && errno != EAGAIN))
			eof = 1;
	}
	check(eof);
	check(got == 0 || (got >= 8 && memcmp(head, "HTTP/1.", 7) == 0));
	close(fd);
	for (rounds = 0; tpo_http_conns(srv) && rounds < 100; rounds++)
		pump(1);
	check(tpo_http_conns(srv) == 0);
	return 0;
}
