/*
 * http.c — HTTP/1.1 server layer (see http.h for the contracts).
 *
 * A connection moves through phases:
 *
 *   IDLE ─first byte─▶ HEAD ─headers─▶ BODY ─message─▶ ACTIVE ─end─▶ IDLE
 *     │                  │               │                │(close)
 *     └──────────────────┴──(error/408)──┴───────────────▶ CLOSING ─▶ (freed)
 *
 * ACTIVE is "request in progress": on_request was called and the caller has
 * not ended it. Bytes read meanwhile stay in ibuf unparsed (the parser is
 * paused at each message end), so pipelined requests are dispatched in order.
 * CLOSING flushes the output, shuts down our side and drains input until the
 * peer closes or TPO_HTTP_LINGER_MS pass, so an error response is not lost
 * to a RST caused by unread request bytes.
 *
 * Memory. Idle cost must not scale with max_conns: the slot table is
 * calloc'd (untouched pages cost nothing) and slots are initialised when
 * first handed out. A connection owns buffers only while it needs them:
 * input is read into one buffer of the server and parsed from there (the
 * parser copies url, headers and body out as it goes); only bytes left
 * unparsed (pipelined behind a request in progress) are copied into a
 * buffer of the connection, freed once parsed. Header strings and body live
 * from a request's first byte to its end (or tpo_http_req_done); output is
 * buffered only after a short write and freed once drained.
 *
 * A dead connection becomes a ZOMBIE: fd closed, lookups fail, but the slot
 * is only recycled from the pending list (processed at the end of
 * tpo_http_on_event or from the timerfd), where on_close is delivered if a
 * request was in progress. Free slots are recycled FIFO, so an event of the
 * same epoll batch for a just-closed connection rarely meets a new one; all
 * hang-ups are confirmed by read()/send() results, never taken from flags.
 *
 * Connection sockets are edge-triggered (EPOLLIN|EPOLLOUT|EPOLLRDHUP|ET,
 * registered once): reads go on until EAGAIN or ibuf is full (only possible
 * while ACTIVE; reading resumes when the request ends), output is buffered
 * only after a short write, so the next EPOLLOUT edge flushes it.
 */
#include "stagebin/fmt.h"
#include "stagebin/http.h"
#include "stagebin/textproc.h"

#include <errno.h>
#include <http_parser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "workers/json.h"

#define IBUF_SIZE   16384u
#define OBUF_MIN    4096u
#define OPOOL_MAX   64      /* drained OBUF_MIN buffers kept for reuse */
#define BODY_MIN    4096u
#define BODY_KEEP   16384u  /* a spare msg keeps a body buffer this big */
#define ERR_MSG_MAX 512

enum phase { PH_FREE, PH_IDLE, PH_HEAD, PH_BODY, PH_ACTIVE, PH_CLOSING, PH_ZOMBIE };
enum tlist { TL_HEAD, TL_BODY, TL_IDLE, TL_LINGER, TL_COUNT, TL_NONE = -1 };
/* HS_TRAILER: the header section has ended; fields now are a chunked
 * body's trailer, which is not merged into the headers (RFC 9110 6.5). */
enum hstate { HS_URL, HS_FIELD, HS_VALUE, HS_TRAILER };

struct list {
	struct list *prev, *next;
};

struct tpo_http_conn {
	struct tpo_http_tag tag;        /* must stay first (see http.h) */
	struct tpo_http_server *srv;
	int fd;
	uint32_t slot, gen;
	uint64_t id;
	enum phase phase;
	int8_t tl;                      /* timer list we are on, TL_NONE */
	uint8_t active;                 /* request in progress */
	uint8_t streaming, stream_raw, no_body;
	uint8_t corked;                 /* hold output until tpo_http_uncork */
	uint8_t close_req;              /* close once the request has ended */
	uint8_t in_cb;                  /* inside on_request for this conn */
	uint8_t pending;                /* on srv->pending */
	uint8_t shut, peer_eof;
	/* The last recv was short: the socket had nothing more (epoll(7)),
	 * so the next read before a new event would only see EAGAIN. */
	uint8_t rx_empty;
	/* The peer has shut down its side (EPOLLRDHUP): its EOF may have come
	 * with the last data, in the same edge, so a short read no longer
	 * means that the next read would find nothing. */
	uint8_t rdhup;
	uint8_t hstate;
	uint8_t ishared;                /* [ioff, ioff+ilen) is in srv->rbuf */
	uint8_t in_parse;               /* inside http_parser_execute on m */
	uint16_t err_status;
	const char *err_msg;
	uint8_t http_major, http_minor; /* of the request, for the response */
	uint8_t keep_alive;             /* the request allows keep-alive */
	uint64_t deadline;
	struct list tnode, pnode;
	uint32_t hdr_fed;               /* bytes fed to the parser in IDLE/HEAD */
	struct msg *m;                  /* the request being received or served */

	char *ibuf;                     /* owned: unparsed [ioff, ioff+ilen), icap */
	uint32_t ioff, ilen, icap;
	uint32_t fnext;                 /* next on the free FIFO */
	char *obuf;                     /* unsent output [ooff, ooff+olen) */
	uint32_t ooff, olen, ocap;      /* <= out_cap_bytes */
	void *user;
	uint64_t user64;
};

/*
 * One request from its first byte until it ends (or tpo_http_req_done):
 * parser, the struct handed to on_request, header strings and body. One
 * allocation (but the body), freed with the request, so a connection
 * between requests, or waiting for its answer, holds none of it.
 */
struct msg {
	http_parser parser;
	struct tpo_http_req req;
	struct tpo_http_header *hdrs;   /* max_headers entries, after this */
	char *hbuf;                     /* url and header strings, after hdrs */
	uint32_t hlen, hcap;
	uint32_t url_len;
	uint32_t trailer_len;           /* bytes of trailer fields, ignored */
	char *body;
	size_t blen, bcap;
};

struct listener {
	struct tpo_http_tag tag;        /* must stay first */
	int fd;
	int port;
};

struct tpo_http_server {
	struct tpo_http_tag timer_tag;  /* must stay first: the timerfd's tag */
	int epfd, tfd;
	struct tpo_http_config cfg;
	struct tpo_http_callbacks cb;
	void *arg;
	struct listener lis[TPO_HTTP_MAX_LISTENERS];
	int nlis;
	uint8_t draining, accept_paused, timer_on;
	int in_event;
	uint32_t nconns, nactive;
	struct tpo_http_conn *conns;    /* max_conns, [0, hwm) initialised */
	uint32_t hwm;
	uint32_t fq_head, fq_tail, fq_len; /* FIFO of recycled slots (fnext) */
	char *rbuf;                     /* IBUF_SIZE: every read lands here */
	char *opool[OPOOL_MAX];         /* drained output buffers, OBUF_MIN */
	struct msg *spare;              /* the last ended request's, for the next */
	uint32_t nopool;
	struct list tl[TL_COUNT];
	uint32_t tl_ms[TL_COUNT];
	struct list pending;
};

static http_parser_settings settings;

/* ---- small helpers ---------------------------------------------------- */

static void list_init(struct list *l) { l->prev = l->next = l; }
static int list_empty(const struct list *l) { return l->next == l; }

static void list_del(struct list *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->prev = n->next = n;
}

static void list_append(struct list *l, struct list *n)
{
	n->prev = l->prev;
	n->next = l;
	l->prev->next = n;
	l->prev = n;
}

