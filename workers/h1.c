/*
 * h1.c — the small HTTP/1.1 client of workers/h1.h.
 *
 * A connection (struct h1_conn) is on one of the client's lists: active
 * (serving a transfer, or failed and waiting for run() to say so), idle
 * (kept alive, watched for the server closing it) or dead (closed, freed
 * before the next batch of events is fetched: an event fetched earlier may
 * still point at it).
 *
 *   open ─▶ CONNECTING ─▶ SENDING ─▶ RECEIVING ─(response ended, keep-alive)─▶ IDLE
 *                                       │                                      │
 *              any failure, timeout, abort, or no keep-alive ─▶ closed ◀─(EOF)─┘
 *
 * Epoll is level-triggered and a connection's interest is changed only
 * when it must be: a reused connection whose request goes out whole in
 * tpo_h1_start() keeps EPOLLIN from its idle time, so a request over it
 * costs a sendmsg, the reads of its answer and no epoll_ctl.
 *
 * Callbacks (on_data, done) never run inside tpo_h1_start(): a failure
 * found there (connect refused) is reported by the next tpo_h1_run().
 */
#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "workers/h1.h"

#define RBUF    65536     /* the client's receive buffer: one read takes a
			   * 64-token stream (~11 KB) where 8 KiB took two */
#define EV_MAX  64
#define HNAME   16        /* longest header name we look at, + 1 */

enum { S_CONNECTING = 1, S_SENDING, S_RECEIVING, S_IDLE, S_FAILED };
enum { L_NONE, L_ACTIVE, L_IDLE, L_DEAD };

struct h1_conn {
	int fd;
	int state;
	int list;
	const struct tpo_h1_target *t;
	struct tpo_h1_xfer *x;
	struct h1_conn *prev, *next;
	uint32_t events;                 /* registered with epoll */
	int reused;                      /* an earlier response came over it */
	int err;                         /* S_FAILED: errno */
	const char *err_what;            /* S_FAILED: "connect to", ... */
	size_t got;                      /* bytes of this response */
	/* the request */
	struct iovec iov[3];
	int iovi;
	char clen[24];
	/* the response */
	http_parser p;
	int result;                      /* set by the parser callbacks, -1: none */
	int keep;
	int hstate;                      /* 0 none, 1 in a name, 2 in a value */
	int hwant;                       /* the header in progress: 1 type, 2 retry */
	size_t hnlen, hvlen;
	char hname[HNAME];
	char hval[96];
};

struct tpo_h1 {
	int ep;
	int extra;                       /* fd registered for tpo_h1_wait, -1 none */
	unsigned max_idle, nidle, nactive;
	struct h1_conn *active, *idle, *dead;
	int fresh, nev, nfailed;
	int settle;                      /* skip the next non-blocking poll */
	uint64_t next_due;
	struct epoll_event ev[EV_MAX];
	/* One for all connections: what is read is parsed at once and nothing
	 * keeps a pointer into it. Last, and not zeroed: pages no read reached
	 * stay out of the resident set. */
	char rbuf[RBUF];
};

static http_parser_settings settings;

/* ---- lists ------------------------------------------------------------ */

static struct h1_conn **list_head(struct tpo_h1 *h, int list)
{
	return list == L_ACTIVE ? &h->active : list == L_IDLE ? &h->idle : &h->dead;
}

static void list_del(struct tpo_h1 *h, struct h1_conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		*list_head(h, c->list) = c->next;
	if (c->next)
		c->next->prev = c->prev;
	if (c->list == L_ACTIVE)
		h->nactive--;
	else if (c->list == L_IDLE)
		h->nidle--;
	c->prev = c->next = NULL;
	c->list = L_NONE;
}

static void list_add(struct tpo_h1 *h, struct h1_conn *c, int list)
{
	struct h1_conn **head = list_head(h, list);

	c->list = list;
	c->prev = NULL;
	c->next = *head;
	if (*head)
		(*head)->prev = c;
	*head = c;
	if (list == L_ACTIVE)
		h->nactive++;
	else if (list == L_IDLE)
		h->nidle++;
}

static void free_dead(struct tpo_h1 *h)
{
	while (h->dead) {
		struct h1_conn *c = h->dead;
		h->dead = c->next;
		free(c);
	}
}

/* ---- connections -------------------------------------------------------- */

static int want(struct tpo_h1 *h, struct h1_conn *c, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = c };

	if (c->events == events)
		return 0;
	if (epoll_ctl(h->ep, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) < 0)
		return -errno;
	c->events = events;
	return 0;
}

