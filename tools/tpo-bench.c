/*
 * tpo-bench — load generator for OpenAI-compatible HTTP endpoints.
 *
 * One thread, one epoll loop, raw non-blocking sockets and one pre-built
 * request (HTTP/1.1 keep-alive, one request in flight per connection).
 *
 * Open loop (--mode open): requests are due at t0 + i / rate whatever
 * happened to earlier ones. A due request takes an idle connection, or
 * opens a new one (up to --max-conns); if none is free it waits in a
 * backlog, and its latency still counts from the time it was due, so a
 * slow server cannot hide its queueing (no coordinated omission).
 * --profile R:S,R:S,... runs phases of different rates, reported apart.
 *
 * Closed loop (--mode closed): --concurrency connections, each sends its
 * next request as soon as the previous answer ended; latency counts from
 * the send.
 *
 * Every request ends exactly once: with an HTTP status, a connection error,
 * a timeout (--timeout-ms), or "unanswered" if the run ended first. Bytes
 * arriving on a connection with no request in flight are counted as
 * extra_responses. So sent == answers + conn_errors + timeouts + unanswered
 * is the client-side proof that nothing was lost or answered twice.
 *
 * Streaming answers (Content-Type: text/event-stream) are parsed line by
 * line: a "data:" event with a non-empty "content" (or "text") string is a
 * token. Non-streaming answers count the "completion_tokens" of their usage.
 * Histograms are shm/hist.h tpo_hist (ns, <= 0.8 % error).
 *
 * Exit codes: 0 ran, 64 usage, 111 system error.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "shm/hist.h"

#define PBUF        2048            /* head, SSE line or body tail per conn */
#define RBUF        (256 * 1024)
#define MAX_PHASES  16
#define MAX_HDRS    16
#define NSTATUS     600
#define TL_MAX      3600

enum cstate { C_FREE = 0, C_CONNECTING, C_SENDING, C_WAITING, C_IDLE, C_PAUSED };
enum pstate { P_HEAD = 0, P_BODY_CL, P_BODY_EOF, P_CH_SIZE, P_CH_EXT, P_CH_DATA,
	      P_CH_DATA_CRLF, P_CH_TRAILER };

struct conn {
	int fd;
	int state;                   /* enum cstate */
	int idx;
	uint32_t sent_off;
	int phase;                   /* -1: warm-up, not measured */
	uint64_t t_start;            /* due (open) or sent (closed) */
	uint64_t t_handed;           /* handed to a connection (open: >= t_start) */
	uint64_t t_first_byte, t_first_tok, t_last_tok;
	uint32_t ntok;
	int status;
	int keepalive, sse, pstate;
	int64_t left;                /* body bytes (CL) or chunk bytes left */
	uint32_t plen, trailer_len;
	int stream_err;
	uint64_t usage_tokens;
	struct conn *prev, *next;    /* in-flight list, by t_start; or free list */
	char pbuf[PBUF];
};

struct stats {
	struct tpo_hist e2e_ok, e2e_shed, e2e_other, ttfb, ttft, itl;
	struct tpo_hist send_lag;    /* open loop: due -> handed to a connection */
	struct tpo_hist shed_handed; /* open loop: 429/503 from the hand-off, the
				      * generator's own lag left out */
	uint64_t status[NSTATUS];
	uint64_t sent, conn_err, timeout, unanswered, tokens, stream_err;
	uint64_t stall_ns;           /* longest gap between 2xx answers ending in it */
};

struct tl {                          /* one second of the run, by completion */
	uint32_t sent, ok, shed, err;
	uint64_t ok_max_ns;
	uint64_t tokens;
};

struct phase {
	double rate;
	double dur;
	uint64_t t_begin, t_end;
};

static struct {
	const char *url, *prompt, *model, *json, *label, *profile;
	const char *hdr[MAX_HDRS];
	int nhdr;
	int open;
	double rate, duration, warmup, ramp;
	int concurrency, max_conns, stream, max_tokens, timeout_ms, drain_ms, quiet;
} opt = {
	.prompt = "Say something.", .model = "tpo-mock", .open = 0, .rate = 1000,
	.duration = 10, .concurrency = 64, .max_conns = 10000, .max_tokens = 64,
	.timeout_ms = 30000, .drain_ms = -1,
};

static struct sockaddr_storage addr;
static socklen_t addrlen;
static char host[256], path[1024];
static char *req;
static size_t reqlen;
static int epfd;
static struct conn *conns;
static int nconns_open, nconns_used, max_open;
static struct conn *free_list;       /* conns with an fd, idle */
static int *spare;                   /* never-used conn slots, stack */
static int nspare;
static struct conn inflight;         /* sentinel of the in-flight list */
static uint64_t *backlog;            /* open loop: due times waiting for a conn */
static size_t bl_cap, bl_head, bl_tail;
static uint64_t bl_overflow, extra_responses, connect_fail;
static struct phase phases[MAX_PHASES];
static int nphases;
static struct stats *pst;            /* per phase */
static struct tl *tl;
static int tl_n;
static uint64_t t0, t_meas, last_ok_ns, longest_stall_ns, inflight_n, max_inflight;
static uint64_t paused_n;
static char rbuf[RBUF];
static volatile sig_atomic_t interrupted;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void on_sigint(int sig)
{
	(void)sig;
	interrupted = 1;
}

static void usage(FILE *f)
{
	fprintf(f,
"usage: tpo-bench --url URL [options]\n"
"  --url URL            http://HOST:PORT/PATH (default path /v1/chat/completions)\n"
"  --mode open|closed   open: constant arrival rate; closed: fixed concurrency (default closed)\n"
"  --rate R             open loop: requests per second (default 1000)\n"
"  --profile R:S,...    open loop: phases of R req/s for S seconds (overrides --rate/--duration)\n"
"  --concurrency C      closed loop: connections (default 64)\n"
"  --max-conns N        open loop: most connections (default 10000)\n"
"  --duration S         measured seconds (default 10)\n"
"  --warmup S           unmeasured seconds before (default 0)\n"
"  --ramp S             closed loop: spread the first requests over S seconds\n"
"  --stream             ask for a streamed (SSE) answer\n"
"  --max-tokens N       max_tokens of each request (default 64)\n"
"  --prompt TEXT        the user message\n"
"  --model NAME         (default tpo-mock)\n"
"  --header 'K: V'      extra request header (repeatable)\n"
"  --timeout-ms MS      a request unanswered this long is a timeout (default 30000)\n"
"  --drain-ms MS        after the run, wait this long for answers (default: timeout)\n"
"  --json FILE          write the results as JSON\n"
"  --label TEXT         copied into the JSON\n"
"  --quiet              no human summary\n"
"or:    tpo-bench --serve HOST:PORT   answer as a bare OpenAI-compatible mock (baseline)\n");
}

/* ---- set-up ---- */

