/*
 * sse.c — incremental Server-Sent Events parser (see sse.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "workers/sse.h"

void tpo_sse_init(struct tpo_sse *p, tpo_sse_event_fn *fn, void *arg)
{
	memset(p, 0, sizeof(*p));
	p->fn = fn;
	p->arg = arg;
	p->max = TPO_SSE_LINE_MAX;
}

void tpo_sse_rearm(struct tpo_sse *p, tpo_sse_event_fn *fn, void *arg)
{
	char *line = p->line, *data = p->data;
	size_t line_cap = p->line_cap, data_cap = p->data_cap;

	tpo_sse_init(p, fn, arg);
	p->line = line, p->line_cap = line_cap;
	p->data = data, p->data_cap = data_cap;
}

void tpo_sse_reset(struct tpo_sse *p)
{
	p->line_len = 0;
	p->data_len = 0;
	p->has_data = 0;
	p->event[0] = 0;
	p->cr = 0;
}

void tpo_sse_fini(struct tpo_sse *p)
{
	free(p->line);
	free(p->data);
	p->line = p->data = NULL;
	p->line_cap = p->data_cap = 0;
}

static int grow(char **buf, size_t *cap, size_t need, size_t max)
{
	size_t n;
	char *b;

	if (need <= *cap)
		return 0;
	if (need > max + 1)
		return -E2BIG;
	n = *cap ? *cap : 256;
	while (n < need)
		n *= 2;
	b = realloc(*buf, n);
	if (!b)
		return -ENOMEM;
	*buf = b;
	*cap = n;
	return 0;
}

static int dispatch(struct tpo_sse *p)
{
	int rc = 0;

	if (p->has_data) {
		int err = grow(&p->data, &p->data_cap, p->data_len + 1, p->max);
		if (err < 0)
			return err;
		p->data[p->data_len] = 0;
		rc = p->fn(p->arg, p->event[0] ? p->event : "message", p->data, p->data_len);
	}
	p->data_len = 0;
	p->has_data = 0;
	p->event[0] = 0;
	return rc;
}

/* One complete line (without its terminator). */
static int line(struct tpo_sse *p, const char *s, size_t n)
{
	const char *colon, *v;
	size_t flen, vlen;
	int err;

	if (n == 0)
		return dispatch(p);
	if (s[0] == ':')
		return 0;                       /* comment */
	colon = memchr(s, ':', n);
	flen = colon ? (size_t)(colon - s) : n;
	v = colon ? colon + 1 : s + n;
	vlen = colon ? n - flen - 1 : 0;
	if (vlen && *v == ' ') {
		v++;
		vlen--;
	}
	if (flen == 4 && !memcmp(s, "data", 4)) {
		size_t need = p->data_len + (p->has_data ? 1 : 0) + vlen + 1;
		err = grow(&p->data, &p->data_cap, need, p->max);
		if (err < 0)
			return err;
		if (p->has_data)
			p->data[p->data_len++] = '\n';
		memcpy(p->data + p->data_len, v, vlen);
		p->data_len += vlen;
		p->has_data = 1;
	} else if (flen == 5 && !memcmp(s, "event", 5)) {
		if (vlen >= sizeof(p->event))
			vlen = sizeof(p->event) - 1;
		memcpy(p->event, v, vlen);
		p->event[vlen] = 0;
	}
	return 0;
}

int tpo_sse_feed(struct tpo_sse *p, const char *buf, size_t len)
{
	size_t i = 0;
	int err;

	if (p->cr && len && buf[0] == '\n')
		i = 1;                          /* the LF of a CRLF split across feeds */
	p->cr = 0;
	while (i < len) {
		const char *s = buf + i, *lf, *cr;
		size_t rest = len - i, n;

		/* The first LF or CR: memchr is vectorised, a byte loop is not. */
		lf = memchr(s, '\n', rest);
		n = lf ? (size_t)(lf - s) : rest;
		cr = memchr(s, '\r', n);
		if (cr)
			n = (size_t)(cr - s);
		if (n == rest) {                /* no terminator: keep the piece */
			err = grow(&p->line, &p->line_cap, p->line_len + n, p->max);
			if (err < 0)
				return err;
			memcpy(p->line + p->line_len, s, n);
			p->line_len += n;
			return 0;
		}
		if (p->line_len) {
			err = grow(&p->line, &p->line_cap, p->line_len + n, p->max);
			if (err < 0)
				return err;
			memcpy(p->line + p->line_len, s, n);
			p->line_len += n;
			err = line(p, p->line, p->line_len);
			p->line_len = 0;
		} else {
			if (n > p->max)
				return -E2BIG;
			err = line(p, s, n);
		}
		if (err < 0)
			return err;
		i += n + 1;
		if (s[n] == '\r') {
			if (i < len && buf[i] == '\n')
				i++;
			else if (i == len)
				p->cr = 1;
		}
	}
	return 0;
}