static void conn_close(struct tpo_h1 *h, struct h1_conn *c)
{
	if (c->state == S_FAILED)
		h->nfailed--;
	c->state = 0;
	if (c->list != L_NONE)
		list_del(h, c);
	if (c->fd >= 0)
		close(c->fd);            /* leaves the epoll set with it */
	c->fd = -1;
	if (c->x)
		c->x->conn = NULL;
	c->x = NULL;
	list_add(h, c, L_DEAD);
}

/* Marks c failed; run() reports it (see the top). */
static void conn_fail_later(struct tpo_h1 *h, struct h1_conn *c, const char *what, int err)
{
	c->state = S_FAILED;
	c->err = err;
	c->err_what = what;
	h->nfailed++;
}

/* Ends c's transfer: done() with result; the connection goes idle if the
 * response ended cleanly and allows it, else it is closed. */
static void finish(struct tpo_h1 *h, struct h1_conn *c, int result, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void finish(struct tpo_h1 *h, struct h1_conn *c, int result, const char *fmt, ...)
{
	struct tpo_h1_xfer *x = c->x;
	char err[256] = "";
	va_list ap;

	if (fmt) {
		va_start(ap, fmt);
		vsnprintf(err, sizeof(err), fmt, ap);
		va_end(ap);
	}
	c->x = NULL;
	if (x)
		x->conn = NULL;
	if (result == TPO_H1_OK && c->keep && h->nidle < h->max_idle &&
	    want(h, c, EPOLLIN) == 0) {
		list_del(h, c);
		c->state = S_IDLE;
		c->reused = 1;
		list_add(h, c, L_IDLE);
	} else {
		conn_close(h, c);
	}
	if (x)
		x->done(x, result, err);
}

/* A new connection to t in *out (active, not yet serving). 0 or -errno. */
static int conn_open(struct tpo_h1 *h, const struct tpo_h1_target *t, struct h1_conn **out)
{
	struct h1_conn *c = calloc(1, sizeof(*c));
	int one = 1, err;

	if (!c)
		return -ENOMEM;
	c->t = t;
	c->fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		err = -errno;
		free(c);
		return err;
	}
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(c->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	list_add(h, c, L_ACTIVE);
	if (connect(c->fd, (const struct sockaddr *)&t->addr, t->addrlen) == 0) {
		c->state = S_SENDING;
	} else if (errno == EINPROGRESS) {
		c->state = S_CONNECTING;
		err = want(h, c, EPOLLOUT);
		if (err < 0) {
			conn_close(h, c);
			return err;
		}
	} else {
		conn_fail_later(h, c, "connect to", errno);
	}
	*out = c;
	return 0;
}

static char *utoa_crlf2(char *end, size_t v)
{
	char *p = end;

	*--p = '\n';
	*--p = '\r';
	*--p = '\n';
	*--p = '\r';
	do
		*--p = (char)('0' + v % 10);
	while (v /= 10);
	return p;
}

/* c starts serving x: the request is laid out, the parser reset. */
static void conn_begin(struct h1_conn *c, struct tpo_h1_xfer *x)
{
	char *s = utoa_crlf2(c->clen + sizeof(c->clen), x->body_len);

	c->x = x;
	c->t = x->t;
	x->conn = c;
	c->iov[0] = (struct iovec){ (void *)c->t->head, c->t->head_len };
	c->iov[1] = (struct iovec){ s, (size_t)(c->clen + sizeof(c->clen) - s) };
	c->iov[2] = (struct iovec){ (void *)x->body, x->body_len };
	c->iovi = 0;
	c->got = 0;
	c->result = -1;
	c->keep = 0;
	c->hstate = 0;
	http_parser_init(&c->p, HTTP_RESPONSE);
	c->p.data = c;
}

/* Sends what the socket takes: 0 all sent, 1 more to send, -errno. */
static int send_some(struct h1_conn *c)
{
	while (c->iovi < 3) {
		struct msghdr m = { .msg_iov = c->iov + c->iovi, .msg_iovlen = 3 - c->iovi };
		ssize_t n = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0)
			return errno == EAGAIN ? 1 : -errno;
		while (c->iovi < 3 && (size_t)n >= c->iov[c->iovi].iov_len)
			n -= (ssize_t)c->iov[c->iovi++].iov_len;
		if (c->iovi < 3) {
			c->iov[c->iovi].iov_base = (char *)c->iov[c->iovi].iov_base + n;
			c->iov[c->iovi].iov_len -= (size_t)n;
		}
	}
	return 0;
}