static int parse_url(void)
{
	const char *u = opt.url, *hp, *slash, *colon;
	char port[16] = "80";
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai;
	size_t hl;
	int err;

	if (strncmp(u, "http://", 7) != 0) {
		fprintf(stderr, "tpo-bench: --url: only http:// is supported: %s\n", u);
		return -EINVAL;
	}
	hp = u + 7;
	slash = strchr(hp, '/');
	hl = slash ? (size_t)(slash - hp) : strlen(hp);
	if (hl == 0 || hl >= sizeof(host))
		return -EINVAL;
	memcpy(host, hp, hl);
	host[hl] = 0;
	snprintf(path, sizeof(path), "%s", slash ? slash : "/v1/chat/completions");
	if (strcmp(path, "/") == 0)
		snprintf(path, sizeof(path), "/v1/chat/completions");
	colon = strrchr(host, ':');
	char name[256];
	snprintf(name, sizeof(name), "%s", host);
	if (colon && !strchr(colon, ']')) {
		snprintf(port, sizeof(port), "%s", colon + 1);
		name[colon - host] = 0;
	}
	if (name[0] == '[') {
		memmove(name, name + 1, strlen(name));
		name[strcspn(name, "]")] = 0;
	}
	err = getaddrinfo(name, port, &hints, &ai);
	if (err) {
		fprintf(stderr, "tpo-bench: %s: %s\n", host, gai_strerror(err));
		return -EINVAL;
	}
	memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
	addrlen = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

static size_t json_escape(char *dst, const char *s)
{
	size_t n = 0;

	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\') {
			if (dst) { dst[n] = '\\'; dst[n + 1] = (char)c; }
			n += 2;
		} else if (c < 0x20) {
			if (dst)
				snprintf(dst + n, 7, "\\u%04x", c);
			n += 6;
		} else {
			if (dst)
				dst[n] = (char)c;
			n++;
		}
	}
	return n;
}

static int build_request(void)
{
	int completions = strstr(path, "/completions") && !strstr(path, "chat/");
	size_t plen = json_escape(NULL, opt.prompt), mlen = json_escape(NULL, opt.model);
	size_t cap = plen + mlen + 4096, hcap = 1024;
	char *body = malloc(cap), *p;
	int n, i;

	for (i = 0; i < opt.nhdr; i++)
		hcap += strlen(opt.hdr[i]) + 2;
	if (!body)
		return -ENOMEM;
	p = body;
	p += sprintf(p, "{\"model\":\"");
	p += json_escape(p, opt.model);
	p += sprintf(p, "\",\"stream\":%s,\"max_tokens\":%d,", opt.stream ? "true" : "false",
		     opt.max_tokens);
	if (completions) {
		p += sprintf(p, "\"prompt\":\"");
		p += json_escape(p, opt.prompt);
		p += sprintf(p, "\"}");
	} else {
		p += sprintf(p, "\"messages\":[{\"role\":\"user\",\"content\":\"");
		p += json_escape(p, opt.prompt);
		p += sprintf(p, "\"}]}");
	}
	req = malloc(hcap + (size_t)(p - body) + strlen(host) + strlen(path));
	if (!req) {
		free(body);
		return -ENOMEM;
	}
	n = sprintf(req, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
		    "Accept: %s\r\n", path, host, opt.stream ? "text/event-stream" : "application/json");
	for (i = 0; i < opt.nhdr; i++)
		n += sprintf(req + n, "%s\r\n", opt.hdr[i]);
	n += sprintf(req + n, "Content-Length: %zu\r\n\r\n", (size_t)(p - body));
	memcpy(req + n, body, (size_t)(p - body));
	reqlen = (size_t)n + (size_t)(p - body);
	free(body);
	return 0;
}

static int parse_profile(void)
{
	const char *s = opt.profile;

	if (!opt.open || !s) {
		phases[0].rate = opt.rate;
		phases[0].dur = opt.duration;
		nphases = 1;
		return 0;
	}
	while (*s && nphases < MAX_PHASES) {
		char *end;
		double r = strtod(s, &end), d;

		if (*end != ':')
			return -EINVAL;
		d = strtod(end + 1, &end);
		if (r < 0 || d <= 0)
			return -EINVAL;
		phases[nphases].rate = r;
		phases[nphases].dur = d;
		nphases++;
		if (*end == ',')
			end++;
		else if (*end)
			return -EINVAL;
		s = end;
	}
	return nphases ? 0 : -EINVAL;
}

/* ---- connections ---- */

static void list_del(struct conn *c)
{
	c->prev->next = c->next;
	c->next->prev = c->prev;
	c->prev = c->next = NULL;
}

static void list_add_tail(struct conn *c)
{
	c->prev = inflight.prev;
	c->next = &inflight;
	inflight.prev->next = c;
	inflight.prev = c;
}

static void close_conn(struct conn *c)
{
	if (c->fd >= 0) {
		close(c->fd);
		nconns_open--;
	}
	c->fd = -1;
	c->state = C_FREE;
}

static int open_conn(struct conn *c)
{
	int one = 1, fd;

	fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&addr, addrlen) < 0 && errno != EINPROGRESS) {
		int e = -errno;

		close(fd);
		return e;
	}
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
				  .data.ptr = c };
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	c->fd = fd;
	nconns_open++;
	if (nconns_open > max_open)
		max_open = nconns_open;
	return 0;
}

static int phase_of(uint64_t t)
{
	int i;

	if (t < t_meas)
		return -1;
	for (i = 0; i < nphases; i++)
		if (t < phases[i].t_end)
			return i;
	return nphases - 1;
}

static struct tl *tl_at(uint64_t t)
{
	uint64_t s = (t - t0) / 1000000000ull;

	if (s >= TL_MAX)
		s = TL_MAX - 1;
	if ((int)s >= tl_n)
		tl_n = (int)s + 1;
	return &tl[s];
}

/* Ends the request in flight on c: status > 0 an HTTP answer, 0 a connection
 * error, -1 a timeout, -2 unanswered at the end of the run. */
static void finish(struct conn *c, int status, uint64_t now)
{
	struct stats *s = c->phase >= 0 ? &pst[c->phase] : NULL;
	uint64_t lat = now - c->t_start;
	struct tl *t = tl_at(now);
	int ok = status >= 200 && status < 300 && !c->stream_err;
	int shed = status == 429 || status == 503;

	list_del(c);
	inflight_n--;
	if (ok) {
		t->ok++;
		if (lat > t->ok_max_ns)
			t->ok_max_ns = lat;
	} else if (shed) {
		t->shed++;
	} else if (status != -2) {
		t->err++;
	}
	t->tokens += c->sse ? c->ntok : c->usage_tokens;
	if (ok && now >= t_meas) {
		int p = phase_of(now);

		if (last_ok_ns && now - last_ok_ns > longest_stall_ns)
			longest_stall_ns = now - last_ok_ns;
		if (last_ok_ns && now - last_ok_ns > pst[p].stall_ns)
			pst[p].stall_ns = now - last_ok_ns;
		last_ok_ns = now;
	}
	if (!s)
		return;
	if (status > 0) {
		s->status[status < NSTATUS ? status : 0]++;
		if (ok) {
			tpo_hist_record(&s->e2e_ok, lat);
		} else if (shed) {
			tpo_hist_record(&s->e2e_shed, lat);
			if (opt.open)
				tpo_hist_record(&s->shed_handed, now - c->t_handed);
		} else {
			tpo_hist_record(&s->e2e_other, lat);
		}
		if (c->t_first_byte)
			tpo_hist_record(&s->ttfb, c->t_first_byte - c->t_start);
		if (c->sse && c->t_first_tok)
			tpo_hist_record(&s->ttft, c->t_first_tok - c->t_start);
		s->tokens += c->sse ? c->ntok : c->usage_tokens;
		s->stream_err += c->stream_err != 0;
	} else if (status == 0) {
		s->conn_err++;
	} else if (status == -1) {
		s->timeout++;
	} else {
		s->unanswered++;
	}
}