#define CONN_OF(node, member) \
	((struct tpo_http_conn *)((char *)(node) - offsetof(struct tpo_http_conn, member)))

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void timer_set(struct tpo_http_server *srv, long first_ns)
{
	struct itimerspec its = {
		.it_interval = { 0, TPO_HTTP_TICK_MS * 1000000L },
		.it_value = { first_ns / 1000000000L, first_ns % 1000000000L },
	};

	if (first_ns == 0)
		its.it_interval.tv_nsec = 0;
	timerfd_settime(srv->tfd, 0, &its, NULL);
	srv->timer_on = first_ns != 0;
}

static void timer_need(struct tpo_http_server *srv)
{
	if (!srv->timer_on)
		timer_set(srv, TPO_HTTP_TICK_MS * 1000000L);
}

static void tl_disarm(struct tpo_http_conn *c)
{
	if (c->tl != TL_NONE) {
		list_del(&c->tnode);
		c->tl = TL_NONE;
	}
}

/* Each list has one fixed duration, so appending keeps it deadline-sorted. */
static void tl_arm(struct tpo_http_conn *c, int which)
{
	struct tpo_http_server *srv = c->srv;

	tl_disarm(c);
	if (srv->tl_ms[which] == 0)
		return;
	c->tl = (int8_t)which;
	c->deadline = mono_ms() + srv->tl_ms[which];
	list_append(&srv->tl[which], &c->tnode);
	timer_need(srv);
}

/* Queues c for the pending pass; wakes the loop through the timerfd when
 * we are not inside tpo_http_on_event (whose end runs the pass). */
static void pending_add(struct tpo_http_conn *c)
{
	struct tpo_http_server *srv = c->srv;

	if (!c->pending) {
		c->pending = 1;
		list_append(&srv->pending, &c->pnode);
	}
	if (!srv->in_event)
		timer_set(srv, 1);
}

const char *tpo_http_reason(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 301: return "Moved Permanently";
	case 302: return "Found";
	case 304: return "Not Modified";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 411: return "Length Required";
	case 413: return "Payload Too Large";
	case 414: return "URI Too Long";
	case 415: return "Unsupported Media Type";
	case 417: return "Expectation Failed";
	case 422: return "Unprocessable Entity";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 499: return "Client Closed Request";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	default: return "Unknown";
	}
}

/* ---- connection lifetime --------------------------------------------- */

/* An ended request's msg stays as the server's spare (with its body
 * buffer, up to BODY_KEEP): the next request allocates nothing. */
static void msg_free(struct tpo_http_conn *c)
{
	struct tpo_http_server *srv = c->srv;
	struct msg *m = c->m;

	if (!m)
		return;
	c->m = NULL;
	if (m->bcap > BODY_KEEP) {
		free(m->body);
		m->body = NULL;
		m->bcap = 0;
	}
	if (!srv->spare) {
		srv->spare = m;
		return;
	}
	free(m->body);
	free(m);
}

/* A fresh parser too: each request starts one (the last stopped at its
 * message end, the state a new parser starts in). */
static int msg_new(struct tpo_http_conn *c)
{
	const struct tpo_http_config *cfg = &c->srv->cfg;
	size_t hcap = (size_t)cfg->max_header_bytes + 2u * cfg->max_headers + 8u;
	struct msg *m = c->srv->spare;
	char *body = NULL;
	size_t bcap = 0;

	if (m) {
		c->srv->spare = NULL;
		body = m->body;
		bcap = m->bcap;
	} else if (!(m = malloc(sizeof(*m) + cfg->max_headers * sizeof(*m->hdrs) + hcap))) {
		return -ENOMEM;
	}
	http_parser_init(&m->parser, HTTP_REQUEST);
	m->parser.data = c;
	memset(&m->req, 0, sizeof(m->req));
	m->hdrs = (struct tpo_http_header *)(void *)(m + 1);
	m->hbuf = (char *)(m->hdrs + cfg->max_headers);
	m->hcap = (uint32_t)hcap;
	m->hlen = m->url_len = 0;
	m->body = body;
	m->blen = 0;
	m->bcap = bcap;
	c->m = m;
	return 0;
}

/*
 * Gives back c's output buffer. A corked stream fills and drains one per
 * batch of tokens: small ones go to a pool of the server rather than back
 * to malloc, so a streaming connection neither holds memory between batches
 * nor allocates for each.
 */
static void obuf_put(struct tpo_http_conn *c)
{
	struct tpo_http_server *srv = c->srv;

	if (c->obuf && c->ocap == OBUF_MIN && srv->nopool < OPOOL_MAX)
		srv->opool[srv->nopool++] = c->obuf;
	else
		free(c->obuf);
	c->obuf = NULL;
	c->ooff = c->olen = c->ocap = 0;
}

static void conn_free_bufs(struct tpo_http_conn *c)
{
	free(c->ibuf);
	obuf_put(c);
	/* A send failing inside a parser callback releases c: the parser
	 * still runs on m, which conn_parse frees once it returns. */
	if (!c->in_parse)
		msg_free(c);
	c->ibuf = NULL;
	c->ishared = 0;
	c->ioff = c->ilen = c->icap = 0;
}

/* Closes the socket now; the slot is recycled (and on_close delivered if a
 * request was in progress) from the pending pass. */