/*
 * Sends c's request (c connected); what is left waits for EPOLLOUT. A
 * failure on a reused connection before any answer: the server closed it
 * while idle; the request goes once more over a new one (as curl does).
 * Returns 0, or -errno when a new connection could not even be made.
 */
static int start_send(struct tpo_h1 *h, struct h1_conn *c);

static int resend_fresh(struct tpo_h1 *h, struct h1_conn *c)
{
	struct tpo_h1_xfer *x = c->x;
	struct h1_conn *n;
	int err;

	c->x = NULL;
	conn_close(h, c);
	x->retried = 1;
	err = conn_open(h, x->t, &n);
	if (err < 0)
		return err;
	conn_begin(n, x);
	if (n->state == S_SENDING)
		return start_send(h, n);
	return 0;
}

/* In run(): err < 0 from a resend means x has no connection any more: it
 * fails (in tpo_h1_start the error is returned instead). */
static void lost_if(struct tpo_h1_xfer *x, const struct tpo_h1_target *t, int err)
{
	char msg[160];

	if (err >= 0 || x->conn)
		return;
	snprintf(msg, sizeof(msg), "could not open a new connection to %s: %s", t->name,
		 strerror(-err));
	x->done(x, TPO_H1_FAILED, msg);
}

static void resend_or_fail(struct tpo_h1 *h, struct h1_conn *c)
{
	struct tpo_h1_xfer *x = c->x;            /* resend_fresh retires c */
	const struct tpo_h1_target *t = c->t;

	lost_if(x, t, resend_fresh(h, c));
}

static int start_send(struct tpo_h1 *h, struct h1_conn *c)
{
	int r = send_some(c);

	if (r < 0) {
		if (c->reused && !c->got && !c->x->retried)
			return resend_fresh(h, c);
		conn_fail_later(h, c, "send the request to", -r);
		return 0;
	}
	c->state = r ? S_SENDING : S_RECEIVING;
	r = want(h, c, r ? EPOLLIN | EPOLLOUT : EPOLLIN);
	if (r < 0)
		conn_fail_later(h, c, "watch the connection to", -r);
	return 0;
}

/* ---- the response ------------------------------------------------------ */

static void header_done(struct h1_conn *c)
{
	struct tpo_h1_xfer *x = c->x;

	if (c->hwant == 1) {
		size_t n = c->hvlen < sizeof(x->ctype) - 1 ? c->hvlen : sizeof(x->ctype) - 1;
		memcpy(x->ctype, c->hval, n);
		x->ctype[n] = 0;
	} else if (c->hwant == 2) {
		char *e;
		double v;
		c->hval[c->hvlen < sizeof(c->hval) - 1 ? c->hvlen : sizeof(c->hval) - 1] = 0;
		v = strtod(c->hval, &e);
		if (e != c->hval && v >= 0 && v < 86400)
			x->retry_after_ms = (long)(v * 1000);
	}
	c->hwant = 0;
}

static int on_message_begin(http_parser *p)
{
	struct h1_conn *c = p->data;

	c->x->status = 0;
	c->x->ctype[0] = 0;
	c->x->retry_after_ms = -1;
	c->hstate = 0;
	return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
	struct h1_conn *c = p->data;

	if (c->hstate != 1) {
		if (c->hstate == 2)
			header_done(c);
		c->hstate = 1;
		c->hnlen = 0;
	}
	if (c->hnlen + len < HNAME)
		memcpy(c->hname + c->hnlen, at, len);
	c->hnlen += len;
	return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
	struct h1_conn *c = p->data;
	size_t room;

	if (c->hstate != 2) {
		c->hstate = 2;
		c->hvlen = 0;
		c->hwant = 0;
		if (c->hnlen == 12 && !strncasecmp(c->hname, "content-type", 12))
			c->hwant = 1;
		else if (c->hnlen == 11 && !strncasecmp(c->hname, "retry-after", 11))
			c->hwant = 2;
	}
	room = sizeof(c->hval) - 1 - (c->hvlen < sizeof(c->hval) - 1 ? c->hvlen : sizeof(c->hval) - 1);
	if (c->hwant)
		memcpy(c->hval + sizeof(c->hval) - 1 - room, at, len < room ? len : room);
	c->hvlen += len;
	return 0;
}

