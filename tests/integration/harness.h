/*
 * harness.h — integration tests against the real supervisor: start an
 * instance as a child process (binaries from $TPO_BUILD, default "build"),
 * talk HTTP/1.1 to its front over raw sockets, read its stats segment, stop
 * it and check that it left nothing behind.
 *
 * Header-only, every function static and marked unused so each test file
 * takes what it needs. Timeouts here are hang detectors, never assertions
 * about speed: H_HANG_MS bounds any single wait.
 */
#ifndef TPO_IT_HARNESS_H
#define TPO_IT_HARNESS_H

#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shm/ring.h"
#include "shm/ringset.h"
#include "shm/seg.h"
#include "shm/stats.h"
#include "stagebin/textproc.h"
#include "workers/json.h"

#define H_FN static __attribute__((unused))
#define H_HANG_MS 30000

/* ---- time, files ------------------------------------------------------- */

H_FN uint64_t h_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

H_FN void h_sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

H_FN const char *h_build(void)
{
	const char *b = getenv("TPO_BUILD");

	return b && *b ? b : "build";
}

H_FN int h_sanitized(void)
{
	const char *s = getenv("TPO_SANITIZED");

	return s && *s && strcmp(s, "0") != 0;
}

H_FN void h_write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	cr_assert_not_null(f, "cannot write %s: %s", path, strerror(errno));
	fputs(text, f);
	fclose(f);
}

/* Reads a whole small file into buf (NUL-terminated); length or -1. */
H_FN ssize_t h_read_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t n = 0;
	ssize_t r;

	if (fd < 0)
		return -1;
	while (n + 1 < cap && (r = read(fd, buf + n, cap - 1 - n)) > 0)
		n += (size_t)r;
	close(fd);
	buf[n] = 0;
	return (ssize_t)n;
}

/* ---- processes ---------------------------------------------------------- */

/* 1 once pid no longer exists (or is a zombie nobody reaped yet). */
H_FN int h_pid_gone(pid_t pid)
{
	char path[64], buf[512], *p;

	if (pid <= 0)
		return 1;
	if (kill(pid, 0) < 0 && errno == ESRCH)
		return 1;
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (h_read_file(path, buf, sizeof(buf)) < 0)
		return 1;
	p = strrchr(buf, ')');
	return p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

/* waitpid with a hang detector; the raw status, or -1 if it did not exit. */
H_FN int h_wait_exit(pid_t pid, int limit_ms)
{
	uint64_t end = h_now_ms() + (uint64_t)limit_ms;
	int status;

	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			return status;
		if (r < 0)
			return -1;
		if (h_now_ms() > end)
			return -1;
		h_sleep_ms(10);
	}
}

/*
 * Runs argv (argv[0] a path) to completion with stdout and stderr captured
 * in out; returns its exit code (128 + signal if killed). A run longer than
 * limit_ms is killed and fails the test.
 */
H_FN int h_run(char *const argv[], char *out, size_t cap, int limit_ms)
{
	int p[2], status;
	size_t n = 0;
	uint64_t end = h_now_ms() + (uint64_t)limit_ms;
	pid_t pid;

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		dup2(p[1], 1);
		dup2(p[1], 2);
		execv(argv[0], argv);
		_exit(127);
	}
	close(p[1]);
	for (;;) {
		struct pollfd pf = { .fd = p[0], .events = POLLIN };
		char tmp[4096];
		int left = (int)(end - h_now_ms());
		ssize_t r;

		if ((int64_t)(end - h_now_ms()) <= 0 || poll(&pf, 1, left) == 0) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			close(p[0]);
			cr_assert_fail("%s did not finish within %d ms", argv[0], limit_ms);
		}
		r = read(p[0], tmp, sizeof(tmp));
		if (r <= 0)
			break;
		if (out && n + 1 < cap) {
			size_t k = (size_t)r < cap - 1 - n ? (size_t)r : cap - 1 - n;
			memcpy(out + n, tmp, k);
			n += k;
		}
	}
	if (out && cap)
		out[n] = 0;
	close(p[0]);
	status = h_wait_exit(pid, limit_ms);
	cr_assert_neq(status, -1, "%s did not exit", argv[0]);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* tpo-supervisor with up to 6 arguments; exit code, output in out. */
H_FN int h_sup(char *out, size_t cap, const char *a1, const char *a2, const char *a3,
	       const char *a4, const char *a5, const char *a6)
{
	char path[4096];
	char *argv[8] = { path, (char *)a1, (char *)a2, (char *)a3, (char *)a4,
			  (char *)a5, (char *)a6, NULL };

	snprintf(path, sizeof(path), "%s/tpo-supervisor", h_build());
	return h_run(argv, out, cap, H_HANG_MS * 2);
}

/* ---- network ------------------------------------------------------------ */

