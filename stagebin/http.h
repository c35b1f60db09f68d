/*
 * http.h — the HTTP/1.1 server layer under the stream stage: listen, accept,
 * parse requests (libhttp-parser), enforce limits, keep-alive and pipelining,
 * write complete or chunked (streaming) responses. I/O only: it knows nothing
 * about rings or OpenAI.
 *
 * Event loop. The caller owns the epoll fd and its loop; the layer only adds
 * its fds to it. Every fd the layer registers carries in epoll_data.ptr a
 * pointer to one of its own objects whose FIRST member is a
 * struct tpo_http_tag; kind 1..15 belong to this layer (enum tpo_tag_kind).
 * A caller that registers fds of its own in the same epoll set must do the
 * same with kinds >= TPO_TAG_USER, and dispatches like this:
 *
 *	struct tpo_http_tag *t = ev[i].data.ptr;
 *	if (tpo_http_tag_ours(t))
 *		tpo_http_on_event(srv, &ev[i]);
 *	else
 *		... t->kind >= TPO_TAG_USER: the caller's own object ...
 *
 * Timers. One timerfd per server (TPO_TAG_TIMER) ticks every
 * TPO_HTTP_TICK_MS while some connection has a deadline; deadlines live in
 * one FIFO list per timeout kind (each kind has a fixed duration, so
 * appending keeps a list sorted), so a tick costs O(expired).
 *
 * Requests. on_request is called once a request (headers and body) is
 * complete. The request stays "in progress" until the caller ends it with
 * tpo_http_respond / tpo_http_error* or tpo_http_stream_end; meanwhile
 * further pipelined bytes are buffered, not parsed, so responses leave in
 * request order. The struct tpo_http_req and every pointer in it are valid
 * until that ending call, tpo_http_req_done, or on_close.
 *
 * Connection loss. If a connection with a request in progress goes away
 * (client disconnect, reset, output over its cap), on_close is called once
 * for it, always from inside tpo_http_on_event (never from inside another
 * tpo_http_* call, which then just returns -EPIPE); the caller cancels the
 * request there. Connections without a request in progress close silently.
 *
 * Identity. A connection is named to the outside by tpo_http_conn_id(): slot
 * index (low 32 bits) and generation (high 32 bits, never 0, so id 0 is never
 * valid). tpo_http_conn_lookup() returns NULL once that connection is gone,
 * even if its slot is reused. Keep ids, not pointers, across loop iterations.
 *
 * Single-threaded: every function must be called from the thread running the
 * loop. Memory: idle cost does not grow with max_conns (slots are set up on
 * first use); a connection holds buffers only while it needs them: header
 * strings and body from a request's first byte until it ends (or
 * tpo_http_req_done), unparsed input only while pipelined bytes wait behind
 * a request in progress, output only while some is unsent. A connection
 * with a request in progress after tpo_http_req_done and nothing unsent
 * costs its slot (a few hundred bytes) and nothing else.
 */
#ifndef TPO_HTTP_H
#define TPO_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>

enum tpo_tag_kind {
	TPO_TAG_LISTENER = 1,
	TPO_TAG_CONN     = 2,
	TPO_TAG_TIMER    = 3,
	TPO_TAG_USER     = 16,    /* first kind free for the caller */
};

/* First member of every object whose address goes into epoll_data.ptr. */
struct tpo_http_tag {
	uint32_t kind;
};

static inline int tpo_http_tag_ours(const struct tpo_http_tag *t)
{
	return t->kind > 0 && t->kind < TPO_TAG_USER;
}

#define TPO_HTTP_TICK_MS       100
#define TPO_HTTP_LINGER_MS     1000   /* drain input after an error response */
#define TPO_HTTP_MAX_LISTENERS 4

/*
 * Limits. A field left 0 takes the default in brackets (tpo_http_create
 * fills them in; tpo_http_config_default writes them all). Every limit is
 * answered with its status and an OpenAI-style JSON error, Connection:
 * close, and the connection closes; other connections are unaffected.
 */