static void start_request(struct conn *c, uint64_t t_start, uint64_t now);

/* Ends the request in flight on c, closing it when asked or when the answer
 * did not leave it reusable, then gives the connection its next job. */
static void complete(struct conn *c, int status, uint64_t now, int reuse);

static void send_some(struct conn *c, uint64_t now)
{
	while (c->sent_off < reqlen) {
		ssize_t n = write(c->fd, req + c->sent_off, reqlen - c->sent_off);

		if (n < 0) {
			if (errno == EAGAIN)
				return;
			if (errno == EINTR)
				continue;
			complete(c, 0, now, 0);
			return;
		}
		c->sent_off += (uint32_t)n;
	}
	c->state = C_WAITING;
}

static void start_request(struct conn *c, uint64_t t_start, uint64_t now)
{
	int err;

	c->t_start = t_start;
	c->t_handed = now;
	c->phase = phase_of(t_start);
	c->t_first_byte = c->t_first_tok = c->t_last_tok = 0;
	c->ntok = 0;
	c->status = 0;
	c->keepalive = 1;
	c->sse = 0;
	c->pstate = P_HEAD;
	c->left = 0;
	c->plen = c->trailer_len = 0;
	c->stream_err = 0;
	c->usage_tokens = 0;
	c->sent_off = 0;
	if (c->phase >= 0) {
		pst[c->phase].sent++;
		if (opt.open)
			tpo_hist_record(&pst[c->phase].send_lag, now > t_start ? now - t_start : 0);
	}
	tl_at(now)->sent++;
	list_add_tail(c);
	inflight_n++;
	if (inflight_n > max_inflight)
		max_inflight = inflight_n;
	if (c->fd < 0) {
		err = open_conn(c);
		if (err < 0) {
			connect_fail++;
			complete(c, 0, now, 0);
			return;
		}
		c->state = C_CONNECTING;
		return;                      /* EPOLLOUT will come */
	}
	c->state = C_SENDING;
	send_some(c, now);
}

/* ---- answers ---- */

static int hdr_is(const char *line, size_t len, const char *name)
{
	size_t n = strlen(name);

	return len > n && strncasecmp(line, name, n) == 0 && line[n] == ':';
}

static const char *hdr_val(const char *line, size_t len, const char *name, size_t *vlen)
{
	const char *v = line + strlen(name) + 1, *e = line + len;

	while (v < e && (*v == ' ' || *v == '\t'))
		v++;
	*vlen = (size_t)(e - v);
	return v;
}

static int ci_contains(const char *s, size_t n, const char *needle)
{
	size_t m = strlen(needle), i;

	for (i = 0; i + m <= n; i++)
		if (strncasecmp(s + i, needle, m) == 0)
			return 1;
	return 0;
}

/* Parses the head in c->pbuf[0..len). Returns 0 or -1 if malformed. */
static int parse_head(struct conn *c, size_t len)
{
	const char *p = c->pbuf, *e = p + len, *nl;
	int have_cl = 0, chunked = 0;

	if (len < 12 || strncmp(p, "HTTP/1.", 7) != 0)
		return -1;
	if (p[7] == '0')
		c->keepalive = 0;
	c->status = atoi(p + 9);
	if (c->status < 100 || c->status > 999)
		return -1;
	nl = memchr(p, '\n', len);
	while (nl && nl + 1 < e) {
		const char *line = nl + 1, *le;
		size_t ll, vl;
		const char *v;

		nl = memchr(line, '\n', (size_t)(e - line));
		le = nl ? nl : e;
		ll = (size_t)(le - line);
		if (ll && line[ll - 1] == '\r')
			ll--;
		if (!ll)
			break;
		if (hdr_is(line, ll, "content-length")) {
			v = hdr_val(line, ll, "content-length", &vl);
			c->left = strtoll(v, NULL, 10);
			have_cl = 1;
		} else if (hdr_is(line, ll, "transfer-encoding")) {
			v = hdr_val(line, ll, "transfer-encoding", &vl);
			chunked = ci_contains(v, vl, "chunked");
		} else if (hdr_is(line, ll, "connection")) {
			v = hdr_val(line, ll, "connection", &vl);
			if (ci_contains(v, vl, "close"))
				c->keepalive = 0;
			else if (ci_contains(v, vl, "keep-alive"))
				c->keepalive = 1;
		} else if (hdr_is(line, ll, "content-type")) {
			v = hdr_val(line, ll, "content-type", &vl);
			c->sse = ci_contains(v, vl, "text/event-stream");
		}
	}
	c->plen = 0;
	if (c->status == 204 || c->status == 304 || (c->status >= 100 && c->status < 200))
		c->pstate = P_BODY_CL, c->left = 0;
	else if (chunked)
		c->pstate = P_CH_SIZE, c->left = 0;
	else if (have_cl)
		c->pstate = P_BODY_CL;
	else
		c->pstate = P_BODY_EOF, c->keepalive = 0;
	return 0;
}

/* The "content" (chat) or "text" (completions) key of an event's JSON with
 * a string value, or NULL. Neither can occur inside a JSON string, where
 * quotes are escaped, so any match is the key. One scan for both, backwards
 * from the end, where both APIs put the token: two memmem calls over the
 * whole line were the generator's largest user-space cost in a profile of a
 * streamed run (its CPU is mostly the kernel's, so the total barely moved). */
static const char *token_key(const char *l, size_t n)
{
	const char *q = l + n;

	while ((q = memrchr(l, '"', (size_t)(q - l))) != NULL) {
		size_t left = (size_t)(l + n - q);

		if (left >= 11 && memcmp(q, "\"content\":\"", 11) == 0)
			return q;
		if (left >= 8 && memcmp(q, "\"text\":\"", 8) == 0)
			return q;
	}
	return NULL;
}

static void sse_line(struct conn *c, const char *l, size_t n, uint64_t now)
{
	const char *k;

	if (n < 5 || memcmp(l, "data:", 5) != 0)
		return;
	l += 5;
	n -= 5;
	while (n && *l == ' ')
		l++, n--;
	if (n >= 6 && memcmp(l, "[DONE]", 6) == 0)
		return;
	k = token_key(l, n);
	if (k) {
		const char *q = memchr(k, ':', (size_t)(l + n - k)) + 2;

		if (q < l + n && *q != '"') {
			if (!c->ntok) {
				c->t_first_tok = now;
			} else if (c->phase >= 0) {
				tpo_hist_record(&pst[c->phase].itl, now - c->t_last_tok);
			}
			c->t_last_tok = now;
			c->ntok++;
		}
	} else if (memmem(l, n, "\"error\"", 7)) {
		c->stream_err = 1;
	}
}