static void conn_release(struct tpo_http_conn *c)
{
	struct tpo_http_server *srv = c->srv;

	if (c->phase == PH_ZOMBIE || c->phase == PH_FREE)
		return;
	tl_disarm(c);
	epoll_ctl(srv->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	conn_free_bufs(c);
	c->phase = PH_ZOMBIE;
	srv->nconns--;
	pending_add(c);
}

static void slot_recycle(struct tpo_http_conn *c)
{
	struct tpo_http_server *srv = c->srv;

	c->phase = PH_FREE;
	c->user = NULL;
	c->user64 = 0;
	c->fnext = UINT32_MAX;
	if (srv->fq_len++ == 0)
		srv->fq_head = c->slot;
	else
		srv->conns[srv->fq_tail].fnext = c->slot;
	srv->fq_tail = c->slot;
}

/*
 * Recycled slots are reused FIFO, and only once FQ_MIN of them wait (or the
 * table is full), so an event of the same epoll batch for a just-closed
 * connection rarely meets a new one; otherwise a fresh slot is initialised,
 * so the pages touched follow the peak number of connections, not max_conns.
 * NULL when every slot is taken.
 */
#define FQ_MIN 64u

static struct tpo_http_conn *slot_take(struct tpo_http_server *srv)
{
	struct tpo_http_conn *c;

	if (srv->fq_len > FQ_MIN || (srv->fq_len > 0 && srv->hwm == srv->cfg.max_conns)) {
		c = &srv->conns[srv->fq_head];
		srv->fq_head = c->fnext;
		srv->fq_len--;
		return c;
	}
	if (srv->hwm == srv->cfg.max_conns)
		return NULL;
	c = &srv->conns[srv->hwm];
	c->tag.kind = TPO_TAG_CONN;
	c->srv = srv;
	c->slot = srv->hwm++;
	c->fd = -1;
	c->phase = PH_FREE;
	return c;
}

static void flush_out(struct tpo_http_conn *c);

/* Our side is done: shut down writing, drain until EOF or linger timeout. */
static void conn_shutdown(struct tpo_http_conn *c)
{
	if (c->peer_eof) {
		conn_release(c);
		return;
	}
	if (!c->shut) {
		shutdown(c->fd, SHUT_WR);
		c->shut = 1;
		tl_arm(c, TL_LINGER);
	}
}

static void conn_closing(struct tpo_http_conn *c)
{
	c->phase = PH_CLOSING;
	/* Output still to send: a client that stops reading must not hold the
	 * connection forever (its idle timeout; conn_shutdown re-arms linger). */
	tl_arm(c, TL_IDLE);
	if (c->olen == 0)
		conn_shutdown(c);
}

/* ---- output ------------------------------------------------------------ */

static int obuf_append(struct tpo_http_conn *c, const char *p, size_t n)
{
	size_t cap = c->srv->cfg.out_cap_bytes;

	if ((size_t)c->olen + n > cap)
		return -ENOBUFS;
	if ((size_t)c->ooff + c->olen + n > c->ocap) {
		if (c->ooff > 0) {
			memmove(c->obuf, c->obuf + c->ooff, c->olen);
			c->ooff = 0;
		}
		if ((size_t)c->olen + n > c->ocap) {
			size_t nc = c->ocap ? c->ocap : OBUF_MIN;
			char *nb;

			while (nc < c->olen + n)
				nc *= 2;
			if (nc > cap)
				nc = cap;
			if (!c->obuf && nc == OBUF_MIN && c->srv->nopool)
				nb = c->srv->opool[--c->srv->nopool];
			else
				nb = realloc(c->obuf, nc);
			if (!nb)
				return -ENOMEM;
			c->obuf = nb;
			c->ocap = (uint32_t)nc;
		}
	}
	memcpy(c->obuf + c->ooff + c->olen, p, n);
	c->olen += (uint32_t)n;
	return 0;
}

/*
 * Sends iov[0..n) in order after whatever is buffered: straight to the
 * socket when nothing is queued, the rest into obuf. On a broken socket or
 * an output over out_cap_bytes releases c and returns -EPIPE.
 */
static int conn_send(struct tpo_http_conn *c, struct iovec *iov, int n)
{
	size_t total = 0, skip = 0;
	int i;

	for (i = 0; i < n; i++)
		total += iov[i].iov_len;
	if (c->olen == 0 && !c->corked) {
		struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)n };
		ssize_t w = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (w < 0) {
			if (errno != EAGAIN && errno != EINTR)
				goto err;
			w = 0;
		}
		if ((size_t)w == total)
			return 0;
		skip = (size_t)w;
	}
	for (i = 0; i < n; i++) {
		size_t l = iov[i].iov_len;

		if (skip >= l) {
			skip -= l;
			continue;
		}
		if (obuf_append(c, (const char *)iov[i].iov_base + skip, l - skip) < 0)
			goto err;
		skip = 0;
	}
	return 0;
err:
	conn_release(c);
	return -EPIPE;
}

static void flush_out(struct tpo_http_conn *c)
{
	while (c->olen > 0) {
		ssize_t w = send(c->fd, c->obuf + c->ooff, c->olen, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				conn_release(c);
			return;
		}
		c->ooff += (uint32_t)w;
		c->olen -= (uint32_t)w;
	}
	/* Drained: a connection holds no output memory between writes. */
	obuf_put(c);
	if (c->phase == PH_CLOSING)
		conn_shutdown(c);
}

/*
 * Status line and framing headers into buf. clen < 0: streaming (chunked,
 * or unframed for HTTP/1.0). Returns the length or -EINVAL if too long.
 */
static int format_head(struct tpo_http_conn *c, char *buf, size_t cap, int status,
		       const char *ctype, long long clen)
{
	const char *conn_hdr = "", *reason = tpo_http_reason(status);
	size_t need, n = 0;
	char len[TPO_FMT_I64_MAX];
	size_t lenlen = clen >= 0 ? tpo_fmt_i64(len, clen) : 0;

	if (c->close_req)
		conn_hdr = "Connection: close\r\n";
	else if (c->http_major == 1 && c->http_minor == 0)
		conn_hdr = "Connection: keep-alive\r\n";
	if (status < 100 || status > 999)
		return -EINVAL;
	/* Longest case first, so nothing below can run past buf. */
	need = 15 + strlen(reason) + (ctype ? 16 + strlen(ctype) : 0) + strlen(conn_hdr) +
	       (clen >= 0 ? 18 + lenlen : 28);
	if (need >= cap)
		return -EINVAL;
#define PUT(s, l) (memcpy(buf + n, (s), (l)), n += (l))
	PUT("HTTP/1.1 ", 9);
	n += tpo_fmt_u64(buf + n, (uint64_t)status);
	buf[n++] = ' ';
	PUT(reason, strlen(reason));
	PUT("\r\n", 2);
	if (ctype) {
		PUT("Content-Type: ", 14);
		PUT(ctype, strlen(ctype));
		PUT("\r\n", 2);
	}
	PUT(conn_hdr, strlen(conn_hdr));
	if (clen >= 0) {
		PUT("Content-Length: ", 16);
		PUT(len, lenlen);
		PUT("\r\n", 2);
	} else if (!c->stream_raw) {
		PUT("Transfer-Encoding: chunked\r\n", 28);
	}
#undef PUT
	buf[n] = '\0';
	return (int)n;
}

static int check_active(const struct tpo_http_conn *c)
{
	if (!c)
		return -EINVAL;
	if (c->phase == PH_ZOMBIE || c->phase == PH_FREE)
		return -EPIPE;
	if (c->phase != PH_ACTIVE || !c->active)
		return -EINVAL;
	return 0;
}

void tpo_http_req_done(struct tpo_http_conn *c)
{
	if (check_active(c) == 0)
		msg_free(c);
}

/* The caller has ended the request: next request, or close. */
static void end_request(struct tpo_http_conn *c)
{
	struct tpo_http_server *srv = c->srv;

	/* A complete response leaves at once, corked or not. */
	if (c->corked) {
		c->corked = 0;
		if (c->olen > 0)
			flush_out(c);
	}
	c->active = 0;
	c->streaming = 0;
	srv->nactive--;
	if (c->phase == PH_ZOMBIE)
		return;
	msg_free(c);
	if (c->close_req) {
		conn_closing(c);
		return;
	}
	c->phase = PH_IDLE;
	tl_arm(c, TL_IDLE);
	/*
	 * Pipelined bytes wait in ibuf: parse them from the pending pass (or
	 * from the dispatch loop itself when inside on_request). With ibuf
	 * empty the last read saw EAGAIN, so the next byte raises an edge and
	 * no wake-up (a timerfd syscall) is needed.
	 */
	if (!c->in_cb && c->ilen > 0)
		pending_add(c);
}

static void note_close(struct tpo_http_conn *c)
{
	if (!c->keep_alive || c->srv->draining)
		c->close_req = 1;
}

int tpo_http_respond(struct tpo_http_conn *c, int status, const char *content_type,
		     const char *extra_headers, const void *body, size_t len)
{
	char head[512];
	struct iovec iov[4];
	int n, r;

	r = check_active(c);
	if (r < 0)
		return r;
	if (c->streaming)
		return -EINVAL;
	note_close(c);
	n = format_head(c, head, sizeof(head), status, content_type, (long long)len);
	if (n < 0)
		return n;
	iov[0] = (struct iovec){ head, (size_t)n };
	iov[1] = (struct iovec){ (void *)(extra_headers ? extra_headers : ""),
				 extra_headers ? strlen(extra_headers) : 0 };
	iov[2] = (struct iovec){ "\r\n", 2 };
	iov[3] = (struct iovec){ (void *)body, c->no_body ? 0 : len };
	r = conn_send(c, iov, 4);
	end_request(c);
	return r;
}