struct tpo_http_config {
	uint32_t max_conns;          /* [1024] <= 2^22; beyond: 503 and close */
	uint32_t max_headers;        /* [64] more header fields: 431 */
	uint32_t max_header_bytes;   /* [16384] request line + headers: 431 */
	uint32_t max_header_line;    /* [8192] one field name + value: 431 */
	uint64_t max_body_bytes;     /* [1 MiB] Content-Length or chunked: 413 */
	uint32_t header_timeout_ms;  /* [10000] from accept / first byte: 408 */
	uint32_t body_timeout_ms;    /* [30000] from end of headers: 408 */
	uint32_t idle_timeout_ms;    /* [60000] keep-alive idle: close */
	uint32_t out_cap_bytes;      /* [4 MiB] unsent output: client too slow */
};

struct tpo_http_server;
struct tpo_http_conn;

struct tpo_http_header {
	const char *name;            /* as sent; NUL-terminated */
	const char *value;           /* trailing blanks trimmed; NUL-terminated */
	uint32_t name_len, value_len;
};

struct tpo_http_req {
	int method;                  /* enum http_method of http_parser.h */
	const char *method_str;      /* "GET", "POST", ... */
	const char *path;            /* URL path without query, NUL-terminated */
	size_t path_len;
	const char *query;           /* after '?', "" if none; NUL-terminated */
	size_t query_len;
	unsigned http_major, http_minor;
	int keep_alive;              /* the connection stays open after this */
	const struct tpo_http_header *headers;
	uint32_t nheaders;
	const char *body;            /* NUL-terminated (not counted in body_len) */
	size_t body_len;
};

struct tpo_http_callbacks {
	void (*on_request)(struct tpo_http_conn *c, struct tpo_http_req *req, void *arg);
	void (*on_close)(struct tpo_http_conn *c, void *arg);
};

void tpo_http_config_default(struct tpo_http_config *cfg);

/*
 * Creates a server on the caller's epoll fd epfd (which must outlive it).
 * cfg may be NULL (defaults); cb is copied; arg goes to every callback.
 * Allocates *srvp, freed by tpo_http_destroy. Returns 0, -EINVAL, -ENOMEM
 * or -errno of timerfd/epoll_ctl.
 */
int tpo_http_create(struct tpo_http_server **srvp, int epfd, const struct tpo_http_config *cfg,
		    const struct tpo_http_callbacks *cb, void *arg);

/*
 * Closes every connection and fd of the server and frees it. Calls no
 * callback. NULL is a no-op.
 */
void tpo_http_destroy(struct tpo_http_server *srv);

/*
 * Listens on "HOST:PORT": "127.0.0.1:8080", "[::1]:8080", "localhost:0",
 * "0.0.0.0:80", ":8080" (all IPv4 interfaces; "[::]:8080" for dual stack).
 * A name resolving to several addresses binds one, IPv4 preferred.
 * Non-blocking, SO_REUSEADDR and SO_REUSEPORT (so one listener per process
 * on the same port balances).
 * Up to TPO_HTTP_MAX_LISTENERS. Returns 0, -EINVAL (bad address),
 * -ENOSPC (too many listeners) or -errno of getaddrinfo/socket/bind/listen.
 */
int tpo_http_listen(struct tpo_http_server *srv, const char *hostport);

/* Port of the first listener (host order), or -ENOTCONN if none. */
int tpo_http_local_port(const struct tpo_http_server *srv);

/*
 * Handles one epoll event whose tag is ours (tpo_http_tag_ours). May call
 * on_request and on_close.
 */
void tpo_http_on_event(struct tpo_http_server *srv, const struct epoll_event *ev);

/* Closes the listeners (drain); responses then carry Connection: close. */
void tpo_http_stop_accepting(struct tpo_http_server *srv);