/* A port that was free a moment ago (bind :0, read it, close). */
H_FN int h_free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port;

	cr_assert_geq(fd, 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

/* Connects to 127.0.0.1:port; the fd (reads time out after H_HANG_MS) or
 * -errno. */
H_FN int h_connect_raw(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct timeval tv = { H_HANG_MS / 1000, 0 };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	if (fd < 0)
		return -errno;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

H_FN int h_connect(int port)
{
	int fd = h_connect_raw(port);

	cr_assert_geq(fd, 0, "connect 127.0.0.1:%d: %s", port, strerror(-fd));
	return fd;
}

H_FN int h_send_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;

	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/*
 * A response being read: the head, then the body decoded incrementally
 * (Content-Length, chunked, or until EOF), so a stream can be consumed one
 * SSE event at a time.
 */
struct h_conn {
	int fd;
	int status;
	char head[16384];
	size_t head_len;
	int chunked;
	int64_t clen;                /* -1: none */
	int body_done;               /* the whole body was received */
	int error;                   /* errno of a failed read, EAGAIN: timeout */
	char *raw;                   /* received, not yet decoded */
	size_t raw_len, raw_cap;
	char *body;                  /* decoded body */
	size_t body_len, body_cap;
	size_t ev_pos;               /* SSE: first byte not yet returned */
	int64_t chunk_left;          /* chunked: bytes left in chunk, -1 size line next */
};

H_FN void h_buf_add(char **b, size_t *len, size_t *cap, const char *s, size_t n)
{
	if (*len + n + 1 > *cap) {
		size_t c = *cap ? *cap : 4096;
		while (c < *len + n + 1)
			c *= 2;
		*b = realloc(*b, c);
		cr_assert_not_null(*b);
		*cap = c;
	}
	memcpy(*b + *len, s, n);
	*len += n;
	(*b)[*len] = 0;
}

H_FN void h_conn_free(struct h_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	free(c->raw);
	free(c->body);
	c->raw = c->body = NULL;
}

/* Value of header name (case-insensitive) into val; 1 found, 0 not. */
H_FN int h_header(const struct h_conn *c, const char *name, char *val, size_t cap)
{
	size_t nl = strlen(name);
	const char *p = strstr(c->head, "\r\n");

	while (p && p[2]) {
		p += 2;
		if (!strncasecmp(p, name, nl) && p[nl] == ':') {
			const char *v = p + nl + 1, *e = strstr(v, "\r\n");
			size_t n;
			while (*v == ' ' || *v == '\t')
				v++;
			n = e ? (size_t)(e - v) : strlen(v);
			if (n >= cap)
				n = cap - 1;
			memcpy(val, v, n);
			val[n] = 0;
			return 1;
		}
		p = strstr(p, "\r\n");
	}
	return 0;
}

/* Decodes what raw holds into body; stops at an incomplete piece. */
H_FN void h_decode(struct h_conn *c)
{
	size_t used = 0;

	if (!c->chunked) {
		size_t n = c->raw_len;
		if (c->clen >= 0 && (int64_t)(c->body_len + n) > c->clen)
			n = (size_t)(c->clen - (int64_t)c->body_len);
		h_buf_add(&c->body, &c->body_len, &c->body_cap, c->raw, n);
		/* Bytes past the body are the next (pipelined) response's. */
		memmove(c->raw, c->raw + n, c->raw_len - n);
		c->raw_len -= n;
		if (c->clen >= 0 && (int64_t)c->body_len >= c->clen)
			c->body_done = 1;
		return;
	}
	while (!c->body_done) {
		char *p = c->raw + used;
		size_t avail = c->raw_len - used;
		if (c->chunk_left == -2) {
			/* After the last chunk: no trailers, the empty line. */
			if (avail < 2)
				break;
			cr_assert_eq(memcmp(p, "\r\n", 2), 0, "bad chunked body end");
			used += 2;
			c->body_done = 1;
		} else if (c->chunk_left < 0) {
			char *e = memmem(p, avail, "\r\n", 2);
			if (!e)
				break;
			c->chunk_left = strtoll(p, NULL, 16);
			used += (size_t)(e - p) + 2;
			if (c->chunk_left == 0)
				c->chunk_left = -2;
		} else if (c->chunk_left > 0) {
			size_t n = avail < (size_t)c->chunk_left ? avail : (size_t)c->chunk_left;
			if (!n)
				break;
			h_buf_add(&c->body, &c->body_len, &c->body_cap, p, n);
			used += n;
			c->chunk_left -= (int64_t)n;
		} else {
			if (avail < 2)
				break;
			used += 2;           /* CRLF after chunk data */
			c->chunk_left = -1;
		}
	}
	memmove(c->raw, c->raw + used, c->raw_len - used);
	c->raw_len -= used;
}

/* Reads once from the socket; 1 progress, 0 EOF, -1 error/timeout. */
H_FN int h_read_some(struct h_conn *c)
{
	char tmp[65536];
	ssize_t r;

	do
		r = recv(c->fd, tmp, sizeof(tmp), 0);
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		c->error = errno;    /* EAGAIN: the hang detector fired */
		return -1;
	}
	if (r == 0)
		return 0;
	h_buf_add(&c->raw, &c->raw_len, &c->raw_cap, tmp, (size_t)r);
	return 1;
}

/* Reads the status line and headers; 0, or -1 if the connection ended first. */
H_FN int h_read_head(struct h_conn *c)
{
	char *e, v[64];

	c->clen = -1;
	c->chunk_left = -1;
	for (;;) {
		e = c->raw ? memmem(c->raw, c->raw_len, "\r\n\r\n", 4) : NULL;
		if (e)
			break;
		if (h_read_some(c) <= 0)
			return -1;
	}
	c->head_len = (size_t)(e - c->raw) + 4;
	cr_assert_lt(c->head_len, sizeof(c->head));
	memcpy(c->head, c->raw, c->head_len);
	c->head[c->head_len] = 0;
	memmove(c->raw, c->raw + c->head_len, c->raw_len - c->head_len);
	c->raw_len -= c->head_len;
	if (sscanf(c->head, "HTTP/1.%*d %d", &c->status) != 1)
		return -1;
	if (h_header(c, "transfer-encoding", v, sizeof(v)) && strcasestr(v, "chunked"))
		c->chunked = 1;
	else if (h_header(c, "content-length", v, sizeof(v)))
		c->clen = strtoll(v, NULL, 10);
	if (c->status == 204 || c->status == 304 || c->clen == 0)
		c->body_done = 1;
	h_decode(c);
	return 0;
}

/* Reads until the body is complete (or EOF for a body without length). */
H_FN int h_read_body(struct h_conn *c)
{
	while (!c->body_done) {
		int r = h_read_some(c);
		if (r < 0)
			return -1;
		if (r == 0) {
			if (!c->chunked && c->clen < 0)
				c->body_done = 1;
			return c->body_done ? 0 : -1;
		}
		h_decode(c);
	}
	return 0;
}

/* Sends one request on a new connection (the response is not read). */
H_FN void h_begin(struct h_conn *c, int port, const char *method, const char *path,
		  const char *headers, const char *body, size_t body_len)
{
	char req[8192];
	int n;

	memset(c, 0, sizeof(*c));
	c->fd = h_connect(port);
	n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
		     "Connection: close\r\n%s", method, path, headers ? headers : "");
	if (body)
		n += snprintf(req + n, sizeof(req) - (size_t)n,
			      "Content-Type: application/json\r\nContent-Length: %zu\r\n", body_len);
	n += snprintf(req + n, sizeof(req) - (size_t)n, "\r\n");
	cr_assert_lt(n, (int)sizeof(req));
	cr_assert_eq(h_send_all(c->fd, req, (size_t)n), 0);
	if (body && body_len)
		cr_assert_eq(h_send_all(c->fd, body, body_len), 0);
}

