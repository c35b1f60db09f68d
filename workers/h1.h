/*
 * h1.h — a small HTTP/1.1 client for plain http:// model endpoints at a
 * literal IP address (workers/h1.c).
 *
 * Why not libcurl for these: a model server beside the gateway (llama.cpp,
 * vLLM, TGI on this host or the LAN) is the common case, and there libcurl
 * 7.88 spends ~68k of the ~85k instructions tpo-infer needs per request
 * (it parses and re-serialises the URL and prints the request head a byte
 * at a time, per transfer), and its ~30 libraries add ~10 MiB to the infer
 * process's resident set. This client does one thing: POST a prebuilt head
 * and a body over a kept-alive connection and hand back the response's
 * status, the two headers the engine reads and the body bytes; the response
 * is parsed by http_parser (already the front's request parser), which
 * handles chunked and length-delimited bodies and keep-alive rules. Everything else — https,
 * host names (resolution must not block the loop), proxies, user:password
 * in the URL — stays with libcurl (workers/upstream.c decides, see
 * tpo_h1_target_parse).
 *
 * One client per infer process, driven by its loop like a curl multi:
 * tpo_h1_run() makes non-blocking progress and reports finished transfers,
 * tpo_h1_wait() sleeps on every connection plus one extra fd. Connections
 * stay open between transfers (at most max_idle idle ones); a request sent
 * on a reused connection that the server had closed meanwhile is sent once
 * more on a new connection, as curl does.
 *
 * Not thread-safe; every call from the thread that made the client.
 */
#ifndef TPO_H1_H
#define TPO_H1_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Where requests of one kind go and the head they all share. */
struct tpo_h1_target {
	struct sockaddr_storage addr;
	socklen_t addrlen;
	char *head;        /* "POST /path HTTP/1.1\r\nHost: ...\r\n...Content-Length: " */
	size_t head_len;
	char name[80];     /* "127.0.0.1:8080", for messages */
};

/*
 * Parses url into t when this client can serve it: "http://" + an IPv4
 * literal or a bracketed IPv6 literal + optional ":port" + optional path,
 * no user info. On success *path points at the path in url ("" if none) and
 * 0 is returned; -EPROTONOSUPPORT otherwise (libcurl's job). t->head is not
 * touched.
 */
int tpo_h1_target_parse(struct tpo_h1_target *t, const char *url, const char **path);

enum tpo_h1_result {
	TPO_H1_OK = 0,
	TPO_H1_FAILED,        /* connect, send, receive or a malformed response */
	TPO_H1_TIMEOUT,       /* connect_ns or deadline_ns passed */
	TPO_H1_ABORTED,       /* on_data refused bytes */
};

struct tpo_h1_xfer;

/*
 * One request and its response. The caller owns it (and body, target)
 * until done() has been called or tpo_h1_abort() returned; the fields
 * above "results" are the caller's to set before tpo_h1_start().
 */
struct tpo_h1_xfer {
	const struct tpo_h1_target *t;
	const char *body;
	size_t body_len;
	uint64_t connect_ns;           /* connect by then (CLOCK_MONOTONIC ns), 0: no limit */
	uint64_t deadline_ns;          /* whole transfer by then, 0: no limit */
	/* Body bytes (de-chunked); a return other than len aborts. */
	size_t (*on_data)(void *arg, const char *p, size_t len);
	/* The transfer has ended; the client is done with it. */
	void (*done)(struct tpo_h1_xfer *x, int result, const char *err);
	void *arg;
	/* results, valid from the first on_data (status also in done) */
	int status;                    /* 0: no final response head yet */
	char ctype[96];                /* Content-Type, "" if none */
	long retry_after_ms;           /* Retry-After in seconds, as ms; -1: none */
	/* the client's */
	struct h1_conn *conn;
	int retried;
};

struct tpo_h1;

/* A client keeping at most max_idle idle connections. NULL: out of memory
 * or no epoll (errno says). Free with tpo_h1_free. */
struct tpo_h1 *tpo_h1_new(unsigned max_idle);
void tpo_h1_free(struct tpo_h1 *h);

/* Starts x (connects or takes an idle connection, sends what it can).
 * 0, or -errno: then done() is not called. */
int tpo_h1_start(struct tpo_h1 *h, struct tpo_h1_xfer *x);

/* Stops x without done(): its connection is kept if the response had
 * ended, else closed (so the server stops generating). A no-op for a
 * transfer that is not running. */
void tpo_h1_abort(struct tpo_h1 *h, struct tpo_h1_xfer *x);

/* Progress on every connection ready now and every expired timer; calls
 * on_data and done. */
void tpo_h1_run(struct tpo_h1 *h, uint64_t now);

/* Sleeps until a connection is ready, extra_fd (-1: none) has been written
 * to (edge-triggered: each write of an eventfd wakes one wait, whether or not
 * anybody drains it), a transfer's timer expires or timeout_ms passes. 0 or
 * -errno. Call
 * tpo_h1_run() between two waits, idle or not: it reads what woke this one
 * (a server closing an idle connection) and retires expired timers, which
 * would otherwise end every later wait at once. */
int tpo_h1_wait(struct tpo_h1 *h, int extra_fd, int timeout_ms);

/* The client's epoll fd (readable when tpo_h1_run has work), to wait on
 * together with other fds; then the next tpo_h1_run polls it itself. */
int tpo_h1_fd(const struct tpo_h1 *h);

/* timeout_ms (-1: none) shortened to the earliest timer of a running
 * transfer; 0 if one is due or a failure waits for tpo_h1_run. */
int tpo_h1_timeout(const struct tpo_h1 *h, int timeout_ms);

/* Transfers running (drains included). */
unsigned tpo_h1_running(const struct tpo_h1 *h);

#endif