int tpo_http_stream_begin(struct tpo_http_conn *c, int status, const char *content_type,
			  const char *extra_headers)
{
	char head[512];
	struct iovec iov[3];
	int n, r;

	r = check_active(c);
	if (r < 0)
		return r;
	if (c->streaming)
		return -EINVAL;
	note_close(c);
	if (c->http_major == 1 && c->http_minor == 0) {
		/* No chunked coding in HTTP/1.0: the close delimits the body. */
		c->stream_raw = 1;
		c->close_req = 1;
	}
	n = format_head(c, head, sizeof(head), status, content_type, -1);
	if (n < 0)
		return n;
	iov[0] = (struct iovec){ head, (size_t)n };
	iov[1] = (struct iovec){ (void *)(extra_headers ? extra_headers : ""),
				 extra_headers ? strlen(extra_headers) : 0 };
	iov[2] = (struct iovec){ "\r\n", 2 };
	c->streaming = 1;
	return conn_send(c, iov, 3);
}

int tpo_http_stream_write(struct tpo_http_conn *c, const void *data, size_t len)
{
	char size[24];
	struct iovec iov[3];
	size_t n;
	int r;

	r = check_active(c);
	if (r < 0)
		return r;
	if (!c->streaming)
		return -EINVAL;
	if (len == 0 || c->no_body)
		return 0;
	if (c->stream_raw) {
		iov[0] = (struct iovec){ (void *)data, len };
		return conn_send(c, iov, 1);
	}
	n = tpo_fmt_hex(size, len, 0);
	memcpy(size + n, "\r\n", 2);
	iov[0] = (struct iovec){ size, n + 2 };
	iov[1] = (struct iovec){ (void *)data, len };
	iov[2] = (struct iovec){ "\r\n", 2 };
	return conn_send(c, iov, 3);
}

void tpo_http_cork(struct tpo_http_conn *c)
{
	if (check_active(c) == 0)
		c->corked = 1;
}

void tpo_http_uncork(struct tpo_http_conn *c)
{
	if (!c->corked)
		return;
	c->corked = 0;
	if (c->olen > 0)
		flush_out(c);
}

int tpo_http_stream_end(struct tpo_http_conn *c)
{
	struct iovec iov[1] = { { "0\r\n\r\n", 5 } };
	int r;

	r = check_active(c);
	if (r < 0)
		return r;
	if (!c->streaming)
		return -EINVAL;
	if (!c->stream_raw && !c->no_body)
		r = conn_send(c, iov, 1);
	end_request(c);
	return r;
}

static int format_error(char *buf, size_t cap, int status, const char *message)
{
	char esc[ERR_MSG_MAX], text[ERR_MSG_MAX];
	size_t mlen = message ? strlen(message) : 0;

	/* Messages may quote a model server's bytes: the client gets valid
	 * UTF-8 whatever they were. One too long for esc is cut at an escape
	 * or character boundary. */
	mlen = tpo_utf8_sanitize(message ? message : "", mlen, text, sizeof(text));
	tpo_json_escape(text, mlen, esc, sizeof(esc));
	return snprintf(buf, cap,
			"{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"param\":null,\"code\":null}}\n",
			esc, status >= 500 ? "server_error" : "invalid_request_error");
}

int tpo_http_error_ex(struct tpo_http_conn *c, int status, const char *message,
		      const char *extra_headers)
{
	char body[ERR_MSG_MAX + 128];
	int n = format_error(body, sizeof(body), status, message);

	return tpo_http_respond(c, status, "application/json", extra_headers, body, (size_t)n);
}

int tpo_http_error(struct tpo_http_conn *c, int status, const char *message)
{
	return tpo_http_error_ex(c, status, message, NULL);
}

/* A protocol error or timeout of ours: error response, then close. */
static void conn_abort(struct tpo_http_conn *c, int status, const char *message)
{
	char head[256], body[ERR_MSG_MAX + 128];
	struct iovec iov[2];
	int n, b;

	if (c->phase == PH_ZOMBIE || c->phase == PH_CLOSING)
		return;
	c->close_req = 1;
	c->http_major = 1;
	c->http_minor = 1;
	c->stream_raw = 0;
	b = format_error(body, sizeof(body), status, message);
	n = format_head(c, head, sizeof(head) - 2, status, "application/json", b);
	if (n < 0)
		return;
	memcpy(head + n, "\r\n", 2);
	iov[0] = (struct iovec){ head, (size_t)n + 2 };
	iov[1] = (struct iovec){ body, (size_t)b };
	if (conn_send(c, iov, 2) < 0)
		return;
	conn_closing(c);
}

/* ---- parser callbacks -------------------------------------------------- */

static int fail(struct tpo_http_conn *c, int status, const char *msg)
{
	if (!c->err_status) {
		c->err_status = (uint16_t)status;
		c->err_msg = msg;
	}
	return -1;
}

static int hbuf_put(struct tpo_http_conn *c, const char *at, size_t len)
{
	struct msg *m = c->m;

	/* hcap leaves room for a NUL per string, so running out here means
	 * the header section is over max_header_bytes. */
	if ((size_t)m->hlen + len + 1 > m->hcap)
		return fail(c, 431, "request header section too large");
	memcpy(m->hbuf + m->hlen, at, len);
	m->hlen += (uint32_t)len;
	return 0;
}

static int hbuf_nul(struct tpo_http_conn *c)
{
	struct msg *m = c->m;

	if (m->hlen >= m->hcap)
		return fail(c, 431, "request header section too large");
	m->hbuf[m->hlen++] = '\0';
	return 0;
}

static int on_message_begin(http_parser *p)
{
	struct tpo_http_conn *c = p->data;
	struct msg *m = c->m;

	m->hlen = 0;
	m->url_len = 0;
	m->trailer_len = 0;
	c->hstate = HS_URL;
	m->blen = 0;
	c->no_body = 0;
	c->stream_raw = 0;
	c->close_req = 0;
	memset(&m->req, 0, sizeof(m->req));
	m->req.headers = m->hdrs;
	/* The header deadline runs from accept or from the first byte after
	 * an idle keep-alive period. */
	if (c->tl != TL_HEAD)
		tl_arm(c, TL_HEAD);
	c->phase = PH_HEAD;
	return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
	struct tpo_http_conn *c = p->data;
	struct msg *m = c->m;

	if (m->hlen + len > c->srv->cfg.max_header_line)
		return fail(c, 414, "request URI too long");
	return hbuf_put(c, at, len);
}

/* A trailer field's bytes: counted against the header budget, not kept. */
static int trailer(struct tpo_http_conn *c, size_t len)
{
	struct msg *m = c->m;

	m->trailer_len += (uint32_t)len;
	if (m->trailer_len > c->srv->cfg.max_header_bytes)
		return fail(c, 431, "request trailer section too large");
	return 0;
}