static void body_bytes(struct conn *c, const char *p, size_t n, uint64_t now)
{
	if (!c->sse) {
		/* keep the tail: the usage object closes a non-streamed answer */
		if (n >= PBUF) {
			memcpy(c->pbuf, p + n - PBUF, PBUF);
			c->plen = PBUF;
		} else {
			if (c->plen + n > PBUF) {
				size_t drop = c->plen + n - PBUF;

				memmove(c->pbuf, c->pbuf + drop, c->plen - drop);
				c->plen -= (uint32_t)drop;
			}
			memcpy(c->pbuf + c->plen, p, n);
			c->plen += (uint32_t)n;
		}
		return;
	}
	while (n) {
		const char *nl = memchr(p, '\n', n);
		size_t take = nl ? (size_t)(nl - p) : n;

		if (c->plen == 0 && nl) {
			size_t ll = take;

			if (ll && p[ll - 1] == '\r')
				ll--;
			sse_line(c, p, ll, now);
		} else {
			size_t room = PBUF - c->plen, cp = take < room ? take : room;

			memcpy(c->pbuf + c->plen, p, cp);
			c->plen += (uint32_t)cp;
			if (nl) {
				size_t ll = c->plen;

				if (ll && c->pbuf[ll - 1] == '\r')
					ll--;
				sse_line(c, c->pbuf, ll, now);
				c->plen = 0;
			}
		}
		if (!nl)
			return;
		p += take + 1;
		n -= take + 1;
	}
}

static void body_end(struct conn *c)
{
	const char *k;

	if (c->sse || !c->plen)
		return;
	k = memmem(c->pbuf, c->plen, "\"completion_tokens\":", 20);
	if (k)
		c->usage_tokens = strtoull(k + 20, NULL, 10);
}

/* Feeds n received bytes. Returns 1 when the answer is complete, 0 if more
 * is needed, -1 if it is malformed. */
static int feed(struct conn *c, const char *p, size_t n, uint64_t now)
{
	if (!c->t_first_byte)
		c->t_first_byte = now;
	while (n) {
		switch (c->pstate) {
		case P_HEAD: {
			size_t old = c->plen, room = PBUF - old, cp = n < room ? n : room;
			size_t from = old > 3 ? old - 3 : 0;
			char *e;

			memcpy(c->pbuf + old, p, cp);
			c->plen += (uint32_t)cp;
			e = memmem(c->pbuf + from, c->plen - from, "\r\n\r\n", 4);
			if (!e) {
				if (c->plen == PBUF)
					return -1;
				return 0;
			}
			size_t used = (size_t)(e + 4 - c->pbuf) - old;

			if (parse_head(c, (size_t)(e + 2 - c->pbuf)) < 0)
				return -1;
			p += used;
			n -= used;
			if (c->pstate == P_BODY_CL && c->left == 0) {
				body_end(c);
				return 1;
			}
			break;
		}
		case P_BODY_CL: {
			size_t take = (size_t)c->left < n ? (size_t)c->left : n;

			body_bytes(c, p, take, now);
			c->left -= (int64_t)take;
			p += take;
			n -= take;
			if (!c->left) {
				body_end(c);
				return 1;
			}
			break;
		}
		case P_BODY_EOF:
			body_bytes(c, p, n, now);
			return 0;
		case P_CH_SIZE: {
			char ch = *p++;
			int d;

			n--;
			if (ch == '\r' || ch == ' ')
				break;
			if (ch == ';') {
				c->pstate = P_CH_EXT;
				break;
			}
			if (ch == '\n') {
				c->pstate = c->left ? P_CH_DATA : P_CH_TRAILER;
				c->trailer_len = 0;
				break;
			}
			d = isdigit((unsigned char)ch) ? ch - '0' :
			    (ch | 0x20) >= 'a' && (ch | 0x20) <= 'f' ? (ch | 0x20) - 'a' + 10 : -1;
			if (d < 0 || c->left > (INT64_MAX >> 4))
				return -1;
			c->left = c->left * 16 + d;
			break;
		}
		case P_CH_EXT:
			if (*p == '\n') {
				c->pstate = c->left ? P_CH_DATA : P_CH_TRAILER;
				c->trailer_len = 0;
			}
			p++, n--;
			break;
		case P_CH_DATA: {
			size_t take = (size_t)c->left < n ? (size_t)c->left : n;

			body_bytes(c, p, take, now);
			c->left -= (int64_t)take;
			p += take;
			n -= take;
			if (!c->left)
				c->pstate = P_CH_DATA_CRLF;
			break;
		}
		case P_CH_DATA_CRLF:
			if (*p == '\n')
				c->pstate = P_CH_SIZE, c->left = 0;
			p++, n--;
			break;
		case P_CH_TRAILER:
			if (*p == '\n') {
				if (c->trailer_len == 0) {
					body_end(c);
					return 1;
				}
				c->trailer_len = 0;
			} else if (*p != '\r') {
				c->trailer_len++;
			}
			p++, n--;
			break;
		}
	}
	return 0;
}

/* ---- scheduling ---- */

static int running;                  /* new requests may start */

static struct conn *take_conn(void)
{
	struct conn *c = free_list;

	if (c) {
		free_list = c->next;
		c->next = NULL;
		return c;
	}
	if (nspare) {
		c = &conns[spare[--nspare]];
		nconns_used++;
		return c;
	}
	return NULL;
}

static void put_conn(struct conn *c)
{
	if (c->fd < 0) {
		spare[nspare++] = c->idx;
		nconns_used--;
		return;
	}
	c->state = C_IDLE;
	c->next = free_list;
	free_list = c;
}

/* A request that waited in the backlog past its timeout is a timeout that
 * never leaves: its user has given up, and sending it would only cost the
 * server work and this loop a connection. */
static void dispatch_backlog(uint64_t now)
{
	uint64_t to = (uint64_t)opt.timeout_ms * 1000000ull;

	while (bl_head != bl_tail) {
		uint64_t due = backlog[bl_head % bl_cap];
		struct conn *c;

		if (due + to <= now) {
			int p = phase_of(due);

			if (p >= 0) {
				pst[p].sent++;
				pst[p].timeout++;
			}
			tl_at(now)->err++;
			bl_head++;
			continue;
		}
		c = take_conn();
		if (!c)
			return;
		start_request(c, due, now);
		bl_head++;
	}
}

/* closed loop: connections that failed wait 10 ms before their next request,
 * so a refused connect does not spin; FIFO because the delay is constant */
static struct conn **pauseq;
static uint64_t *pause_until;
static size_t pq_head, pq_tail;

static void complete(struct conn *c, int status, uint64_t now, int reuse)
{
	finish(c, status, now);
	if (!reuse || !c->keepalive)
		close_conn(c);
	if (opt.open) {
		put_conn(c);
		dispatch_backlog(now);
		return;
	}
	if (!running) {
		close_conn(c);
		return;
	}
	if (status <= 0 && c->fd < 0) {
		c->state = C_PAUSED;
		pauseq[pq_tail % (size_t)opt.concurrency] = c;
		pause_until[pq_tail % (size_t)opt.concurrency] = now + 10000000ull;
		pq_tail++;
		paused_n++;
		return;
	}
	start_request(c, now, now);
}