static int on_headers_complete(http_parser *p)
{
	struct h1_conn *c = p->data;

	if (c->hstate == 2)
		header_done(c);
	c->hstate = 0;
	if (p->status_code < 100)
		return -1;                 /* "HTTP/1.1 20 OK": not a status (fuzz_h1) */
	if (p->status_code / 100 != 1)
		c->x->status = p->status_code;
	else if (p->status_code == 101)
		return -1;                 /* never asked for: not HTTP any more */
	return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
	struct h1_conn *c = p->data;

	if (c->x->on_data(c->x->arg, at, len) != len) {
		c->result = TPO_H1_ABORTED;
		return -1;
	}
	return 0;
}

static int on_message_complete(http_parser *p)
{
	struct h1_conn *c = p->data;

	if (p->status_code / 100 == 1)
		return 0;                  /* interim (100 Continue): the answer follows */
	c->keep = http_should_keep_alive(p);
	c->result = TPO_H1_OK;
	http_parser_pause(p, 1);           /* what follows is not ours */
	return 0;
}

/* Feeds n received bytes (0: end of stream); finishes c when the response
 * ended or is malformed. Returns 1 if it finished c. */
static int feed(struct tpo_h1 *h, struct h1_conn *c, const char *b, size_t n)
{
	size_t used = http_parser_execute(&c->p, &settings, b, n);
	enum http_errno e = HTTP_PARSER_ERRNO(&c->p);

	if (c->result == TPO_H1_OK) {
		if (used < n || c->state == S_SENDING)
			c->keep = 0;           /* bytes after the answer, or a body not sent whole */
		finish(h, c, TPO_H1_OK, NULL);
		return 1;
	}
	if (c->result == TPO_H1_ABORTED) {
		finish(h, c, TPO_H1_ABORTED, "the answer was refused by its reader");
		return 1;
	}
	if (!n) {
		finish(h, c, TPO_H1_FAILED, "%s closed the connection before the answer ended "
		       "(%zu bytes received)", c->t->name, c->got);
		return 1;
	}
	if (e != HPE_OK) {
		finish(h, c, TPO_H1_FAILED, "a malformed HTTP response from %s: %s",
		       c->t->name, http_errno_description(e));
		return 1;
	}
	return 0;
}

static void on_readable(struct tpo_h1 *h, struct h1_conn *c)
{
	for (;;) {
		ssize_t n = read(c->fd, h->rbuf, sizeof(h->rbuf));

		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return;
			if (c->state == S_IDLE) {
				conn_close(h, c);
				return;
			}
			if (c->reused && !c->got && !c->x->retried) {
				resend_or_fail(h, c);
				return;
			}
			finish(h, c, TPO_H1_FAILED, "receiving from %s failed: %s", c->t->name,
			       strerror(errno));
			return;
		}
		if (c->state == S_IDLE) {
			conn_close(h, c);    /* the server closed it, or sent what nobody asked */
			return;
		}
		if (n == 0 && c->reused && !c->got && !c->x->retried) {
			resend_or_fail(h, c);
			return;
		}
		c->got += (size_t)n;
		if (feed(h, c, h->rbuf, (size_t)n) || n < (ssize_t)sizeof(h->rbuf))
			return;
	}
}

static void on_writable(struct tpo_h1 *h, struct h1_conn *c)
{
	if (c->state == S_CONNECTING) {
		int e = 0;
		socklen_t l = sizeof(e);
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &l) < 0)
			e = errno;
		if (e) {
			conn_fail_later(h, c, "connect to", e);
			return;
		}
		c->state = S_SENDING;
	}
	{
		struct tpo_h1_xfer *x = c->x;        /* start_send may retire c */
		const struct tpo_h1_target *t = c->t;
		lost_if(x, t, start_send(h, c));
	}
}

/* ---- timers and deferred failures ---------------------------------------- */