/* Sends one request on a new connection and reads its head. */
H_FN void h_open(struct h_conn *c, int port, const char *method, const char *path,
		 const char *headers, const char *body, size_t body_len)
{
	h_begin(c, port, method, path, headers, body, body_len);
	cr_assert_eq(h_read_head(c), 0, "%s %s: no response head", method, path);
}

/* A whole request/response; body in c->body (NUL-terminated). */
H_FN void h_http(struct h_conn *c, int port, const char *method, const char *path,
		 const char *headers, const char *body)
{
	h_open(c, port, method, path, headers, body, body ? strlen(body) : 0);
	cr_assert_eq(h_read_body(c), 0, "%s %s: incomplete body", method, path);
	if (!c->body)
		h_buf_add(&c->body, &c->body_len, &c->body_cap, "", 0);
}

/*
 * Next SSE event's data into data (NUL-terminated, multi-line data joined
 * with "\n"). 1 an event, 0 the body ended, -1 error or hang.
 */
H_FN int h_sse_next(struct h_conn *c, char *data, size_t cap)
{
	for (;;) {
		char *s = c->body ? c->body + c->ev_pos : NULL;
		char *e = s ? strstr(s, "\n\n") : NULL;
		if (e) {
			size_t n = 0;
			char *line = s;
			data[0] = 0;
			while (line < e) {
				char *le = memchr(line, '\n', (size_t)(e - line) + 1);
				if (!strncmp(line, "data:", 5)) {
					char *v = line + 5;
					size_t k;
					if (*v == ' ')
						v++;
					k = (size_t)(le - v);
					if (n && n + 1 < cap)
						data[n++] = '\n';
					if (n + k >= cap)
						k = cap - 1 - n;
					memcpy(data + n, v, k);
					n += k;
					data[n] = 0;
				}
				line = le + 1;
			}
			c->ev_pos = (size_t)(e - c->body) + 2;
			return 1;
		}
		if (c->body_done)
			return 0;
		{
			int r = h_read_some(c);
			if (r < 0)
				return -1;
			if (r == 0)
				return c->chunked ? -1 : 0;
			h_decode(c);
		}
	}
}

/* ---- JSON --------------------------------------------------------------- */

struct h_json {
	const char *js;
	jsmntok_t *t;
	int n;
};