/* Ends the string being collected (url, name or value). */
static int close_string(struct tpo_http_conn *c)
{
	struct msg *m = c->m;
	struct tpo_http_header *h;

	switch (c->hstate) {
	case HS_URL:
		m->url_len = m->hlen;
		break;
	case HS_FIELD:
		h = &m->hdrs[m->req.nheaders - 1];
		h->name_len = (uint32_t)(m->hbuf + m->hlen - h->name);
		break;
	case HS_TRAILER:
		return 0;
	case HS_VALUE:
		h = &m->hdrs[m->req.nheaders - 1];
		while (m->hbuf + m->hlen > h->value &&
		       (m->hbuf[m->hlen - 1] == ' ' || m->hbuf[m->hlen - 1] == '\t'))
			m->hlen--;
		h->value_len = (uint32_t)(m->hbuf + m->hlen - h->value);
		break;
	}
	return hbuf_nul(c);
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
	struct tpo_http_conn *c = p->data;
	struct msg *m = c->m;
	struct tpo_http_header *h;

	if (c->hstate == HS_TRAILER)
		return trailer(c, len);
	if (c->hstate != HS_FIELD) {
		if (close_string(c) < 0)
			return -1;
		if (m->req.nheaders == c->srv->cfg.max_headers)
			return fail(c, 431, "too many request header fields");
		h = &m->hdrs[m->req.nheaders++];
		h->name = m->hbuf + m->hlen;
		h->value = "";
		h->name_len = h->value_len = 0;
		c->hstate = HS_FIELD;
	}
	h = &m->hdrs[m->req.nheaders - 1];
	if ((size_t)(m->hbuf + m->hlen - h->name) + len > c->srv->cfg.max_header_line)
		return fail(c, 431, "request header field too large");
	return hbuf_put(c, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
	struct tpo_http_conn *c = p->data;
	struct msg *m = c->m;
	struct tpo_http_header *h;

	if (c->hstate == HS_TRAILER)
		return trailer(c, len);   /* a request may have no header at all */
	h = &m->hdrs[m->req.nheaders - 1];
	if (c->hstate != HS_VALUE) {
		if (close_string(c) < 0)
			return -1;
		h->value = m->hbuf + m->hlen;
		c->hstate = HS_VALUE;
	}
	if (h->name_len + (size_t)(m->hbuf + m->hlen - h->value) + len > c->srv->cfg.max_header_line)
		return fail(c, 431, "request header field too large");
	return hbuf_put(c, at, len);
}

static void split_url(struct tpo_http_conn *c)
{
	struct msg *m = c->m;
	struct http_parser_url u;
	char *url = m->hbuf;
	char *pe = NULL, *qe = NULL;

	m->req.path = url;
	m->req.path_len = m->url_len;
	m->req.query = "";
	m->req.query_len = 0;
	http_parser_url_init(&u);
	if (http_parser_parse_url(url, m->url_len, m->parser.method == HTTP_CONNECT, &u) != 0)
		return;
	if (u.field_set & (1u << UF_PATH)) {
		m->req.path = url + u.field_data[UF_PATH].off;
		m->req.path_len = u.field_data[UF_PATH].len;
		pe = url + u.field_data[UF_PATH].off + u.field_data[UF_PATH].len;
	} else {
		m->req.path = "/";
		m->req.path_len = 1;
	}
	if (u.field_set & (1u << UF_QUERY)) {
		m->req.query = url + u.field_data[UF_QUERY].off;
		m->req.query_len = u.field_data[UF_QUERY].len;
		qe = url + u.field_data[UF_QUERY].off + u.field_data[UF_QUERY].len;
	}
	/* Both ends fall on '?', '#' or the url's NUL: terminate in place. */
	if (pe)
		*pe = '\0';
	if (qe)
		*qe = '\0';
}

static int on_headers_complete(http_parser *p)
{
	struct tpo_http_conn *c = p->data;
	struct msg *m = c->m;
	struct tpo_http_server *srv = c->srv;
	const char *te, *expect;
	int has_body;
	uint32_t i;

	if (close_string(c) < 0)
		return -1;
	c->hstate = HS_TRAILER;
	split_url(c);
	m->req.method = p->method;
	m->req.method_str = http_method_str((enum http_method)p->method);
	m->req.http_major = p->http_major;
	m->req.http_minor = p->http_minor;
	m->req.keep_alive = http_should_keep_alive(p);
	c->http_major = (uint8_t)p->http_major;
	c->http_minor = (uint8_t)p->http_minor;
	c->keep_alive = (uint8_t)m->req.keep_alive;
	c->no_body = p->method == HTTP_HEAD;
	for (i = 0; i < m->req.nheaders; i++) {
		te = m->hdrs[i].value;
		if (strcasecmp(m->hdrs[i].name, "transfer-encoding") == 0 && strcasecmp(te, "chunked") != 0)
			return fail(c, 501, "unsupported Transfer-Encoding");
	}
	if ((p->flags & F_CONTENTLENGTH) && p->content_length > srv->cfg.max_body_bytes)
		return fail(c, 413, "request body too large");
	has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENTLENGTH) && p->content_length > 0);
	expect = tpo_http_header(&m->req, "expect");
	if (expect) {
		if (strcasecmp(expect, "100-continue") != 0)
			return fail(c, 417, "unsupported Expect");
		if (has_body && p->http_minor >= 1) {
			struct iovec iov = { "HTTP/1.1 100 Continue\r\n\r\n", 25 };

			if (conn_send(c, &iov, 1) < 0)
				return -1;
		}
	}
	if (has_body && (p->flags & F_CONTENTLENGTH) && m->bcap < p->content_length + 1) {
		char *nb = realloc(m->body, p->content_length + 1);

		if (!nb)
			return fail(c, 503, "out of memory");
		m->body = nb;
		m->bcap = p->content_length + 1;
	}
	c->phase = PH_BODY;
	if (has_body)
		tl_arm(c, TL_BODY);
	else
		tl_disarm(c);
	return 0;
}

static int on_chunk_header(http_parser *p)
{
	struct tpo_http_conn *c = p->data;
	struct msg *m = c->m;

	if (p->content_length > c->srv->cfg.max_body_bytes - m->blen)
		return fail(c, 413, "request body too large");
	return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
	struct tpo_http_conn *c = p->data;
	struct msg *m = c->m;
	uint64_t max = c->srv->cfg.max_body_bytes;

	if (len > max - m->blen)
		return fail(c, 413, "request body too large");
	if (m->blen + len + 1 > m->bcap) {
		size_t nc = m->bcap ? m->bcap : BODY_MIN;
		char *nb;

		while (nc < m->blen + len + 1)
			nc *= 2;
		if (nc > max + 1)
			nc = max + 1;
		nb = realloc(m->body, nc);
		if (!nb)
			return fail(c, 503, "out of memory");
		m->body = nb;
		m->bcap = nc;
	}
	memcpy(m->body + m->blen, at, len);
	m->blen += len;
	return 0;
}

static int on_message_complete(http_parser *p)
{
	struct tpo_http_conn *c = p->data;
	struct msg *m = c->m;

	m->req.keep_alive = http_should_keep_alive(p) && !p->upgrade &&
			    !(p->flags & F_UPGRADE);
	c->keep_alive = (uint8_t)m->req.keep_alive;
	if (m->body)
		m->body[m->blen] = '\0';
	m->req.body = m->body ? m->body : "";
	m->req.body_len = m->blen;
	c->phase = PH_ACTIVE;
	c->hdr_fed = 0;
	tl_disarm(c);
	/* Stop at the message end: pipelined bytes wait in ibuf. */
	http_parser_pause(p, 1);
	return 0;
}

/* ---- input ------------------------------------------------------------- */