static void check_conns(struct tpo_h1 *h, uint64_t now, int timers)
{
	uint64_t next = 0;

	for (struct h1_conn *c = h->active, *nx; c; c = nx) {
		struct tpo_h1_xfer *x = c->x;
		nx = c->next;
		if (!x)
			continue;
		if (c->state == S_FAILED) {
			if (c->reused && !c->got && !x->retried && c->err != ECONNREFUSED) {
				resend_or_fail(h, c);
				continue;
			}
			finish(h, c, TPO_H1_FAILED, "could not %s %s: %s", c->err_what,
			       c->t->name, strerror(c->err));
			continue;
		}
		if (!timers)
			continue;
		if (c->state == S_CONNECTING && x->connect_ns) {
			if (now >= x->connect_ns) {
				finish(h, c, TPO_H1_TIMEOUT, "connecting to %s timed out",
				       c->t->name);
				continue;
			}
			if (!next || x->connect_ns < next)
				next = x->connect_ns;
		}
		if (x->deadline_ns) {
			if (now >= x->deadline_ns) {
				finish(h, c, TPO_H1_TIMEOUT, "the transfer from %s timed out after "
				       "%zu bytes received", c->t->name, c->got);
				continue;
			}
			if (!next || x->deadline_ns < next)
				next = x->deadline_ns;
		}
	}
	if (timers)
		h->next_due = next;
}

/* ---- the client --------------------------------------------------------- */

struct tpo_h1 *tpo_h1_new(unsigned max_idle)
{
	struct tpo_h1 *h = malloc(sizeof(*h));

	if (!h)
		return NULL;
	memset(h, 0, offsetof(struct tpo_h1, rbuf));
	h->ep = epoll_create1(EPOLL_CLOEXEC);
	if (h->ep < 0) {
		int e = errno;
		free(h);
		errno = e;
		return NULL;
	}
	h->extra = -1;
	h->max_idle = max_idle;
	if (!settings.on_body) {
		http_parser_settings_init(&settings);
		settings.on_message_begin = on_message_begin;
		settings.on_header_field = on_header_field;
		settings.on_header_value = on_header_value;
		settings.on_headers_complete = on_headers_complete;
		settings.on_body = on_body;
		settings.on_message_complete = on_message_complete;
	}
	return h;
}

void tpo_h1_free(struct tpo_h1 *h)
{
	if (!h)
		return;
	while (h->active)
		conn_close(h, h->active);
	while (h->idle)
		conn_close(h, h->idle);
	free_dead(h);
	close(h->ep);
	free(h);
}

/* Targets of one endpoint differ in their heads only. */
static int same_peer(const struct tpo_h1_target *a, const struct tpo_h1_target *b)
{
	return a == b || (a->addrlen == b->addrlen && !memcmp(&a->addr, &b->addr, a->addrlen));
}

int tpo_h1_start(struct tpo_h1 *h, struct tpo_h1_xfer *x)
{
	struct h1_conn *c;
	int err;

	x->status = 0;
	x->ctype[0] = 0;
	x->retry_after_ms = -1;
	x->retried = 0;
	x->conn = NULL;
	for (c = h->idle; c && !same_peer(c->t, x->t); c = c->next)
		;
	if (c) {
		list_del(h, c);
		list_add(h, c, L_ACTIVE);
		c->state = S_SENDING;
	} else {
		err = conn_open(h, x->t, &c);
		if (err < 0)
			return err;
	}
	conn_begin(c, x);
	if (x->connect_ns && (!h->next_due || x->connect_ns < h->next_due))
		h->next_due = x->connect_ns;
	if (x->deadline_ns && (!h->next_due || x->deadline_ns < h->next_due))
		h->next_due = x->deadline_ns;
	if (c->state == S_SENDING)
		return start_send(h, c);
	return 0;
}

void tpo_h1_abort(struct tpo_h1 *h, struct tpo_h1_xfer *x)
{
	struct h1_conn *c = x->conn;

	if (!c)
		return;
	c->x = NULL;
	x->conn = NULL;
	conn_close(h, c);
}

void tpo_h1_run(struct tpo_h1 *h, uint64_t now)
{
	int n;

	if (h->fresh) {
		n = h->nev;
		h->fresh = 0;
		h->settle = 1;
	} else if (h->settle) {
		/* The pass straight after a wait: the sockets were read a moment
		 * ago and what was sent since cannot have been answered yet. If
		 * something came in, the next wait returns at once; under a
		 * steady input the pass after this one polls. One epoll_wait
		 * per request fewer at a moderate load. */
		h->settle = 0;
		free_dead(h);
		n = 0;
	} else {
		if (!h->nactive && !h->nidle)
			return;
		free_dead(h);
		n = epoll_wait(h->ep, h->ev, EV_MAX, 0);
	}
	for (int i = 0; i < n; i++) {
		struct h1_conn *c = h->ev[i].data.ptr;
		uint32_t ev = h->ev[i].events;

		if (!c || c->list == L_DEAD || c->state == S_FAILED)
			continue;
		if (c->state == S_CONNECTING || c->state == S_SENDING) {
			if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
				on_writable(h, c);
			if (c->list == L_DEAD || c->state == S_CONNECTING ||
			    c->state == S_FAILED || !(ev & EPOLLIN))
				continue;
		}
		if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
			on_readable(h, c);
	}
	if (h->nfailed)
		check_conns(h, now, 0);
	if (h->next_due && now >= h->next_due)
		check_conns(h, now, 1);
}