/* Parses strictly; 0 or -1 (not JSON). */
H_FN int h_json_parse(struct h_json *j, const char *js)
{
	j->js = js;
	j->t = NULL;
	j->n = tpo_json_tokenize(js, strlen(js), &j->t, NULL);
	return j->n > 0 ? 0 : -1;
}

H_FN void h_json_free(struct h_json *j)
{
	free(j->t);
	j->t = NULL;
}

/* Token of a dotted path ("choices.0.delta.content"), or -1. */
H_FN int h_json_at(const struct h_json *j, const char *path)
{
	char comp[128];
	int cur = 0;

	while (*path) {
		const char *d = strchr(path, '.');
		size_t n = d ? (size_t)(d - path) : strlen(path);
		int i, found = -1;
		if (n >= sizeof(comp))
			return -1;
		memcpy(comp, path, n);
		comp[n] = 0;
		path += n + (d ? 1 : 0);
		if (j->t[cur].type == JSMN_OBJECT) {
			i = cur + 1;
			for (int k = 0; k < j->t[cur].size && i > 0 && i < j->n; k++) {
				if (tpo_json_tok_eq(j->js, &j->t[i], comp)) {
					found = i + 1;
					break;
				}
				i = tpo_json_skip(j->t, j->n, i);
			}
		} else if (j->t[cur].type == JSMN_ARRAY) {
			int idx = atoi(comp);
			if (idx < 0 || idx >= j->t[cur].size)
				return -1;
			i = cur + 1;
			for (int k = 0; k < idx && i > 0; k++)
				i = tpo_json_skip(j->t, j->n, i);
			found = i > 0 && i < j->n ? i : -1;
		}
		if (found < 0)
			return -1;
		cur = found;
	}
	return cur;
}

/* String at path into dst; its length, or -1 if absent / not a string. */
H_FN int h_json_str(const struct h_json *j, const char *path, char *dst, size_t cap)
{
	int i = h_json_at(j, path);

	if (i < 0)
		return -1;
	return tpo_json_get_string(j->js, &j->t[i], dst, cap);
}

/* Integer at path, or -1. */
H_FN int64_t h_json_int(const struct h_json *j, const char *path)
{
	int64_t v;
	int i = h_json_at(j, path);

	if (i < 0 || tpo_json_get_int64(j->js, &j->t[i], &v) < 0)
		return -1;
	return v;
}

H_FN int h_json_null(const struct h_json *j, const char *path)
{
	int i = h_json_at(j, path);

	return i >= 0 && tpo_json_is_null(j->js, &j->t[i]);
}

/* Size of the array or object at path, or -1. */
H_FN int h_json_size(const struct h_json *j, const char *path)
{
	int i = h_json_at(j, path);

	return i < 0 ? -1 : j->t[i].size;
}

/* Asserts an OpenAI-style error body: {"error":{"message":"...","type":"..."}}. */
H_FN void h_assert_oai_error(const char *body, const char *want_in_message)
{
	struct h_json j;
	char msg[1024], type[64];

	cr_assert_eq(h_json_parse(&j, body), 0, "error body is not JSON: %s", body);
	cr_assert_gt(h_json_str(&j, "error.message", msg, sizeof(msg)), 0,
		     "no error.message in %s", body);
	cr_assert_gt(h_json_str(&j, "error.type", type, sizeof(type)), 0,
		     "no error.type in %s", body);
	cr_assert_geq(h_json_at(&j, "error.code"), 0, "no error.code in %s", body);
	if (want_in_message)
		cr_assert_not_null(strstr(msg, want_in_message),
				   "error message '%s' lacks '%s'", msg, want_in_message);
	h_json_free(&j);
}

/* ---- an instance -------------------------------------------------------- */

struct h_inst {
	char name[40];
	int port;
	pid_t pid;
	char cfg[128];
	char log[128];
	int nlanes;
	int stopped;
	int crashes_ok;              /* the test kills or crashes stages */
	int busy_ok;                 /* requests may still be in flight at stop */
};

/* The instances a test started, for the cleanup fixture. */
static struct h_inst *h_live[8];

H_FN void h_register(struct h_inst *in)
{
	for (int i = 0; i < 8; i++)
		if (!h_live[i] || h_live[i] == in) {
			h_live[i] = in;
			return;
		}
}

H_FN void h_print_log(const struct h_inst *in)
{
	static char buf[65536];
	ssize_t n = h_read_file(in->log, buf, sizeof(buf));

	if (n > 0)
		fprintf(stderr, "---- %s ----\n%s---- end ----\n", in->log, buf);
}

H_FN int h_ready(int port)
{
	struct h_conn c;
	char req[] = "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
	int status = -1;

	memset(&c, 0, sizeof(c));
	c.fd = h_connect_raw(port);
	if (c.fd < 0)
		return 0;
	if (h_send_all(c.fd, req, sizeof(req) - 1) == 0 && h_read_head(&c) == 0)
		status = c.status;
	h_conn_free(&c);
	return status == 200;
}