/* Feeds ibuf to the parser; returns 1 if a request became complete. */
static int conn_parse(struct tpo_http_conn *c)
{
	const struct tpo_http_config *cfg = &c->srv->cfg;
	int in_head = c->phase == PH_IDLE || c->phase == PH_HEAD;
	size_t n = c->ilen, got;
	enum http_errno e;

	if (in_head && n > cfg->max_header_bytes + 1u - c->hdr_fed)
		n = cfg->max_header_bytes + 1u - c->hdr_fed;
	if (!c->m && msg_new(c) < 0) {
		conn_abort(c, 503, "out of memory");
		return 0;
	}
	c->in_parse = 1;
	got = http_parser_execute(&c->m->parser, &settings,
				  (c->ishared ? c->srv->rbuf : c->ibuf) + c->ioff, n);
	c->in_parse = 0;
	if (c->phase == PH_ZOMBIE) {
		msg_free(c);
		return 0;
	}
	/* Only bytes of a header section still being read count against it:
	 * a request that completed in this call (its body included) must not
	 * shrink the next one's budget. */
	if (in_head && (c->phase == PH_IDLE || c->phase == PH_HEAD))
		c->hdr_fed += (uint32_t)got;
	c->ioff += (uint32_t)got;
	c->ilen -= (uint32_t)got;
	if (c->err_status) {
		conn_abort(c, c->err_status, c->err_msg);
		return 0;
	}
	e = HTTP_PARSER_ERRNO(&c->m->parser);
	if (e == HPE_PAUSED) {
		http_parser_pause(&c->m->parser, 0);
		return 1;
	}
	if (e == HPE_HEADER_OVERFLOW) {
		conn_abort(c, 431, "request header section too large");
	} else if (e == HPE_INVALID_TRANSFER_ENCODING) {
		conn_abort(c, 501, "unsupported Transfer-Encoding");
	} else if (e != HPE_OK) {
		char msg[160];

		snprintf(msg, sizeof(msg), "malformed request: %s", http_errno_description(e));
		conn_abort(c, 400, msg);
	} else if (c->phase == PH_ACTIVE) {
		/* Upgrade: the parser stopped without a pause. */
		c->m->req.keep_alive = 0;
		c->keep_alive = 0;
		return 1;
	} else if ((c->phase == PH_IDLE || c->phase == PH_HEAD) && c->hdr_fed > cfg->max_header_bytes) {
		conn_abort(c, 431, "request header section too large");
	}
	return 0;
}

static void dispatch(struct tpo_http_conn *c)
{
	struct tpo_http_server *srv = c->srv;

	c->active = 1;
	c->streaming = 0;
	srv->nactive++;
	if (!c->keep_alive || srv->draining)
		c->close_req = 1;
	c->in_cb = 1;
	srv->cb.on_request(c, &c->m->req, srv->arg);
	c->in_cb = 0;
}

/*
 * Settles input after a parse: bytes still unparsed in the server's buffer
 * move to a buffer of c's own (the next read reuses the server's); an
 * emptied own buffer is freed. Returns -1 if c was released (no memory).
 */
static int ibuf_settle(struct tpo_http_conn *c)
{
	if (c->phase == PH_CLOSING)
		c->ilen = 0;         /* draining: input is discarded */
	if (c->ilen == 0) {
		free(c->ibuf);
		c->ibuf = NULL;
		c->ioff = c->icap = 0;
		c->ishared = 0;
		return 0;
	}
	if (!c->ishared)
		return 0;
	/* Only after a read from the server's buffer, so c owns none. */
	c->ibuf = malloc(c->ilen);
	if (!c->ibuf) {
		conn_release(c);
		return -1;
	}
	memcpy(c->ibuf, c->srv->rbuf + c->ioff, c->ilen);
	c->icap = c->ilen;
	c->ioff = 0;
	c->ishared = 0;
	return 0;
}

/*
 * Reads once; 1 data, 0 nothing more now, -1 c was released. With nothing
 * buffered the read goes to the server's buffer (the caller parses or
 * settles it before the next read); bytes behind a request in progress go
 * after c's own, up to IBUF_SIZE.
 */
static int conn_read(struct tpo_http_conn *c)
{
	struct tpo_http_server *srv = c->srv;
	char *dst;
	size_t room;
	ssize_t r;

	if (ibuf_settle(c) < 0)
		return -1;
	if (c->rx_empty) {
		c->rx_empty = 0;
		if (!c->rdhup)
			return 0;
	}
	if (c->ilen == 0) {
		if (!srv->rbuf && !(srv->rbuf = malloc(IBUF_SIZE))) {
			conn_release(c);
			return -1;
		}
		dst = srv->rbuf;
		room = IBUF_SIZE;
	} else {
		if (c->icap < IBUF_SIZE) {
			char *nb = malloc(IBUF_SIZE);

			if (!nb) {
				conn_release(c);
				return -1;
			}
			memcpy(nb, c->ibuf + c->ioff, c->ilen);
			free(c->ibuf);
			c->ibuf = nb;
			c->icap = IBUF_SIZE;
			c->ioff = 0;
		} else if (c->ioff > 0) {
			memmove(c->ibuf, c->ibuf + c->ioff, c->ilen);
			c->ioff = 0;
		}
		if (c->ilen == IBUF_SIZE) {
			/* Full behind a request in progress: its EOF (or reset)
			 * waits unread behind the bytes we cannot take, and the
			 * edge that told of it will not come again. A peer that
			 * has shut down while it waits has gone, as one whose
			 * EOF we read (below): end it, so its request is
			 * cancelled now rather than at its deadline. */
			if (c->rdhup && c->phase == PH_ACTIVE) {
				conn_release(c);
				return -1;
			}
			return 0;
		}
		dst = c->ibuf + c->ilen;
		room = IBUF_SIZE - c->ilen;
	}
	r = recv(c->fd, dst, room, MSG_DONTWAIT);
	if (r > 0) {
		c->rx_empty = (size_t)r < room;
		if (c->phase == PH_CLOSING)
			return 1;
		if (c->ilen == 0) {
			c->ishared = 1;
			c->ioff = 0;
		}
		c->ilen += (uint32_t)r;
		/* Behind a request in progress nothing parses it now. */
		if (c->phase == PH_ACTIVE && c->active && ibuf_settle(c) < 0)
			return -1;
		return 1;
	}
	if (r < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	/* EOF or reset. */
	if (c->phase == PH_CLOSING && c->olen > 0 && r == 0) {
		c->peer_eof = 1;
		return 0;
	}
	conn_release(c);
	return -1;
}

/*
 * Runs c as far as it goes: parse buffered input, dispatch complete
 * requests, read more until EAGAIN (ET contract), a full ibuf or a request
 * in progress with no room to buffer more.
 */
static void conn_drive(struct tpo_http_conn *c)
{
	for (;;) {
		switch (c->phase) {
		case PH_ZOMBIE:
		case PH_FREE:
			return;
		case PH_ACTIVE:
			if (!c->active) {
				dispatch(c);
				continue;
			}
			break;
		case PH_CLOSING:
			break;
		default:
			if (c->ilen > 0) {
				conn_parse(c);
				if (c->phase != PH_ZOMBIE && ibuf_settle(c) < 0)
					return;
				continue;
			}
			break;
		}
		if (conn_read(c) <= 0)
			return;
	}
}

/* ---- events ------------------------------------------------------------ */

#define REFUSE_BODY \
	"{\"error\":{\"message\":\"server at its connection limit\",\"type\":\"server_error\"," \
	"\"param\":null,\"code\":null}}\n"

static void conn_open(struct tpo_http_conn *c, int fd)
{
	struct tpo_http_server *srv = c->srv;
	struct epoll_event ev;
	int one = 1;

	c->gen++;
	if (c->gen == 0)
		c->gen = 1;
	c->id = (uint64_t)c->gen << 32 | c->slot;
	c->fd = fd;
	c->phase = PH_IDLE;
	c->tl = TL_NONE;
	c->active = c->streaming = c->stream_raw = c->no_body = c->close_req = 0;
	c->corked = 0;   /* a dead predecessor may have left its output corked */
	c->in_cb = c->pending = c->shut = c->peer_eof = c->rx_empty = c->rdhup = 0;
	c->err_status = 0;
	c->hdr_fed = 0;
	c->user = NULL;
	c->user64 = 0;
	c->http_major = c->http_minor = 0;
	c->keep_alive = 0;
	c->m = NULL;
	list_init(&c->tnode);
	list_init(&c->pnode);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	srv->nconns++;
	ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
	ev.data.ptr = c;
	if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		close(fd);
		c->fd = -1;
		c->phase = PH_ZOMBIE;
		srv->nconns--;
		pending_add(c);
		return;
	}
	tl_arm(c, TL_HEAD);
}