static void on_event(struct conn *c, uint32_t ev)
{
	uint64_t now = now_ns();

	if (c->state == C_CONNECTING && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
		int soerr = 0;
		socklen_t sl = sizeof(soerr);

		getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
		if (soerr) {
			connect_fail++;
			complete(c, 0, now, 0);
			return;
		}
		c->state = C_SENDING;
	}
	if (c->state == C_SENDING && (ev & EPOLLOUT))
		send_some(c, now);
	if (c->state == C_FREE || c->state == C_PAUSED)
		return;
	if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
		/* A short read took all the socket held; under EPOLLET anything
		 * arriving later raises a new event, so the read that would only
		 * say EAGAIN is skipped, unless the peer has already closed (its
		 * FIN came with this event and raises no other). */
		int drain = !!(ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR));

		for (;;) {
			ssize_t n = read(c->fd, rbuf, sizeof(rbuf));

			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && errno == EAGAIN)
				return;
			if (n <= 0) {
				if (c->state == C_IDLE) {
					/* the server closed an idle keep-alive connection */
					if (free_list == c) {
						free_list = c->next;
					} else {
						struct conn *q = free_list;

						while (q && q->next != c)
							q = q->next;
						if (q)
							q->next = c->next;
					}
					close_conn(c);
					put_conn(c);
					return;
				}
				if (c->state == C_WAITING && c->pstate == P_BODY_EOF && n == 0) {
					complete(c, c->status, now, 0);
					return;
				}
				complete(c, 0, now, 0);
				return;
			}
			if (c->state != C_WAITING && c->state != C_SENDING) {
				extra_responses++;
				continue;
			}
			now = now_ns();
			int r = feed(c, rbuf, (size_t)n, now);

			if (r < 0) {
				complete(c, 0, now, 0);
				return;
			}
			if (r > 0) {
				complete(c, c->status, now, 1);
				/* a new connection in the slot has nothing to read yet */
				if (c->fd < 0 || c->state == C_CONNECTING)
					return;
			}
			if ((size_t)n < sizeof(rbuf) && !drain)
				return;
		}
	}
}

/* ---- output ---- */

static void qs(const struct tpo_hist *h, uint64_t out[5])
{
	static const double q[] = { 0.5, 0.9, 0.99, 0.999 };

	tpo_hist_quantiles(h, q, out, 4);
	out[4] = tpo_hist_max(h);
}

static void json_hist(FILE *f, const char *name, const struct tpo_hist *h, int comma)
{
	uint64_t v[5], n = tpo_hist_count(h);

	qs(h, v);
	fprintf(f, "\"%s\":{\"n\":%llu,\"mean\":%.1f,\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,"
		"\"p999\":%.1f,\"max\":%.1f}%s", name, (unsigned long long)n,
		n ? (double)tpo_hist_sum(h) / (double)n / 1e3 : 0.0, v[0] / 1e3, v[1] / 1e3,
		v[2] / 1e3, v[3] / 1e3, v[4] / 1e3, comma ? "," : "");
}

static uint64_t ok_count(const struct stats *s)
{
	uint64_t n = 0;
	int i;

	for (i = 200; i < 300; i++)
		n += s->status[i];
	return n - s->stream_err;
}

static uint64_t answers(const struct stats *s)
{
	uint64_t n = 0;
	int i;

	for (i = 0; i < NSTATUS; i++)
		n += s->status[i];
	return n;
}

static void json_stats(FILE *f, const struct stats *s, double rate, double dur)
{
	int i, first = 1;
	uint64_t ok = ok_count(s), shed = s->status[429] + s->status[503];

	fprintf(f, "{\"offered_rate\":%.1f,\"duration_s\":%.3f,\"sent\":%llu,\"answers\":{",
		rate, dur, (unsigned long long)s->sent);
	for (i = 0; i < NSTATUS; i++) {
		if (!s->status[i])
			continue;
		fprintf(f, "%s\"%d\":%llu", first ? "" : ",", i, (unsigned long long)s->status[i]);
		first = 0;
	}
	fprintf(f, "},\"ok\":%llu,\"shed\":%llu,\"conn_errors\":%llu,\"timeouts\":%llu,"
		"\"unanswered\":%llu,\"stream_errors\":%llu,\"lost\":%lld,\"longest_stall_ms\":%.3f,"
		"\"req_per_s\":%.1f,\"ok_per_s\":%.1f,\"tokens\":%llu,\"tokens_per_s\":%.1f,"
		"\"latency_us\":{",
		(unsigned long long)ok, (unsigned long long)shed, (unsigned long long)s->conn_err,
		(unsigned long long)s->timeout, (unsigned long long)s->unanswered,
		(unsigned long long)s->stream_err,
		(long long)s->sent - (long long)(answers(s) + s->conn_err + s->timeout + s->unanswered),
		s->stall_ns / 1e6,
		dur > 0 ? (double)answers(s) / dur : 0.0, dur > 0 ? (double)ok / dur : 0.0,
		(unsigned long long)s->tokens, dur > 0 ? (double)s->tokens / dur : 0.0);
	json_hist(f, "e2e_ok", &s->e2e_ok, 1);
	json_hist(f, "e2e_shed", &s->e2e_shed, 1);
	json_hist(f, "e2e_other", &s->e2e_other, 1);
	json_hist(f, "ttfb", &s->ttfb, 1);
	json_hist(f, "ttft", &s->ttft, 1);
	json_hist(f, "itl", &s->itl, 1);
	json_hist(f, "send_lag", &s->send_lag, 1);
	json_hist(f, "shed_from_handoff", &s->shed_handed, 0);
	fprintf(f, "}}");
}

static void merge(struct stats *dst, const struct stats *src)
{
	int i;

	tpo_hist_merge(&dst->e2e_ok, &src->e2e_ok);
	tpo_hist_merge(&dst->e2e_shed, &src->e2e_shed);
	tpo_hist_merge(&dst->e2e_other, &src->e2e_other);
	tpo_hist_merge(&dst->ttfb, &src->ttfb);
	tpo_hist_merge(&dst->ttft, &src->ttft);
	tpo_hist_merge(&dst->itl, &src->itl);
	tpo_hist_merge(&dst->send_lag, &src->send_lag);
	tpo_hist_merge(&dst->shed_handed, &src->shed_handed);
	for (i = 0; i < NSTATUS; i++)
		dst->status[i] += src->status[i];
	dst->sent += src->sent;
	dst->conn_err += src->conn_err;
	dst->timeout += src->timeout;
	dst->unanswered += src->unanswered;
	dst->tokens += src->tokens;
	dst->stream_err += src->stream_err;
	if (src->stall_ns > dst->stall_ns)
		dst->stall_ns = src->stall_ns;
}

static void print_hist(const char *name, const struct tpo_hist *h)
{
	uint64_t v[5];

	if (!tpo_hist_count(h))
		return;
	qs(h, v);
	printf("  %-10s n=%-8llu p50 %9.1f  p90 %9.1f  p99 %9.1f  p99.9 %9.1f  max %9.1f us\n",
	       name, (unsigned long long)tpo_hist_count(h), v[0] / 1e3, v[1] / 1e3, v[2] / 1e3,
	       v[3] / 1e3, v[4] / 1e3);
}