int tpo_h1_wait(struct tpo_h1 *h, int extra_fd, int timeout_ms)
{
	int n;

	free_dead(h);
	if (extra_fd != h->extra) {
		struct epoll_event ev = { .events = EPOLLIN | EPOLLET, .data.ptr = NULL };
		if (h->extra >= 0)
			epoll_ctl(h->ep, EPOLL_CTL_DEL, h->extra, NULL);
		h->extra = -1;
		if (extra_fd >= 0) {
			if (epoll_ctl(h->ep, EPOLL_CTL_ADD, extra_fd, &ev) < 0)
				return -errno;
			h->extra = extra_fd;
		}
	}
	n = epoll_wait(h->ep, h->ev, EV_MAX, tpo_h1_timeout(h, timeout_ms));
	if (n < 0) {
		if (errno != EINTR)
			return -errno;
		n = 0;
	}
	h->nev = n;
	h->fresh = 1;
	return 0;
}

int tpo_h1_fd(const struct tpo_h1 *h)
{
	return h->ep;
}

int tpo_h1_timeout(const struct tpo_h1 *h, int timeout_ms)
{
	struct timespec ts;
	uint64_t now, left;

	if (h->nfailed)
		return 0;
	if (!h->next_due || timeout_ms == 0)
		return timeout_ms;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	if (h->next_due <= now)
		return 0;
	left = (h->next_due - now + 999999) / 1000000;
	return timeout_ms < 0 || left < (uint64_t)timeout_ms ? (int)left : timeout_ms;
}

unsigned tpo_h1_running(const struct tpo_h1 *h)
{
	return h->nactive;
}

/* ---- targets ------------------------------------------------------------ */

int tpo_h1_target_parse(struct tpo_h1_target *t, const char *url, const char **path)
{
	const char *a, *end, *host_end, *port = NULL;
	char host[64];
	size_t hl;
	unsigned long pn = 80;

	if (strncasecmp(url, "http://", 7))
		return -EPROTONOSUPPORT;
	a = url + 7;
	end = a + strcspn(a, "/?#");
	if (memchr(a, '@', (size_t)(end - a)) || end == a ||
	    (size_t)(end - a) >= sizeof(t->name))
		return -EPROTONOSUPPORT;
	for (const char *q = end; *q; q++)
		if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f || *q == '#')
			return -EPROTONOSUPPORT;
	memset(&t->addr, 0, sizeof(t->addr));
	if (*a == '[') {
		host_end = memchr(a, ']', (size_t)(end - a));
		if (!host_end)
			return -EPROTONOSUPPORT;
		hl = (size_t)(host_end - a - 1);
		if (hl >= sizeof(host))
			return -EPROTONOSUPPORT;
		memcpy(host, a + 1, hl);
		host[hl] = 0;
		host_end++;
	} else {
		host_end = memchr(a, ':', (size_t)(end - a));
		if (!host_end)
			host_end = end;
		hl = (size_t)(host_end - a);
		if (hl >= sizeof(host))
			return -EPROTONOSUPPORT;
		memcpy(host, a, hl);
		host[hl] = 0;
	}
	if (host_end < end) {
		char *pe;
		if (*host_end != ':' || host_end + 1 == end)
			return -EPROTONOSUPPORT;
		port = host_end + 1;
		pn = strtoul(port, &pe, 10);
		if (pe != end || pn == 0 || pn > 65535 || *port < '0' || *port > '9')
			return -EPROTONOSUPPORT;
	}
	if (*a == '[') {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&t->addr;
		if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1)
			return -EPROTONOSUPPORT;
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)pn);
		t->addrlen = sizeof(*s6);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&t->addr;
		if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
			return -EPROTONOSUPPORT;
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)pn);
		t->addrlen = sizeof(*s4);
	}
	memcpy(t->name, a, (size_t)(end - a));
	t->name[end - a] = 0;
	*path = end;
	return 0;
}