/* Waits for GET /readyz == 200 while the supervisor is alive. */
H_FN void h_wait_ready(struct h_inst *in)
{
	uint64_t end = h_now_ms() + H_HANG_MS;
	int status;

	while (!h_ready(in->port)) {
		if (waitpid(in->pid, &status, WNOHANG) == in->pid) {
			in->stopped = 1;
			h_print_log(in);
			cr_assert_fail("supervisor exited early with status %d", status);
		}
		if (h_now_ms() > end) {
			h_print_log(in);
			cr_assert_fail("instance %s not ready after %d ms", in->name, H_HANG_MS);
		}
		h_sleep_ms(20);
	}
}

H_FN void h_wait_all_up(const struct h_inst *in);

/*
 * Starts tpo-supervisor start --name it<pid>_<tag> --listen 127.0.0.1:<port>
 * (0: a free one) [-c <cfg_json written to /tmp>] with env_kv ("NAME=value",
 * may be NULL) added to its environment; returns once /readyz says 200 and
 * every unit runs, unless wait is 0.
 */
H_FN void h_launch(struct h_inst *in, const char *tag, const char *cfg_json,
		   const char *env_kv, int port, int wait)
{
	char listen[64], path[4096];
	int fd;

	memset(in, 0, sizeof(*in));
	snprintf(in->name, sizeof(in->name), "it%d_%s", (int)getpid(), tag);
	in->port = port ? port : h_free_port();
	snprintf(listen, sizeof(listen), "127.0.0.1:%d", in->port);
	snprintf(in->log, sizeof(in->log), "/tmp/tpo-it.%s.log", in->name);
	if (cfg_json) {
		snprintf(in->cfg, sizeof(in->cfg), "/tmp/tpo-it.%s.json", in->name);
		h_write_file(in->cfg, cfg_json);
	}
	snprintf(path, sizeof(path), "%s/tpo-supervisor", h_build());
	fd = open(in->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	in->pid = fork();
	cr_assert_geq(in->pid, 0);
	if (in->pid == 0) {
		/* If the test dies, the instance drains and cleans up. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		dup2(fd, 1);
		dup2(fd, 2);
		if (env_kv)
			putenv((char *)env_kv);
		if (cfg_json)
			execl(path, path, "start", "-c", in->cfg, "--name", in->name,
			      "--listen", listen, (char *)NULL);
		else
			execl(path, path, "start", "--name", in->name, "--listen", listen,
			      (char *)NULL);
		_exit(127);
	}
	close(fd);
	h_register(in);
	if (wait) {
		h_wait_ready(in);
		h_wait_all_up(in);
	}
}

H_FN void h_start_ex(struct h_inst *in, const char *tag, const char *cfg_json,
		     const char *env_kv, int wait)
{
	h_launch(in, tag, cfg_json, env_kv, 0, wait);
}

H_FN void h_start(struct h_inst *in, const char *tag, const char *cfg_json)
{
	h_start_ex(in, tag, cfg_json, NULL, 1);
}

H_FN void h_stats_attach(const struct h_inst *in, struct tpo_stats *st)
{
	uint64_t end = h_now_ms() + H_HANG_MS;
	int err;

	memset(st, 0, sizeof(*st));
	/* Not created or not published yet right after a start. */
	while (((err = tpo_stats_attach(st, in->name, 0)) == -EAGAIN || err == -ENOENT) &&
	       h_now_ms() < end)
		h_sleep_ms(10);
	cr_assert_eq(err, 0, "attach stats of %s: %s", in->name, tpo_seg_strerror(err));
}

/* A consistent snapshot of a process slot (retries a busy seqlock). */
H_FN void h_proc(const struct tpo_stats *st, int stage, int lane, struct tpo_proc_snapshot *p)
{
	uint64_t end = h_now_ms() + H_HANG_MS;
	int err;

	while ((err = tpo_stats_read_proc(st, stage, lane, p)) == -EAGAIN && h_now_ms() < end)
		h_sleep_ms(1);
	cr_assert_eq(err, 0, "read proc %d/%d: %d", stage, lane, err);
}

/* Polls a process slot until want requests are in flight there (or H_HANG_MS
 * passes); returns the last count seen, for the caller to assert on. */
H_FN int64_t h_wait_in_flight(const struct tpo_stats *st, int stage, int lane, int64_t want)
{
	uint64_t end = h_now_ms() + H_HANG_MS;
	struct tpo_proc_snapshot p;

	for (;;) {
		h_proc(st, stage, lane, &p);
		if (p.in_flight == want || h_now_ms() >= end)
			return p.in_flight;
		h_sleep_ms(5);
	}
}

H_FN void h_info(const struct tpo_stats *st, struct tpo_stats_info *info)
{
	uint64_t end = h_now_ms() + H_HANG_MS;
	int err;

	while ((err = tpo_stats_read_info(st, info)) == -EAGAIN && h_now_ms() < end)
		h_sleep_ms(1);
	cr_assert_eq(err, 0);
}

/* Every stage pid of the instance (stage * 16 + lane), 0 where none. */
H_FN int h_stage_pids(const struct h_inst *in, pid_t pids[TPO_NSTAGES * TPO_MAX_LANES])
{
	struct tpo_stats st;
	struct tpo_stats_info info;
	int n = 0;

	h_stats_attach(in, &st);
	h_info(&st, &info);
	memset(pids, 0, sizeof(pid_t) * TPO_NSTAGES * TPO_MAX_LANES);
	for (int s = 0; s < TPO_NSTAGES; s++)
		for (uint32_t l = 0; l < info.nlanes; l++) {
			struct tpo_proc_snapshot p;
			h_proc(&st, s, (int)l, &p);
			pids[s * TPO_MAX_LANES + (int)l] = p.pid;
			n += p.pid > 0;
		}
	tpo_stats_close(&st);
	return n;
}

/*
 * /readyz says 200 once one lane is up; this waits for every unit of every
 * lane to run a process that has started (claimed its stats slot, so it is
 * pinned, attached and serving).
 */
H_FN void h_wait_all_up(const struct h_inst *in)
{
	struct tpo_stats st;
	struct tpo_stats_info info;
	uint64_t end = h_now_ms() + H_HANG_MS;
	int up;

	h_stats_attach(in, &st);
	h_info(&st, &info);
	do {
		up = 1;
		for (int s = 0; s < TPO_NSTAGES && up; s++)
			for (uint32_t l = 0; l < info.nlanes && up; l++) {
				struct tpo_proc_snapshot p;
				h_proc(&st, s, (int)l, &p);
				up = p.state == TPO_UNIT_OFF ||
				     (p.state == TPO_UNIT_RUNNING && p.pid > 0 && p.child_pid == p.pid);
			}
		if (!up)
			h_sleep_ms(5);
	} while (!up && h_now_ms() < end);
	tpo_stats_close(&st);
	cr_assert(up, "not every unit of %s came up", in->name);
}

/* 1 if any /dev/shm/tpo.<name>.* exists. */
H_FN int h_shm_left(const char *name)
{
	char prefix[64];
	DIR *d = opendir("/dev/shm");
	struct dirent *e;
	int found = 0;

	if (!d)
		return 0;
	snprintf(prefix, sizeof(prefix), "tpo.%s.", name);
	while ((e = readdir(d)))
		if (!strncmp(e->d_name, prefix, strlen(prefix)))
			found = 1;
	closedir(d);
	return found;
}

H_FN void h_assert_pids_gone(const pid_t *pids, int n)
{
	uint64_t end = h_now_ms() + H_HANG_MS;

	for (int i = 0; i < n; i++) {
		if (pids[i] <= 0)
			continue;
		while (!h_pid_gone(pids[i]) && h_now_ms() < end)
			h_sleep_ms(10);
		cr_assert(h_pid_gone(pids[i]), "stage process %d still exists", (int)pids[i]);
	}
}

/* Cleanup of the instance's files in /tmp. */
H_FN void h_unlink_files(const struct h_inst *in)
{
	if (in->cfg[0])
		unlink(in->cfg);
	unlink(in->log);
}

/*
 * Asserts the instance's log holds no sanitizer report and, unless the test
 * crashes stages on purpose, no stage crash or unexpected exit.
 */
H_FN void h_check_log(const struct h_inst *in)
{
	static char buf[1 << 20];
	static const char *const bad[] = {
		"AddressSanitizer", "LeakSanitizer", "runtime error:", "ThreadSanitizer",
	};
	static const char *const crash[] = {
		"killed by signal", "exited with status", "did not stop in time",
		"no heartbeat", "fatal:",
	};

	if (h_read_file(in->log, buf, sizeof(buf)) < 0)
		return;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (strstr(buf, bad[i])) {
			h_print_log(in);
			cr_assert_fail("sanitizer report in %s", in->log);
		}
	for (size_t i = 0; !in->crashes_ok && i < sizeof(crash) / sizeof(crash[0]); i++)
		if (strstr(buf, crash[i])) {
			h_print_log(in);
			cr_assert_fail("unexpected '%s' in the log", crash[i]);
		}
}

/*
 * Once every client is done, every request must have ended everywhere: no
 * stage holds one (in-flight gauges 0) and every ring is empty. Polls with
 * the hang detector (stages publish on their ticks).
 */
H_FN void h_assert_idle(const struct h_inst *in)
{
	struct tpo_stats st;
	struct tpo_ringset rs;
	struct tpo_stats_info info;
	uint64_t end = h_now_ms() + H_HANG_MS;
	char what[128];

	h_stats_attach(in, &st);
	h_info(&st, &info);
	cr_assert_eq(tpo_ringset_attach(&rs, in->name), 0);
	for (;;) {
		what[0] = 0;
		for (int s = 0; s < TPO_NSTAGES && !what[0]; s++)
			for (uint32_t l = 0; l < info.nlanes; l++) {
				struct tpo_proc_snapshot p;
				h_proc(&st, s, (int)l, &p);
				if (p.in_flight != 0) {
					snprintf(what, sizeof(what), "%s[%u] holds %lld request(s)",
						 tpo_stats_stage_name(s), l, (long long)p.in_flight);
					break;
				}
			}
		for (uint32_t i = 0; i < rs.hdr->nrings && !what[0]; i++) {
			const struct tpo_ringset_ent *e = &rs.ent[i];
			const struct tpo_ring_shm *r =
				(const void *)((const uint8_t *)rs.seg.base + e->offset);
			uint64_t h = atomic_load(&r->head), t = atomic_load(&r->tail);
			if (h != t)
				snprintf(what, sizeof(what), "ring %s[%u] -> %s[%u] holds %llu bytes",
					 tpo_stage_name(e->from_stage), e->from_lane,
					 tpo_stage_name(e->to_stage), e->to_lane,
					 (unsigned long long)(h - t));
		}
		if (!what[0] || h_now_ms() > end)
			break;
		h_sleep_ms(10);
	}
	tpo_ringset_close(&rs);
	tpo_stats_close(&st);
	cr_assert_eq(what[0], 0, "instance %s not idle: %s", in->name, what);
}

/*
 * SIGTERM, wait; asserts exit 0, no segment and no stage process left, and
 * a clean log.
 */
H_FN void h_stop(struct h_inst *in)
{
	pid_t pids[TPO_NSTAGES * TPO_MAX_LANES];
	int status;

	if (!in->busy_ok)
		h_assert_idle(in);
	h_stage_pids(in, pids);
	cr_assert_eq(kill(in->pid, SIGTERM), 0);
	status = h_wait_exit(in->pid, H_HANG_MS * 2);
	if (status == -1) {
		kill(in->pid, SIGKILL);
		waitpid(in->pid, NULL, 0);
		in->stopped = 1;
		h_print_log(in);
		cr_assert_fail("supervisor did not stop");
	}
	in->stopped = 1;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		h_print_log(in);
	cr_assert(WIFEXITED(status), "supervisor killed by signal %d", WTERMSIG(status));
	cr_assert_eq(WEXITSTATUS(status), 0, "supervisor exit status %d", WEXITSTATUS(status));
	cr_assert_not(h_shm_left(in->name), "segments of %s left in /dev/shm", in->name);
	h_assert_pids_gone(pids, TPO_NSTAGES * TPO_MAX_LANES);
	h_check_log(in);
	h_unlink_files(in);
}

/* Fixture fini: whatever a failed test left running is stopped. */
H_FN void h_cleanup(void)
{
	for (int i = 0; i < 8; i++) {
		struct h_inst *in = h_live[i];
		if (!in || in->stopped || in->pid <= 0)
			continue;
		kill(in->pid, SIGTERM);
		if (h_wait_exit(in->pid, H_HANG_MS) == -1) {
			kill(in->pid, SIGKILL);
			waitpid(in->pid, NULL, 0);
		}
		in->stopped = 1;
		tpo_seg_sweep(in->name, 0);
		h_print_log(in);
		h_unlink_files(in);
	}
}

/* ---- requests ------------------------------------------------------------ */

/* A chat body with one user message (content must need no escaping); a
 * streamed one asks for the usage chunk, which h_read_stream requires. */
H_FN void h_chat_body(char *buf, size_t cap, const char *content, int stream,
		      const char *more)
{
	snprintf(buf, cap, "{\"model\":\"tpo-mock\",\"stream\":%s,\"messages\":"
		 "[{\"role\":\"user\",\"content\":\"%s\"}]%s%s%s}",
		 stream ? "true" : "false", content,
		 stream ? ",\"stream_options\":{\"include_usage\":true}" : "",
		 more ? "," : "", more ? more : "");
}

/* Reads the answer of a request begun with h_begin: a 200 whose usage
 * counts tokens completion tokens; who names it in a failure. */
H_FN void h_await_answer(struct h_conn *c, const char *who, int tokens)
{
	char want[48];

	cr_assert_eq(h_read_head(c), 0, "%s: no answer", who);
	cr_assert_eq(c->status, 200, "%s: status %d", who, c->status);
	cr_assert_eq(h_read_body(c), 0, "%s: incomplete body", who);
	snprintf(want, sizeof(want), "\"completion_tokens\":%d", tokens);
	cr_assert(strstr(c->body, want), "%s: %s", who, c->body);
}

/* X-Tpo-Lane of a response, or -1. */
H_FN int h_lane(const struct h_conn *c)
{
	char v[16];

	return h_header(c, "x-tpo-lane", v, sizeof(v)) ? atoi(v) : -1;
}

/*
 * Reads a chat/completions SSE stream to its end, validating every event:
 * chunks are JSON of the right object, the content is appended to text, and
 * the stream must end with the finish chunk, the usage chunk and [DONE].
 * Returns the number of content chunks; finish gets the finish_reason,
 * usage the completion_tokens (or -1).
 */
H_FN int h_read_stream(struct h_conn *c, int chat, char *text, size_t cap,
		       char *finish, size_t fcap, int64_t *usage)
{
	static char ev[1 << 16];
	int chunks = 0, done = 0, r;
	size_t tl = 0;
	const char *obj = chat ? "chat.completion.chunk" : "text_completion";
	char id0[128] = "", model0[128] = "";
	int64_t created0 = -1;

	text[0] = 0;
	finish[0] = 0;
	*usage = -1;
	while ((r = h_sse_next(c, ev, sizeof(ev))) == 1) {
		struct h_json j;
		char s[8192];
		int n;

		cr_assert_not(done, "event after [DONE]: %s", ev);
		if (!strcmp(ev, "[DONE]")) {
			done = 1;
			continue;
		}
		cr_assert_eq(h_json_parse(&j, ev), 0, "event is not JSON: %s", ev);
		cr_assert_lt(h_json_at(&j, "error"), 0, "error event: %s", ev);
		cr_assert_eq(h_json_str(&j, "object", s, sizeof(s)), (int)strlen(obj), "%s", ev);
		cr_assert_str_eq(s, obj);
		/* Every event of one stream carries its id, created and model. */
		cr_assert_gt(h_json_str(&j, "id", s, sizeof(s)), 0, "%s", ev);
		if (!id0[0])
			snprintf(id0, sizeof(id0), "%.127s", s);
		cr_assert_str_eq(s, id0, "an event of another stream: %s", ev);
		cr_assert_gt(h_json_str(&j, "model", s, sizeof(s)), 0, "%s", ev);
		if (!model0[0])
			snprintf(model0, sizeof(model0), "%.127s", s);
		cr_assert_str_eq(s, model0, "%s", ev);
		if (created0 < 0)
			created0 = h_json_int(&j, "created");
		cr_assert_eq(h_json_int(&j, "created"), created0, "%s", ev);
		if (h_json_at(&j, "usage") >= 0 && !h_json_null(&j, "usage")) {
			cr_assert_eq(h_json_size(&j, "choices"), 0, "usage chunk has choices: %s", ev);
			*usage = h_json_int(&j, "usage.completion_tokens");
			cr_assert_geq(h_json_int(&j, "usage.prompt_tokens"), 0);
			cr_assert_eq(h_json_int(&j, "usage.total_tokens"),
				     *usage + h_json_int(&j, "usage.prompt_tokens"));
			h_json_free(&j);
			continue;
		}
		cr_assert_eq(h_json_size(&j, "choices"), 1, "%s", ev);
		cr_assert_not(finish[0], "chunk after the finish chunk: %s", ev);
		if (!h_json_null(&j, "choices.0.finish_reason")) {
			cr_assert_gt(h_json_str(&j, "choices.0.finish_reason", finish, fcap), 0);
			h_json_free(&j);
			continue;
		}
		n = h_json_str(&j, chat ? "choices.0.delta.content" : "choices.0.text", s, sizeof(s));
		cr_assert_geq(n, 0, "no content in %s", ev);
		cr_assert(tpo_utf8_valid(s, (size_t)n), "chunk is not valid UTF-8 alone");
		if (chat && chunks == 0) {
			char role[32];
			cr_assert_gt(h_json_str(&j, "choices.0.delta.role", role, sizeof(role)), 0,
				     "first chunk without role: %s", ev);
			cr_assert_str_eq(role, "assistant");
		}
		cr_assert_lt(tl + (size_t)n, cap);
		memcpy(text + tl, s, (size_t)n);
		tl += (size_t)n;
		text[tl] = 0;
		chunks++;
		h_json_free(&j);
	}
	cr_assert_eq(r, 0, "stream broke off (read error or hang)");
	cr_assert(done, "stream ended without [DONE]");
	cr_assert(finish[0], "stream ended without a finish_reason");
	cr_assert_geq(*usage, 0, "stream without a usage chunk");
	return chunks;
}

/*
 * Reads a stream to its end without judging it: counts content events,
 * error events and [DONE]; asserts the body ended cleanly (no hang) and
 * that nothing follows an error event or [DONE].
 */
H_FN void h_drain_stream(struct h_conn *c, int *content, int *errors, int *done)
{
	static char ev[1 << 16];
	int r;

	*content = *errors = *done = 0;
	while ((r = h_sse_next(c, ev, sizeof(ev))) == 1) {
		cr_assert_eq(*errors + *done, 0, "event after the end: %s", ev);
		if (!strcmp(ev, "[DONE]")) {
			*done = 1;
		} else if (strstr(ev, "\"error\"")) {
			h_assert_oai_error(ev, NULL);
			(*errors)++;
		} else {
			struct h_json j;
			cr_assert_eq(h_json_parse(&j, ev), 0, "event is not JSON: %s", ev);
			if (h_json_size(&j, "choices") == 1 && h_json_null(&j, "choices.0.finish_reason"))
				(*content)++;
			h_json_free(&j);
		}
	}
	cr_assert_eq(r, 0, "the stream did not end cleanly (read error or hang)");
}

#endif