static void listeners_enable(struct tpo_http_server *srv, int on)
{
	struct epoll_event ev;
	int i;

	for (i = 0; i < srv->nlis; i++) {
		ev.events = on ? EPOLLIN : 0;
		ev.data.ptr = &srv->lis[i];
		epoll_ctl(srv->epfd, EPOLL_CTL_MOD, srv->lis[i].fd, &ev);
	}
	srv->accept_paused = !on;
	if (!on)
		timer_need(srv);
}

static void on_accept(struct tpo_http_server *srv, struct listener *l)
{
	struct tpo_http_conn *c;

	for (;;) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			/* Out of fds or memory: stop accepting until the next tick
			 * instead of spinning on a level-triggered listener. */
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
				listeners_enable(srv, 0);
			return;
		}
		c = slot_take(srv);
		if (!c) {
			char msg[256];
			int n = snprintf(msg, sizeof(msg),
					 "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
					 "Connection: close\r\nRetry-After: 1\r\nContent-Length: %zu\r\n\r\n%s",
					 sizeof(REFUSE_BODY) - 1, REFUSE_BODY);

			if (send(fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
				/* Nothing to do: the client sees the close. */
			}
			close(fd);
			continue;
		}
		conn_open(c, fd);
	}
}

static void on_timeout(struct tpo_http_conn *c, int which)
{
	c->tl = TL_NONE;
	switch (which) {
	case TL_HEAD:
		conn_abort(c, 408, "request headers not received in time");
		break;
	case TL_BODY:
		conn_abort(c, 408, "request body not received in time");
		break;
	default:
		conn_release(c);
		break;
	}
}

static void run_pending(struct tpo_http_server *srv)
{
	while (!list_empty(&srv->pending)) {
		struct tpo_http_conn *c = CONN_OF(srv->pending.next, pnode);

		list_del(&c->pnode);
		c->pending = 0;
		if (c->phase != PH_ZOMBIE) {
			conn_drive(c);
			continue;
		}
		if (c->active) {
			c->active = 0;
			srv->nactive--;
			if (srv->cb.on_close)
				srv->cb.on_close(c, srv->arg);
		}
		slot_recycle(c);
	}
}

static void on_tick(struct tpo_http_server *srv)
{
	uint64_t exp, now = mono_ms();
	int i, any = 0;

	if (read(srv->tfd, &exp, sizeof(exp)) < 0) {
		/* EAGAIN after a re-arm: nothing to clear. */
	}
	for (i = 0; i < TL_COUNT; i++) {
		while (!list_empty(&srv->tl[i])) {
			struct tpo_http_conn *c = CONN_OF(srv->tl[i].next, tnode);

			if (c->deadline > now)
				break;
			list_del(&c->tnode);
			on_timeout(c, i);
		}
		any |= !list_empty(&srv->tl[i]);
	}
	if (srv->accept_paused && srv->nlis > 0)
		listeners_enable(srv, 1);
	if (!any && !srv->accept_paused)
		timer_set(srv, 0);
	else if (!srv->timer_on)
		timer_set(srv, TPO_HTTP_TICK_MS * 1000000L);
	else {
		/* After a kick the timer may run at 1 ns + interval: keep it. */
	}
}

void tpo_http_on_event(struct tpo_http_server *srv, const struct epoll_event *ev)
{
	struct tpo_http_tag *t = ev->data.ptr;

	srv->in_event++;
	switch (t->kind) {
	case TPO_TAG_LISTENER:
		on_accept(srv, (struct listener *)(void *)t);
		break;
	case TPO_TAG_TIMER:
		on_tick(srv);
		break;
	case TPO_TAG_CONN: {
		struct tpo_http_conn *c = (struct tpo_http_conn *)(void *)t;

		if (c->fd < 0)
			break;
		if ((ev->events & EPOLLOUT) && c->olen > 0)
			flush_out(c);
		if (ev->events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
			c->rx_empty = 0;   /* something arrived since */
			if (ev->events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
				c->rdhup = 1;
			conn_drive(c);
		}
		break;
	}
	default:
		break;
	}
	if (srv->in_event == 1)
		run_pending(srv);
	srv->in_event--;
}

/* ---- server ------------------------------------------------------------ */

void tpo_http_config_default(struct tpo_http_config *cfg)
{
	cfg->max_conns = 1024;
	cfg->max_headers = 64;
	cfg->max_header_bytes = 16384;
	cfg->max_header_line = 8192;
	cfg->max_body_bytes = 1u << 20;
	cfg->header_timeout_ms = 10000;
	cfg->body_timeout_ms = 30000;
	cfg->idle_timeout_ms = 60000;
	cfg->out_cap_bytes = 4u << 20;
}

int tpo_http_create(struct tpo_http_server **srvp, int epfd, const struct tpo_http_config *cfg,
		    const struct tpo_http_callbacks *cb, void *arg)
{
	struct tpo_http_config def;
	struct tpo_http_server *srv;
	struct epoll_event ev;
	uint32_t i;
	int r;

	if (!srvp || epfd < 0 || !cb || !cb->on_request)
		return -EINVAL;
	tpo_http_config_default(&def);
	srv = calloc(1, sizeof(*srv));
	if (!srv)
		return -ENOMEM;
	srv->cfg = cfg ? *cfg : def;
#define DEF(f) do { if (!srv->cfg.f) srv->cfg.f = def.f; } while (0)
	DEF(max_conns); DEF(max_headers); DEF(max_header_bytes); DEF(max_header_line);
	DEF(max_body_bytes); DEF(header_timeout_ms); DEF(body_timeout_ms);
	DEF(idle_timeout_ms); DEF(out_cap_bytes);
#undef DEF
	r = -EINVAL;
	if (srv->cfg.max_conns > (1u << 22) || srv->cfg.max_headers > 4096 ||
	    srv->cfg.max_header_bytes > (1u << 24) ||
	    srv->cfg.max_body_bytes > (1ull << 40))
		goto err_free;
	srv->timer_tag.kind = TPO_TAG_TIMER;
	srv->epfd = epfd;
	srv->cb = *cb;
	srv->arg = arg;
	srv->tl_ms[TL_HEAD] = srv->cfg.header_timeout_ms;
	srv->tl_ms[TL_BODY] = srv->cfg.body_timeout_ms;
	srv->tl_ms[TL_IDLE] = srv->cfg.idle_timeout_ms;
	srv->tl_ms[TL_LINGER] = TPO_HTTP_LINGER_MS;
	for (i = 0; i < TL_COUNT; i++)
		list_init(&srv->tl[i]);
	list_init(&srv->pending);
	if (settings.on_message_begin == NULL) {
		http_parser_settings_init(&settings);
		settings.on_url = on_url;
		settings.on_header_field = on_header_field;
		settings.on_header_value = on_header_value;
		settings.on_headers_complete = on_headers_complete;
		settings.on_body = on_body;
		settings.on_message_complete = on_message_complete;
		settings.on_chunk_header = on_chunk_header;
		settings.on_message_begin = on_message_begin;
	}
	r = -ENOMEM;
	/* Left untouched: slot_take initialises slots as they are first used. */
	srv->conns = calloc(srv->cfg.max_conns, sizeof(*srv->conns));
	if (!srv->conns)
		goto err_free;
	srv->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (srv->tfd < 0) {
		r = -errno;
		goto err_free;
	}
	ev.events = EPOLLIN;
	ev.data.ptr = &srv->timer_tag;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, srv->tfd, &ev) < 0) {
		r = -errno;
		goto err_close;
	}
	*srvp = srv;
	return 0;