/* Connections with a request in progress (dispatched, not yet ended). */
uint32_t tpo_http_active(const struct tpo_http_server *srv);

/* Open connections, of any state. */
uint32_t tpo_http_conns(const struct tpo_http_server *srv);

/*
 * Closes every connection that has no request in progress, no partly
 * received request and no unsent output. Returns how many it closed.
 */
uint32_t tpo_http_close_idle(struct tpo_http_server *srv);

/*
 * The caller is done reading the request in progress, which stays in
 * progress (answer it as usual): frees the struct tpo_http_req given to
 * on_request, its header strings and body, so a request waiting for its
 * answer costs only its connection slot. req must not be used after this.
 * No-op without a request in progress.
 */
void tpo_http_req_done(struct tpo_http_conn *c);

/*
 * Bytes of buffers c holds now (input, header strings, body, output), not
 * counting its slot: 0 for a connection that is idle, or waits with its
 * request done (tpo_http_req_done) and nothing unsent.
 */
size_t tpo_http_conn_mem(const struct tpo_http_conn *c);

uint64_t tpo_http_conn_id(const struct tpo_http_conn *c);
struct tpo_http_conn *tpo_http_conn_lookup(struct tpo_http_server *srv, uint64_t id);

/* The caller's per-connection data; both 0/NULL for a new connection. */
void *tpo_http_conn_user(const struct tpo_http_conn *c);
void tpo_http_conn_set_user(struct tpo_http_conn *c, void *user);
uint64_t tpo_http_conn_user64(const struct tpo_http_conn *c);
void tpo_http_conn_set_user64(struct tpo_http_conn *c, uint64_t v);

/*
 * Ends the request in progress with a complete response (Content-Length).
 * content_type may be NULL (no header); extra_headers is NULL or preformatted
 * "Name: value\r\n" lines. Returns 0; -EINVAL if no request is in progress
 * or a stream was begun; -EPIPE if the connection failed (on_close follows
 * from the loop).
 */
int tpo_http_respond(struct tpo_http_conn *c, int status, const char *content_type,
		     const char *extra_headers, const void *body, size_t len);

/*
 * Streaming: headers with Transfer-Encoding: chunked (HTTP/1.0 clients: no
 * framing, the connection closes at the end), then one chunk per
 * stream_write (len 0 writes nothing), then stream_end (the 0-chunk; the
 * connection is ready for its next request). Same returns as respond.
 */
int tpo_http_stream_begin(struct tpo_http_conn *c, int status, const char *content_type,
			  const char *extra_headers);
int tpo_http_stream_write(struct tpo_http_conn *c, const void *data, size_t len);
int tpo_http_stream_end(struct tpo_http_conn *c);

/*
 * Corking: while corked, responses are only buffered; tpo_http_uncork sends
 * them in one write. The stream stage corks the connections it writes to
 * while it drains a batch of records, so several tokens of one response
 * leave in one system call. Uncork every connection you cork.
 */
void tpo_http_cork(struct tpo_http_conn *c);
void tpo_http_uncork(struct tpo_http_conn *c);

/*
 * Ends the request in progress with an OpenAI-style JSON error body
 * {"error":{"message":...,"type":...,"param":null,"code":null}}; the type is
 * "invalid_request_error" for 4xx, "server_error" for 5xx. The _ex variant
 * adds extra_headers (e.g. "Retry-After: 1\r\n" for 429/503). Same returns
 * as respond.
 */
int tpo_http_error(struct tpo_http_conn *c, int status, const char *message);
int tpo_http_error_ex(struct tpo_http_conn *c, int status, const char *message,
		      const char *extra_headers);

/* Reason phrase for status ("Too Many Requests"), "Unknown" if unknown. */
const char *tpo_http_reason(int status);

/* Case-insensitive lookup of a request header; NULL if absent. */
const char *tpo_http_header(const struct tpo_http_req *req, const char *name);

#endif