static void print_stats(const char *title, const struct stats *s, double dur)
{
	int i;

	printf("%s: sent %llu in %.2f s, ok %llu (%.1f/s), tokens %llu (%.1f/s)\n", title,
	       (unsigned long long)s->sent, dur, (unsigned long long)ok_count(s),
	       (double)ok_count(s) / dur, (unsigned long long)s->tokens, (double)s->tokens / dur);
	printf("  answers:");
	for (i = 0; i < NSTATUS; i++)
		if (s->status[i])
			printf(" %d=%llu", i, (unsigned long long)s->status[i]);
	printf("  conn_errors=%llu timeouts=%llu unanswered=%llu stream_errors=%llu\n",
	       (unsigned long long)s->conn_err, (unsigned long long)s->timeout,
	       (unsigned long long)s->unanswered, (unsigned long long)s->stream_err);
	print_hist("e2e ok", &s->e2e_ok);
	print_hist("e2e shed", &s->e2e_shed);
	print_hist("e2e other", &s->e2e_other);
	print_hist("ttfb", &s->ttfb);
	print_hist("ttft", &s->ttft);
	print_hist("itl", &s->itl);
	if (opt.open) {
		print_hist("send lag", &s->send_lag);
		print_hist("shed from hand-off", &s->shed_handed);
	}
}

static void report(double wall, double cpu)
{
	struct stats *tot = calloc(1, sizeof(*tot));
	double meas = 0;
	int i;

	if (!tot)
		return;
	for (i = 0; i < nphases; i++) {
		merge(tot, &pst[i]);
		meas += phases[i].dur;
	}
	if (!opt.quiet) {
		printf("tpo-bench %s %s%s, %s\n", opt.url, opt.open ? "open loop" : "closed loop",
		       opt.stream ? ", streaming" : "", opt.label ? opt.label : "");
		for (i = 0; nphases > 1 && i < nphases; i++) {
			char t[64];

			snprintf(t, sizeof(t), "phase %d (%.0f req/s)", i, phases[i].rate);
			print_stats(t, &pst[i], phases[i].dur);
		}
		print_stats("total", tot, meas);
		printf("  longest stall %.1f ms, max in flight %llu, max conns %d, client cpu %.2f s of %.2f s"
		       ", extra responses %llu, backlog overflow %llu\n",
		       longest_stall_ns / 1e6, (unsigned long long)max_inflight, max_open, cpu, wall,
		       (unsigned long long)extra_responses, (unsigned long long)bl_overflow);
	}
	if (opt.json) {
		FILE *f = fopen(opt.json, "w");

		if (!f) {
			fprintf(stderr, "tpo-bench: %s: %s\n", opt.json, strerror(errno));
		} else {
			fprintf(f, "{\"tool\":\"tpo-bench\",\"label\":\"%s\",\"url\":\"%s\",\"mode\":\"%s\","
				"\"stream\":%s,\"concurrency\":%d,\"max_tokens\":%d,\"warmup_s\":%.3f,"
				"\"wall_s\":%.3f,\"client_cpu_s\":%.3f,\"max_inflight\":%llu,"
				"\"max_conns\":%d,\"extra_responses\":%llu,\"backlog_overflow\":%llu,"
				"\"connect_failures\":%llu,\"longest_stall_ms\":%.3f,\"total\":",
				opt.label ? opt.label : "", opt.url, opt.open ? "open" : "closed",
				opt.stream ? "true" : "false", opt.concurrency, opt.max_tokens,
				opt.warmup, wall, cpu, (unsigned long long)max_inflight, max_open,
				(unsigned long long)extra_responses, (unsigned long long)bl_overflow,
				(unsigned long long)connect_fail, longest_stall_ns / 1e6);
			json_stats(f, tot, nphases == 1 ? phases[0].rate : 0, meas);
			fprintf(f, ",\"phases\":[");
			for (i = 0; i < nphases; i++) {
				json_stats(f, &pst[i], opt.open ? phases[i].rate : 0, phases[i].dur);
				fprintf(f, "%s", i + 1 < nphases ? "," : "");
			}
			fprintf(f, "],\"timeline\":[");
			for (i = 0; i < tl_n; i++)
				fprintf(f, "%s{\"t\":%d,\"sent\":%u,\"ok\":%u,\"shed\":%u,\"err\":%u,"
					"\"ok_max_us\":%.1f,\"tokens\":%llu}", i ? "," : "", i, tl[i].sent,
					tl[i].ok, tl[i].shed, tl[i].err, tl[i].ok_max_ns / 1e3,
					(unsigned long long)tl[i].tokens);
			fprintf(f, "]}\n");
			fclose(f);
		}
	}
	free(tot);
}


/* ---- --serve: the tpo-less baseline ----
 *
 * A minimal OpenAI-compatible responder on one epoll loop: it reads a
 * request (Content-Length bodies only), and answers at once with max_tokens
 * tokens (" tok"), as a chat.completion or, for "stream":true, as chunked
 * SSE shaped like tpo's. It does no work a model server could skip, so
 * "tpo minus --serve" is what tpo's five stages add to one HTTP hop.
 */

struct sconn {
	int fd;
	size_t in_len, out_len, out_off;
	char in[8192];
	char *out;
	size_t out_cap;
};

static int sc_reserve(struct sconn *c, size_t more)
{
	if (c->out_len + more <= c->out_cap)
		return 0;
	size_t cap = c->out_cap ? c->out_cap : 16384;
	char *p;

	while (cap < c->out_len + more)
		cap *= 2;
	p = realloc(c->out, cap);
	if (!p)
		return -ENOMEM;
	c->out = p;
	c->out_cap = cap;
	return 0;
}

static void sc_chunk(struct sconn *c, const char *data, size_t n)
{
	c->out_len += (size_t)sprintf(c->out + c->out_len, "%zx\r\n", n);
	memcpy(c->out + c->out_len, data, n);
	c->out_len += n;
	memcpy(c->out + c->out_len, "\r\n", 2);
	c->out_len += 2;
}

static int sc_answer(struct sconn *c, const char *body, size_t blen, uint64_t id)
{
	const char *k = memmem(body, blen, "\"max_tokens\":", 13);
	long ntok = k ? strtol(k + 13, NULL, 10) : 64;
	int stream = memmem(body, blen, "\"stream\":true", 13) != NULL;
	char ev[512];
	long i;

	if (ntok < 1 || ntok > 100000)
		ntok = 64;
	if (sc_reserve(c, (size_t)ntok * 256 + 1024) < 0)
		return -ENOMEM;
	if (!stream) {
		char head[256];
		size_t start = c->out_len, bl;
		int hl;

		c->out_len += 200;           /* room for the head, moved below */
		size_t b0 = c->out_len;

		c->out_len += (size_t)sprintf(c->out + c->out_len,
			"{\"id\":\"chatcmpl-%016llx\",\"object\":\"chat.completion\",\"created\":0,"
			"\"model\":\"tpo-mock\",\"choices\":[{\"index\":0,\"message\":{\"role\":"
			"\"assistant\",\"content\":\"", (unsigned long long)id);
		for (i = 0; i < ntok; i++) {
			memcpy(c->out + c->out_len, " tok", 4);
			c->out_len += 4;
		}
		c->out_len += (size_t)sprintf(c->out + c->out_len,
			"\"},\"logprobs\":null,\"finish_reason\":\"length\"}],\"usage\":{"
			"\"prompt_tokens\":3,\"completion_tokens\":%ld,\"total_tokens\":%ld}}",
			ntok, ntok + 3);
		bl = c->out_len - b0;
		hl = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
			      "Content-Length: %zu\r\nX-Request-Id: %016llx\r\n\r\n", bl,
			      (unsigned long long)id);
		memmove(c->out + start + (size_t)hl, c->out + b0, bl);
		memcpy(c->out + start, head, (size_t)hl);
		c->out_len = start + (size_t)hl + bl;
		return 0;
	}
	c->out_len += (size_t)sprintf(c->out + c->out_len, "HTTP/1.1 200 OK\r\nContent-Type: "
		"text/event-stream\r\nTransfer-Encoding: chunked\r\nX-Request-Id: %016llx\r\n"
		"Cache-Control: no-cache\r\n\r\n", (unsigned long long)id);
	for (i = 0; i < ntok; i++) {
		int n = snprintf(ev, sizeof(ev), "data: {\"id\":\"chatcmpl-%016llx\",\"object\":"
			"\"chat.completion.chunk\",\"created\":0,\"model\":\"tpo-mock\",\"choices\":"
			"[{\"index\":0,\"delta\":{%s\"content\":\" tok\"},\"finish_reason\":null}]}\n\n",
			(unsigned long long)id, i ? "" : "\"role\":\"assistant\",");

		sc_chunk(c, ev, (size_t)n);
	}
	i = snprintf(ev, sizeof(ev), "data: {\"id\":\"chatcmpl-%016llx\",\"object\":"
		     "\"chat.completion.chunk\",\"created\":0,\"model\":\"tpo-mock\",\"choices\":"
		     "[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
		     (unsigned long long)id);
	sc_chunk(c, ev, (size_t)i);
	sc_chunk(c, "data: [DONE]\n\n", 14);
	memcpy(c->out + c->out_len, "0\r\n\r\n", 5);
	c->out_len += 5;
	return 0;
}