err_close:
	close(srv->tfd);
err_free:
	free(srv->conns);
	free(srv);
	return r;
}

static int parse_hostport(const char *hp, char *host, size_t hcap, const char **port)
{
	const char *colon;
	size_t hl;

	if (hp[0] == '[') {
		const char *end = strchr(hp, ']');

		if (!end || end[1] != ':')
			return -EINVAL;
		hl = (size_t)(end - hp - 1);
		hp++;
		colon = end + 1;
	} else {
		colon = strrchr(hp, ':');
		if (!colon)
			return -EINVAL;
		hl = (size_t)(colon - hp);
	}
	if (hl >= hcap || colon[1] == '\0')
		return -EINVAL;
	memcpy(host, hp, hl);
	host[hl] = '\0';
	*port = colon + 1;
	return 0;
}

int tpo_http_listen(struct tpo_http_server *srv, const char *hostport)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *res, *ai;
	struct listener *l;
	struct epoll_event ev;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[256];
	const char *port;
	int fd = -1, one = 1, pass, r;

	if (!srv || !hostport)
		return -EINVAL;
	if (srv->nlis == TPO_HTTP_MAX_LISTENERS)
		return -ENOSPC;
	r = parse_hostport(hostport, host, sizeof(host), &port);
	if (r < 0)
		return r;
	r = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
	if (r != 0)
		return r == EAI_SYSTEM ? -errno : -EINVAL;
	r = -EADDRNOTAVAIL;
	/* IPv4 first, so "localhost" and ":PORT" serve 127.0.0.1 / 0.0.0.0. */
	for (pass = 0; pass < 2 && fd < 0; pass++)
	for (ai = res; ai; ai = ai->ai_next) {
		if ((ai->ai_family == AF_INET) != (pass == 0))
			continue;
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			r = -errno;
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0)
			break;
		r = -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return r;
	l = &srv->lis[srv->nlis];
	l->tag.kind = TPO_TAG_LISTENER;
	l->fd = fd;
	l->port = -1;
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
		l->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
							  : ((struct sockaddr_in *)&ss)->sin_port);
	ev.events = srv->accept_paused ? 0 : EPOLLIN;
	ev.data.ptr = l;
	if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	srv->nlis++;
	return 0;
}

int tpo_http_local_port(const struct tpo_http_server *srv)
{
	if (!srv || srv->nlis == 0)
		return -ENOTCONN;
	return srv->lis[0].port;
}

void tpo_http_stop_accepting(struct tpo_http_server *srv)
{
	int i;

	for (i = 0; i < srv->nlis; i++) {
		epoll_ctl(srv->epfd, EPOLL_CTL_DEL, srv->lis[i].fd, NULL);
		close(srv->lis[i].fd);
	}
	srv->nlis = 0;
	srv->accept_paused = 0;
	srv->draining = 1;
}

uint32_t tpo_http_active(const struct tpo_http_server *srv)
{
	return srv->nactive;
}

uint32_t tpo_http_conns(const struct tpo_http_server *srv)
{
	return srv->nconns;
}

uint32_t tpo_http_close_idle(struct tpo_http_server *srv)
{
	uint32_t i, n = 0;

	for (i = 0; i < srv->hwm; i++) {
		struct tpo_http_conn *c = &srv->conns[i];

		if (c->phase == PH_IDLE && c->ilen == 0 && c->olen == 0 && !c->active) {
			conn_release(c);
			n++;
		}
	}
	/* The pass that recycles them may call back (on_close of another
	 * connection): it runs from tpo_http_on_event, as http.h promises. */
	if (!srv->in_event && n)
		timer_set(srv, 1);
	return n;
}

void tpo_http_destroy(struct tpo_http_server *srv)
{
	uint32_t i;

	if (!srv)
		return;
	for (i = 0; i < srv->hwm; i++) {
		struct tpo_http_conn *c = &srv->conns[i];

		if (c->fd >= 0) {
			epoll_ctl(srv->epfd, EPOLL_CTL_DEL, c->fd, NULL);
			close(c->fd);
		}
		conn_free_bufs(c);
	}
	for (i = 0; i < (uint32_t)srv->nlis; i++) {
		epoll_ctl(srv->epfd, EPOLL_CTL_DEL, srv->lis[i].fd, NULL);
		close(srv->lis[i].fd);
	}
	epoll_ctl(srv->epfd, EPOLL_CTL_DEL, srv->tfd, NULL);
	close(srv->tfd);
	while (srv->nopool)
		free(srv->opool[--srv->nopool]);
	free(srv->rbuf);
	if (srv->spare)
		free(srv->spare->body);
	free(srv->spare);
	free(srv->conns);
	free(srv);
}

/* ---- accessors --------------------------------------------------------- */

uint64_t tpo_http_conn_id(const struct tpo_http_conn *c)
{
	return c->id;
}

struct tpo_http_conn *tpo_http_conn_lookup(struct tpo_http_server *srv, uint64_t id)
{
	uint32_t slot = (uint32_t)id;
	struct tpo_http_conn *c;

	if (slot >= srv->hwm)
		return NULL;
	c = &srv->conns[slot];
	if (c->fd < 0 || c->id != id)
		return NULL;
	return c;
}

size_t tpo_http_conn_mem(const struct tpo_http_conn *c)
{
	size_t n = (size_t)c->icap + c->ocap;

	if (c->m)
		n += sizeof(*c->m) + c->srv->cfg.max_headers * sizeof(*c->m->hdrs) +
		     c->m->hcap + c->m->bcap;
	return n;
}

void *tpo_http_conn_user(const struct tpo_http_conn *c) { return c->user; }
void tpo_http_conn_set_user(struct tpo_http_conn *c, void *user) { c->user = user; }
uint64_t tpo_http_conn_user64(const struct tpo_http_conn *c) { return c->user64; }
void tpo_http_conn_set_user64(struct tpo_http_conn *c, uint64_t v) { c->user64 = v; }

const char *tpo_http_header(const struct tpo_http_req *req, const char *name)
{
	size_t nl = strlen(name);
	uint32_t i;

	for (i = 0; i < req->nheaders; i++)
		if (req->headers[i].name_len == nl && strcasecmp(req->headers[i].name, name) == 0)
			return req->headers[i].value;
	return NULL;
}