static void sc_close(int ep, struct sconn *c)
{
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c->out);
	free(c);
}

/* Reads, answers every complete request, writes. Returns -1 once c is gone.
 * Stops after a short read once the answers are out (see on_event), unless
 * ev says the peer has closed. */
static int sc_io(int ep, struct sconn *c, uint32_t ev, uint64_t *ids)
{
	int drained = 0, drain = !!(ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR));

	for (;;) {
		ssize_t n;

		if (c->out_off < c->out_len) {
			n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
			if (n < 0 && errno == EAGAIN)
				return 0;
			if (n < 0) {
				sc_close(ep, c);
				return -1;
			}
			c->out_off += (size_t)n;
			if (c->out_off < c->out_len)
				continue;
			c->out_off = c->out_len = 0;
		}
		if (drained && !drain)
			return 0;
		n = read(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len);
		if (n < 0 && errno == EAGAIN)
			return 0;
		if (n <= 0) {
			sc_close(ep, c);
			return -1;
		}
		drained = (size_t)n < sizeof(c->in) - c->in_len;
		c->in_len += (size_t)n;
		for (;;) {
			char *e = memmem(c->in, c->in_len, "\r\n\r\n", 4), *cl;
			size_t hl, bl = 0, tot;

			if (!e) {
				if (c->in_len == sizeof(c->in)) {
					sc_close(ep, c);
					return -1;
				}
				break;
			}
			hl = (size_t)(e + 4 - c->in);
			for (cl = c->in; cl < e; cl++)
				if ((*cl == 'C' || *cl == 'c') && !strncasecmp(cl, "content-length:", 15)) {
					bl = strtoul(cl + 15, NULL, 10);
					break;
				}
			tot = hl + bl;
			if (tot > sizeof(c->in)) {
				sc_close(ep, c);
				return -1;
			}
			if (c->in_len < tot)
				break;
			if (sc_answer(c, c->in + hl, bl, ++*ids) < 0) {
				sc_close(ep, c);
				return -1;
			}
			memmove(c->in, c->in + tot, c->in_len - tot);
			c->in_len -= tot;
		}
	}
}

static int serve(const char *hp)
{
	char h[256], *colon;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	int lfd, ep, one = 1;
	uint64_t ids = 0;
	struct epoll_event evs[256], lev = { .events = EPOLLIN };

	snprintf(h, sizeof(h), "%s", hp);
	colon = strrchr(h, ':');
	if (!colon)
		return 64;
	*colon = 0;
	sa.sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, h, &sa.sin_addr) != 1)
		return 64;
	signal(SIGPIPE, SIG_IGN);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (lfd < 0 || ep < 0)
		return 111;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 4096) < 0) {
		fprintf(stderr, "tpo-bench: --serve %s: %s\n", hp, strerror(errno));
		return 111;
	}
	lev.data.ptr = NULL;
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
	fprintf(stderr, "tpo-bench: serving on %s\n", hp);
	while (!interrupted) {
		int n = epoll_wait(ep, evs, 256, 200), i;

		for (i = 0; i < n; i++) {
			struct sconn *c = evs[i].data.ptr;

			if (!c) {
				int fd;

				while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
					struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET };

					c = calloc(1, sizeof(*c));
					if (!c) {
						close(fd);
						continue;
					}
					c->fd = fd;
					setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					ev.data.ptr = c;
					epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
				}
				continue;
			}
			sc_io(ep, c, evs[i].events, &ids);
		}
	}
	return 0;
}

/* ---- main ---- */

static int parse_args(int argc, char **argv)
{
	int i;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		int takes = 1;

		if (!strcmp(a, "--stream")) {
			opt.stream = 1;
			takes = 0;
		} else if (!strcmp(a, "--quiet")) {
			opt.quiet = 1;
			takes = 0;
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			exit(0);
		} else if (!v) {
			fprintf(stderr, "tpo-bench: %s: missing value or unknown option\n", a);
			return -EINVAL;
		} else if (!strcmp(a, "--url")) {
			opt.url = v;
		} else if (!strcmp(a, "--mode")) {
			if (strcmp(v, "open") && strcmp(v, "closed"))
				return -EINVAL;
			opt.open = !strcmp(v, "open");
		} else if (!strcmp(a, "--rate")) {
			opt.rate = atof(v);
		} else if (!strcmp(a, "--profile")) {
			opt.profile = v;
		} else if (!strcmp(a, "--concurrency")) {
			opt.concurrency = atoi(v);
		} else if (!strcmp(a, "--max-conns")) {
			opt.max_conns = atoi(v);
		} else if (!strcmp(a, "--duration")) {
			opt.duration = atof(v);
		} else if (!strcmp(a, "--warmup")) {
			opt.warmup = atof(v);
		} else if (!strcmp(a, "--ramp")) {
			opt.ramp = atof(v);
		} else if (!strcmp(a, "--max-tokens")) {
			opt.max_tokens = atoi(v);
		} else if (!strcmp(a, "--prompt")) {
			opt.prompt = v;
		} else if (!strcmp(a, "--model")) {
			opt.model = v;
		} else if (!strcmp(a, "--header")) {
			if (opt.nhdr == MAX_HDRS)
				return -EINVAL;
			opt.hdr[opt.nhdr++] = v;
		} else if (!strcmp(a, "--timeout-ms")) {
			opt.timeout_ms = atoi(v);
		} else if (!strcmp(a, "--drain-ms")) {
			opt.drain_ms = atoi(v);
		} else if (!strcmp(a, "--json")) {
			opt.json = v;
		} else if (!strcmp(a, "--label")) {
			opt.label = v;
		} else {
			fprintf(stderr, "tpo-bench: unknown option %s\n", a);
			return -EINVAL;
		}
		i += takes;
	}
	if (!opt.url || opt.concurrency < 1 || opt.max_conns < 1 || opt.duration <= 0 ||
	    opt.rate < 0 || opt.max_tokens < 1 || opt.timeout_ms < 1 || opt.warmup < 0)
		return -EINVAL;
	if (opt.drain_ms < 0)
		opt.drain_ms = opt.timeout_ms;
	return 0;
}

int main(int argc, char **argv)
{
	struct rlimit rl;
	struct rusage ru;
	struct epoll_event evs[512];
	uint64_t next_due = 0, i_due = 0, t_end, t_drain, ramp_ns = 0;
	int nslots, i, ph = 0, started = 0;
	double wall;

	if (argc == 3 && !strcmp(argv[1], "--serve")) {
		signal(SIGINT, on_sigint);
		signal(SIGTERM, on_sigint);
		return serve(argv[2]);
	}
	if (parse_args(argc, argv) < 0 || parse_profile() < 0) {
		usage(stderr);
		return 64;
	}
	if (parse_url() < 0 || build_request() < 0)
		return 64;
	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, on_sigint);
	signal(SIGTERM, on_sigint);
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	nslots = opt.open ? opt.max_conns : opt.concurrency;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    (rlim_t)nslots + 16 > rl.rlim_cur) {
		fprintf(stderr, "tpo-bench: only %llu file descriptors: %d connections capped to %llu\n",
			(unsigned long long)rl.rlim_cur, nslots,
			(unsigned long long)rl.rlim_cur - 16);
		nslots = (int)rl.rlim_cur - 16;
		if (!opt.open)
			opt.concurrency = nslots;
	}
	conns = calloc((size_t)nslots, sizeof(*conns));
	spare = calloc((size_t)nslots, sizeof(*spare));
	pst = calloc(MAX_PHASES, sizeof(*pst));
	tl = calloc(TL_MAX, sizeof(*tl));
	bl_cap = 1u << 22;
	backlog = opt.open ? malloc(bl_cap * sizeof(*backlog)) : NULL;
	pauseq = calloc((size_t)nslots, sizeof(*pauseq));
	pause_until = calloc((size_t)nslots, sizeof(*pause_until));
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (!conns || !spare || !pst || !tl || (opt.open && !backlog) || !pauseq ||
	    !pause_until || epfd < 0) {
		fprintf(stderr, "tpo-bench: fatal: out of memory or epoll: %s\n", strerror(errno));
		return 111;
	}
	for (i = 0; i < nslots; i++) {
		conns[i].fd = -1;
		conns[i].idx = i;
		spare[nslots - 1 - i] = i;
	}
	nspare = nslots;
	inflight.prev = inflight.next = &inflight;

	t0 = now_ns();
	t_meas = t0 + (uint64_t)(opt.warmup * 1e9);
	{
		uint64_t t = t_meas;

		for (i = 0; i < nphases; i++) {
			phases[i].t_begin = t;
			t += (uint64_t)(phases[i].dur * 1e9);
			phases[i].t_end = t;
		}
		t_end = t;
	}
	t_drain = t_end + (uint64_t)opt.drain_ms * 1000000ull;
	running = 1;
	if (!opt.open)
		ramp_ns = (uint64_t)(opt.ramp * 1e9);
	next_due = t0;

	for (;;) {
		uint64_t now = now_ns(), wake;
		struct timespec to;
		int n;

		if (interrupted && running) {
			running = 0;
			t_drain = now + 1000000000ull;
		}
		if (running && opt.open) {
			/* every request due by now leaves now, oldest first */
			while (next_due <= now && next_due < t_end) {
				double r;

				while (ph < nphases - 1 && next_due >= phases[ph].t_end)
					ph++;
				r = next_due < t_meas ? phases[0].rate : phases[ph].rate;
				if (bl_tail - bl_head < bl_cap)
					backlog[bl_tail++ % bl_cap] = next_due;
				else
					bl_overflow++;
				i_due++;
				if (r <= 0) {
					next_due = next_due < t_meas ? t_meas : phases[ph].t_end;
					continue;
				}
				next_due += (uint64_t)(1e9 / r);
			}
			dispatch_backlog(now);
		} else if (running && started < opt.concurrency && now < t_end) {
			uint64_t due = ramp_ns ? ramp_ns * (uint64_t)started / (uint64_t)opt.concurrency : 0;

			while (started < opt.concurrency && t0 + due <= now) {
				struct conn *c = take_conn();

				if (!c)
					break;
				start_request(c, now, now);
				started++;
				due = ramp_ns * (uint64_t)started / (uint64_t)opt.concurrency;
			}
		}
		/* After the requests due before the end have been queued above:
		 * a loop that wakes late (a loaded machine) still sends every
		 * request due in the run, late, instead of dropping the last. */
		if (running && now >= t_end) {
			running = 0;
			if (!opt.open) {
				/* idle connections have nothing left to do */
				struct conn *c;

				while ((c = free_list)) {
					free_list = c->next;
					close_conn(c);
				}
			}
		}
		while (pq_head != pq_tail && pause_until[pq_head % (size_t)opt.concurrency] <= now) {
			struct conn *c = pauseq[pq_head % (size_t)opt.concurrency];

			pq_head++;
			paused_n--;
			if (running)
				start_request(c, now, now);
			else
				c->state = C_FREE;
		}
		if (opt.open)
			dispatch_backlog(now);
		/* timeouts: the in-flight list is ordered by start */
		while (inflight.next != &inflight &&
		       inflight.next->t_start + (uint64_t)opt.timeout_ms * 1000000ull <= now) {
			struct conn *c = inflight.next;

			complete(c, -1, now, 0);
		}
		if (!running) {
			if (inflight_n == 0 && bl_head == bl_tail && paused_n == 0)
				break;
			if (now >= t_drain) {
				while (inflight.next != &inflight) {
					struct conn *c = inflight.next;

					finish(c, -2, now);
					close_conn(c);
				}
				for (; bl_head != bl_tail; bl_head++) {
					int p = phase_of(backlog[bl_head % bl_cap]);

					if (p >= 0) {
						pst[p].sent++;
						pst[p].unanswered++;
					}
				}
				break;
			}
		}
		wake = now + 10000000ull;
		if (running && opt.open && next_due < wake)
			wake = next_due;
		if (running && !opt.open && started < opt.concurrency)
			wake = now + 200000ull;
		if (pq_head != pq_tail && pause_until[pq_head % (size_t)opt.concurrency] < wake)
			wake = pause_until[pq_head % (size_t)opt.concurrency];
		if (wake < now)
			wake = now;
		to.tv_sec = (time_t)((wake - now) / 1000000000ull);
		to.tv_nsec = (long)((wake - now) % 1000000000ull);
		n = epoll_pwait2(epfd, evs, 512, &to, NULL);
		if (n < 0 && errno != EINTR) {
			fprintf(stderr, "tpo-bench: fatal: epoll_pwait2: %s\n", strerror(errno));
			return 111;
		}
		for (i = 0; i < n; i++)
			on_event(evs[i].data.ptr, evs[i].events);
	}
	/* backlog entries counted as sent only when dispatched; requests still in
	 * the backlog when the run ends were counted above */
	wall = (now_ns() - t0) / 1e9;
	getrusage(RUSAGE_SELF, &ru);
	report(wall, ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
	       (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
	return 0;
}
