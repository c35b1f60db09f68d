/*
 * config.c — the pipeline configuration: JSON -> struct tpo_config, and back.
 *
 * The schema is a set of field tables, one per JSON object, each entry naming
 * a key, how its value is checked and where it lands in the struct (an offset
 * into the struct that holds the object). The same tables drive parsing and
 * tpo_config_dump(), so what is dumped always parses back to the same struct.
 * Checks that span several keys run after the walk, on the keys' recorded
 * positions.
 */
#include "supervisor/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "shm/ringset.h"
#include "workers/json.h"

#define RING_CAP_MIN   131072ull
#define RING_CAP_MAX   1073741824ull
#define REC_OVERHEAD   64u            /* record header + padding, per the ring docs */
#define PATH_LEN       200
#define SEEN_MAX       384
#define KEY_LEN        64

enum kind {
	K_U32,      /* uint32_t in min..max */
	K_U64,      /* uint64_t in min..max */
	K_I64,      /* int64_t in min..max */
	K_POW2,     /* uint64_t, a power of two in min..max */
	K_RINGCAP,  /* uint64_t, 0 or a power of two in min..max */
	K_ENUM,     /* int: names[i] stored as values[i] (or i) */
	K_STR,      /* char[cap], min..max bytes */
	K_STRNULL,  /* char[cap], null ("") or min..max bytes */
	K_ENVNULL,  /* char[cap], null ("") or an environment variable name */
	K_STRARR,   /* char[nmax][cap] + int count at off_n; items min..max bytes */
	K_OBJ,      /* nested object, table sub, at off */
	K_OBJARR,   /* array of objects: elements of size cap at off, count at off_n */
	K_CUSTOM,   /* parse / dump functions */
};

#define F_REQUIRED 1u   /* the key must be present (objects in arrays) */
#define F_UNIQUE   2u   /* K_STRARR: no two items alike */

struct ctx;
struct out;

struct field {
	const char *key;
	int kind;
	size_t off;
	int64_t min, max;
	size_t cap;
	size_t off_n;
	int nmin, nmax;
	const char *const *names;
	const int *values;
	const struct field *sub;
	unsigned flags;
	/* K_STR*: extra check of a decoded value; returns a message or NULL. */
	const char *(*check)(struct ctx *x, const char *s, void *base);
	void (*parse)(struct ctx *x, int i, void *p);
	void (*dump)(struct out *o, const void *p);
};

struct seen {
	char path[PATH_LEN];
	int  key_off;      /* -1 for array items */
	int  val_off;
	bool bad;
};

struct ctx {
	const char *js;
	size_t len;
	const char *file;
	const jsmntok_t *t;
	int n;
	struct tpo_config *c;
	struct tpo_config_errors *errs;
	int nerr;
	char path[PATH_LEN];
	char msg[160];     /* scratch for check functions */
	int nseen;
	struct seen seen[SEEN_MAX];
};

/* ---- errors ---------------------------------------------------------- */

static void add_error(struct ctx *x, const char *path, long off, const char *fmt, va_list ap)
{
	struct tpo_config_errors *e = x->errs;
	char what[256];
	int line = 0, col = 0, n;
	char *m;

	x->nerr++;
	if (!e)
		return;
	if (e->n >= TPO_CONFIG_ERRORS_MAX) {
		e->dropped++;
		return;
	}
	m = e->msg[e->n++];
	vsnprintf(what, sizeof(what), fmt, ap);
	n = snprintf(m, TPO_CONFIG_ERROR_LEN, "%s: ", x->file);
	if (path && *path && n >= 0 && n < TPO_CONFIG_ERROR_LEN)
		n += snprintf(m + n, TPO_CONFIG_ERROR_LEN - (size_t)n, "%s: ", path);
	if (n >= 0 && n < TPO_CONFIG_ERROR_LEN)
		n += snprintf(m + n, TPO_CONFIG_ERROR_LEN - (size_t)n, "%s", what);
	if (off >= 0 && n >= 0 && n < TPO_CONFIG_ERROR_LEN) {
		tpo_json_linecol(x->js, x->len, (size_t)off, &line, &col);
		snprintf(m + n, TPO_CONFIG_ERROR_LEN - (size_t)n, " at %d:%d", line, col);
	}
}

static struct seen *seen_find(struct ctx *x, const char *path)
{
	int i;

	for (i = x->nseen - 1; i >= 0; i--)
		if (!strcmp(x->seen[i].path, path))
			return &x->seen[i];
	return NULL;
}

static void seen_add(struct ctx *x, int key_off, int val_off)
{
	struct seen *s;

	if (x->nseen >= SEEN_MAX)
		return;
	s = &x->seen[x->nseen++];
	snprintf(s->path, sizeof(s->path), "%s", x->path);
	s->key_off = key_off;
	s->val_off = val_off;
	s->bad = false;
}

static void err_at(struct ctx *x, const char *path, long off, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void err_at(struct ctx *x, const char *path, long off, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	add_error(x, path, off, fmt, ap);
	va_end(ap);
}

/* An error about the value at the current path; marks it bad for cross checks. */
static void err(struct ctx *x, long off, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void err(struct ctx *x, long off, const char *fmt, ...)
{
	struct seen *s = seen_find(x, x->path);
	va_list ap;

	if (s)
		s->bad = true;
	va_start(ap, fmt);
	add_error(x, x->path, off, fmt, ap);
	va_end(ap);
}

static long val_off(const jsmntok_t *t)
{
	return t->type == JSMN_STRING ? t->start - 1 : t->start;
}

static size_t path_push_key(struct ctx *x, const jsmntok_t *k)
{
	size_t old = strlen(x->path);
	int n = k->end - k->start;

	if (n > KEY_LEN)
		n = KEY_LEN;
	snprintf(x->path + old, sizeof(x->path) - old, "%s%.*s", old ? "." : "", n,
		 x->js + k->start);
	return old;
}

static size_t path_push_index(struct ctx *x, int i)
{
	size_t old = strlen(x->path);

	snprintf(x->path + old, sizeof(x->path) - old, "[%d]", i);
	return old;
}

static void path_pop(struct ctx *x, size_t old)
{
	x->path[old] = '\0';
}

/* ---- scalar values --------------------------------------------------- */

static void int_error(struct ctx *x, const jsmntok_t *t, int64_t min, int64_t max, int not_int)
{
	long off = val_off(t);

	if (min == INT64_MIN)
		err(x, off, "expected an integer");
	else if (min == 1 && not_int)
		err(x, off, "expected a positive integer");
	else if (min == 0 && not_int)
		err(x, off, "expected a non-negative integer");
	else
		err(x, off, "expected an integer in %" PRId64 "..%" PRId64, min, max);
}

/* 0 and *v, or -1 after reporting. */
static int get_int(struct ctx *x, const jsmntok_t *t, int64_t min, int64_t max, int64_t *v)
{
	int r = tpo_json_get_int64(x->js, t, v);

	if (r == -EINVAL) {
		int_error(x, t, min, max, 1);
		return -1;
	}
	if (r < 0 || *v < min || *v > max) {
		int_error(x, t, min, max, (min == 0 || min == 1) && (r < 0 ? x->js[t->start] == '-' : *v < min));
		return -1;
	}
	return 0;
}

static int is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

/*
 * Decodes string token t into dst[cap] (zero-filling the rest). Returns the
 * length, or -1 after reporting. what names the expectation for messages.
 */
static int get_str(struct ctx *x, const jsmntok_t *t, char *dst, size_t cap,
		   int64_t min, int64_t max, const char *what)
{
	int r;

	if (t->type != JSMN_STRING) {
		err(x, val_off(t), "expected %s", what);
		return -1;
	}
	r = tpo_json_get_string(x->js, t, dst, cap);
	if (r == -ENOSPC || (r >= 0 && r > max)) {
		err(x, val_off(t), "expected a string of at most %" PRId64 " bytes", max);
		return -1;
	}
	if (r < 0) {
		err(x, val_off(t), "invalid string escape (unpaired UTF-16 surrogate)");
		return -1;
	}
	if (strlen(dst) != (size_t)r) {
		err(x, val_off(t), "expected a string without NUL characters");
		return -1;
	}
	if (r < min) {
		if (min == 1)
			err(x, val_off(t), "expected a non-empty string");
		else
			err(x, val_off(t), "expected a string of at least %" PRId64 " bytes", min);
		return -1;
	}
	memset(dst + r, 0, cap - (size_t)r);
	return r;
}

static int env_name_ok(const char *s)
{
	size_t i;

	if (!*s || (*s >= '0' && *s <= '9'))
		return 0;
	for (i = 0; s[i]; i++)
		if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
		      (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
			return 0;
	return 1;
}

/* ---- walking objects and arrays -------------------------------------- */

static void parse_value(struct ctx *x, int i, const struct field *f, void *base);

static const struct field *field_find(const struct field *tab, const char *key)
{
	for (; tab->key; tab++)
		if (!strcmp(tab->key, key))
			return tab;
	return NULL;
}

static void key_decode(struct ctx *x, const jsmntok_t *k, char *buf)
{
	if (tpo_json_get_string(x->js, k, buf, KEY_LEN) < 0)
		buf[0] = '\0';   /* too long or malformed: matches no field */
}

/* Object at token i against table tab; fields land relative to base. */
static void walk_obj(struct ctx *x, int i, const struct field *tab, void *base)
{
	const jsmntok_t *o = &x->t[i];
	unsigned present = 0;   /* bit per table index, for F_REQUIRED */
	int k, j = i + 1, nkeys;

	if (o->type != JSMN_OBJECT) {
		err(x, val_off(o), "expected an object");
		return;
	}
	nkeys = o->size;
	for (k = 0; k < nkeys && j < x->n; k++) {
		const jsmntok_t *key = &x->t[j];
		char name[KEY_LEN], prev[KEY_LEN];
		const struct field *f;
		size_t old = path_push_key(x, key);
		int dup = 0, p, q;

		key_decode(x, key, name);
		/* Duplicate: an earlier key of this object decodes to the same name. */
		for (p = i + 1, q = 0; q < k && name[0]; q++) {
			key_decode(x, &x->t[p], prev);
			if (!strcmp(prev, name)) {
				int line, col;
				tpo_json_linecol(x->js, x->len, (size_t)x->t[p].start - 1, &line, &col);
				err_at(x, x->path, key->start - 1, "duplicate key (first at %d:%d)",
				       line, col);
				dup = 1;
				break;
			}
			p = tpo_json_skip(x->t, x->n, p);
			if (p < 0)
				break;
		}
		f = name[0] ? field_find(tab, name) : NULL;
		if (!dup && !f) {
			err_at(x, x->path, key->start - 1, "unknown key");
		} else if (!dup) {
			present |= 1u << (f - tab);
			seen_add(x, key->start - 1, (int)val_off(&x->t[j + 1]));
			parse_value(x, j + 1, f, base);
		}
		path_pop(x, old);
		j = tpo_json_skip(x->t, x->n, j);
		if (j < 0)
			return;
	}
	for (k = 0; tab[k].key; k++)
		if ((tab[k].flags & F_REQUIRED) && !(present & (1u << k)))
			err(x, val_off(o), "missing required key \"%s\"", tab[k].key);
}

static void parse_strarr(struct ctx *x, int i, const struct field *f, void *base)
{
	const jsmntok_t *a = &x->t[i];
	char *arr = (char *)base + f->off;
	int *count = (int *)((char *)base + f->off_n);
	int k, j = i + 1, n = 0;

	if (a->type != JSMN_ARRAY) {
		if (f->nmin > 0)
			err(x, val_off(a), "expected an array of %d..%d strings", f->nmin, f->nmax);
		else
			err(x, val_off(a), "expected an array of at most %d strings", f->nmax);
		return;
	}
	if (a->size < f->nmin || a->size > f->nmax) {
		if (f->nmin > 0)
			err(x, val_off(a), "expected an array of %d..%d strings", f->nmin, f->nmax);
		else
			err(x, val_off(a), "expected an array of at most %d strings", f->nmax);
		return;
	}
	memset(arr, 0, f->cap * (size_t)f->nmax);
	for (k = 0; k < a->size; k++) {
		size_t old = path_push_index(x, k);
		char *item = arr + f->cap * (size_t)n;
		int q;

		seen_add(x, -1, (int)val_off(&x->t[j]));
		if (get_str(x, &x->t[j], item, f->cap, f->min, f->max, "a string") >= 0) {
			for (q = 0; (f->flags & F_UNIQUE) && q < n; q++)
				if (!strcmp(arr + f->cap * (size_t)q, item))
					break;
			if ((f->flags & F_UNIQUE) && q < n) {
				err(x, val_off(&x->t[j]), "duplicate of item %d", q);
				memset(item, 0, f->cap);
			} else {
				n++;
			}
		}
		path_pop(x, old);
		j = tpo_json_skip(x->t, x->n, j);
		if (j < 0)
			break;
	}
	*count = n;
}

static void parse_objarr(struct ctx *x, int i, const struct field *f, void *base)
{
	const jsmntok_t *a = &x->t[i];
	char *arr = (char *)base + f->off;
	int *count = (int *)((char *)base + f->off_n);
	int k, j = i + 1;

	if (a->type != JSMN_ARRAY || a->size < f->nmin || a->size > f->nmax) {
		err(x, val_off(a), "expected an array of %d..%d objects", f->nmin, f->nmax);
		return;
	}
	memset(arr, 0, f->cap * (size_t)f->nmax);
	for (k = 0; k < a->size; k++) {
		size_t old = path_push_index(x, k);
		char *elem = arr + f->cap * (size_t)k;
		const struct field *s;

		/* Element defaults: every integer field starts at its minimum... */
		for (s = f->sub; s->key; s++)
			if (s->kind == K_U32)
				*(uint32_t *)(elem + s->off) = (uint32_t)s->min;
		seen_add(x, -1, (int)val_off(&x->t[j]));
		walk_obj(x, j, f->sub, elem);
		path_pop(x, old);
		j = tpo_json_skip(x->t, x->n, j);
		if (j < 0)
			break;
	}
	*count = a->size;
}

static void parse_value(struct ctx *x, int i, const struct field *f, void *base)
{
	const jsmntok_t *t = &x->t[i];
	void *p = (char *)base + f->off;
	int64_t v;
	int k;

	switch (f->kind) {
	case K_U32:
		if (get_int(x, t, f->min, f->max, &v) == 0)
			*(uint32_t *)p = (uint32_t)v;
		break;
	case K_U64:
		if (get_int(x, t, f->min, f->max, &v) == 0)
			*(uint64_t *)p = (uint64_t)v;
		break;
	case K_I64:
		if (get_int(x, t, f->min, f->max, &v) == 0)
			*(int64_t *)p = v;
		break;
	case K_POW2:
	case K_RINGCAP:
		if (tpo_json_get_int64(x->js, t, &v) == 0 &&
		    ((f->kind == K_RINGCAP && v == 0) ||
		     (v >= f->min && v <= f->max && is_pow2((uint64_t)v)))) {
			*(uint64_t *)p = (uint64_t)v;
		} else if (f->kind == K_RINGCAP) {
			err(x, val_off(t), "expected 0 (use rings.capacity) or a power of two in %"
			    PRId64 "..%" PRId64, f->min, f->max);
		} else {
			err(x, val_off(t), "expected a power of two in %" PRId64 "..%" PRId64,
			    f->min, f->max);
		}
		break;
	case K_ENUM: {
		char s[KEY_LEN], list[200];
		size_t n = 0;

		if (t->type == JSMN_STRING && tpo_json_get_string(x->js, t, s, sizeof(s)) >= 0)
			for (k = 0; f->names[k]; k++)
				if (!strcmp(f->names[k], s)) {
					*(int *)p = f->values ? f->values[k] : k;
					return;
				}
		list[0] = '\0';
		for (k = 0; f->names[k] && n < sizeof(list); k++)
			n += (size_t)snprintf(list + n, sizeof(list) - n, "%s\"%s\"",
					      k ? ", " : "", f->names[k]);
		err(x, val_off(t), "expected one of %s", list);
		break;
	}
	case K_STR:
	case K_STRNULL:
	case K_ENVNULL: {
		const char *what = f->kind == K_STR ? "a string" : "a string or null";

		if (f->kind != K_STR && tpo_json_is_null(x->js, t)) {
			memset(p, 0, f->cap);
			break;
		}
		if (f->kind == K_ENVNULL)
			what = "an environment variable name or null";
		if (get_str(x, t, p, f->cap, f->min, f->max, what) < 0)
			break;
		if (f->kind == K_ENVNULL && !env_name_ok(p)) {
			err(x, val_off(t), "expected an environment variable name "
			    "([A-Za-z_][A-Za-z0-9_]*) or null");
			break;
		}
		if (f->check) {
			const char *m = f->check(x, p, base);
			if (m)
				err(x, val_off(t), "%s", m);
		}
		break;
	}
	case K_STRARR:
		parse_strarr(x, i, f, base);
		break;
	case K_OBJ:
		walk_obj(x, i, f->sub, p);
		break;
	case K_OBJARR:
		parse_objarr(x, i, f, base);
		break;
	case K_CUSTOM:
		f->parse(x, i, p);
		break;
	}
}

/* ---- special values -------------------------------------------------- */

static const char *check_name(struct ctx *x, const char *s, void *base)
{
	(void)x;
	(void)base;
	for (; *s; s++)
		if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
		      (*s >= '0' && *s <= '9') || *s == '_' || *s == '-'))
			return "expected 1..32 characters from [A-Za-z0-9_-]";
	return NULL;
}

/* "HOST:PORT": an IPv4 literal, "localhost" or "[IPv6]"; fills host and port. */
static const char *check_listen(struct ctx *x, const char *s, void *base)
{
	static const char bad[] = "expected \"HOST:PORT\" with HOST an IPv4 address, "
				  "\"localhost\" or \"[IPv6 address]\" and PORT in 1..65535";
	struct tpo_config *c = base;
	const char *colon = strrchr(s, ':');
	char host[TPO_CONFIG_HOST_LEN];
	unsigned char addr[16];
	size_t hl;
	long port = 0;
	const char *q;

	(void)x;
	if (!colon || !colon[1] || colon - s >= (long)sizeof(host))
		return bad;
	for (q = colon + 1; *q; q++) {
		if (*q < '0' || *q > '9' || port > 65535)
			return bad;
		port = port * 10 + (*q - '0');
	}
	if (port < 1 || port > 65535 || (colon[1] == '0'))
		return bad;
	hl = (size_t)(colon - s);
	if (hl >= 2 && s[0] == '[' && s[hl - 1] == ']') {
		memcpy(host, s + 1, hl - 2);
		host[hl - 2] = '\0';
		if (inet_pton(AF_INET6, host, addr) != 1)
			return bad;
	} else {
		memcpy(host, s, hl);
		host[hl] = '\0';
		if (strcmp(host, "localhost") && inet_pton(AF_INET, host, addr) != 1)
			return bad;
	}
	memset(c->listen_host, 0, sizeof(c->listen_host));
	memcpy(c->listen_host, host, strlen(host));
	c->listen_port = (uint16_t)port;
	return NULL;
}

static const char *check_url(struct ctx *x, const char *s, void *base)
{
	const char *h;

	(void)x;
	(void)base;
	if (!strncmp(s, "http://", 7))
		h = s + 7;
	else if (!strncmp(s, "https://", 8))
		h = s + 8;
	else
		return "expected an http:// or https:// URL";
	if (!*h || *h == '/' || *h == ':')
		return "expected an http:// or https:// URL with a host";
	for (; *s; s++)
		if ((unsigned char)*s <= ' ' || *s == 0x7f)
			return "expected a URL without spaces or control characters";
	return NULL;
}

static const char *check_template(struct ctx *x, const char *s, void *base)
{
	int messages = 0;

	(void)base;
	for (; *s; s++) {
		size_t n = 0;

		if (*s != '{')
			continue;
		while ((s[1 + n] >= 'a' && s[1 + n] <= 'z') || s[1 + n] == '_')
			n++;
		if (n == 0 || s[1 + n] != '}')
			continue;       /* not a placeholder: a literal brace */
		if (n == 8 && !strncmp(s + 1, "messages", 8)) {
			messages++;
		} else if (!(n == 7 && !strncmp(s + 1, "context", 7))) {
			snprintf(x->msg, sizeof(x->msg), "unknown placeholder {%.*s} "
				 "(known: {context}, {messages})", (int)(n > 32 ? 32 : n), s + 1);
			return x->msg;
		}
	}
	if (!messages)
		return "expected a template containing {messages}";
	return NULL;
}

static void parse_lanes(struct ctx *x, int i, void *p)
{
	static const char bad[] = "expected \"auto\", a lane count in 1..16 "
				  "or an array of 1..16 CPU numbers";
	struct tpo_lanes_spec *l = p, nl;
	const jsmntok_t *t = &x->t[i];
	int64_t v;
	int k, j;

	memset(&nl, 0, sizeof(nl));
	if (t->type == JSMN_STRING) {
		if (!tpo_json_tok_eq(x->js, t, "auto")) {
			err(x, val_off(t), bad);
			return;
		}
		nl.mode = TPO_LANES_AUTO;
	} else if (t->type == JSMN_PRIMITIVE) {
		if (tpo_json_get_int64(x->js, t, &v) < 0 || v < 1 || v > TPO_LANES_MAX) {
			err(x, val_off(t), bad);
			return;
		}
		nl.mode = TPO_LANES_COUNT;
		nl.count = (int)v;
	} else if (t->type == JSMN_ARRAY) {
		if (t->size < 1 || t->size > TPO_LANES_MAX) {
			err(x, val_off(t), bad);
			return;
		}
		nl.mode = TPO_LANES_LIST;
		for (k = 0, j = i + 1; k < t->size; k++) {
			size_t old = path_push_index(x, k);
			int q;

			seen_add(x, -1, (int)val_off(&x->t[j]));
			if (get_int(x, &x->t[j], 0, 1023, &v) == 0) {
				for (q = 0; q < nl.ncpus; q++)
					if (nl.cpus[q] == v)
						break;
				if (q < nl.ncpus)
					err(x, val_off(&x->t[j]), "duplicate CPU %d", (int)v);
				else
					nl.cpus[nl.ncpus++] = (int)v;
			}
			path_pop(x, old);
			j = tpo_json_skip(x->t, x->n, j);
			if (j < 0)
				return;
		}
		if (nl.ncpus != t->size)
			return;
	} else {
		err(x, val_off(t), bad);
		return;
	}
	*l = nl;
}

static void parse_spin(struct ctx *x, int i, void *p)
{
	const jsmntok_t *t = &x->t[i];
	int64_t v;

	if (t->type == JSMN_STRING && tpo_json_tok_eq(x->js, t, "auto")) {
		*(int64_t *)p = TPO_CONFIG_SPIN_AUTO;
		return;
	}
	if (tpo_json_get_int64(x->js, t, &v) == 0 && v >= 0 && v <= 10000000) {
		*(int64_t *)p = v;
		return;
	}
	err(x, val_off(t), "expected \"auto\" or an integer in 0..10000000");
}

static void parse_rag_enabled(struct ctx *x, int i, void *p)
{
	const jsmntok_t *t = &x->t[i];

	if (t->type == JSMN_STRING && tpo_json_tok_eq(x->js, t, "auto"))
		*(uint32_t *)p = TPO_RAG_AUTO;
	else if (t->type == JSMN_PRIMITIVE && tpo_json_tok_eq(x->js, t, "true"))
		*(uint32_t *)p = TPO_RAG_ON;
	else if (t->type == JSMN_PRIMITIVE && tpo_json_tok_eq(x->js, t, "false"))
		*(uint32_t *)p = TPO_RAG_OFF;
	else
		err(x, val_off(t), "expected \"auto\", true or false");
}

/* ---- schema ---------------------------------------------------------- */

#define U32(k, T, m, lo, hi) { .key = k, .kind = K_U32, .off = offsetof(T, m), .min = lo, .max = hi }
#define I64(k, T, m, lo, hi) { .key = k, .kind = K_I64, .off = offsetof(T, m), .min = lo, .max = hi }
#define RCAP(T, m) { .key = "ring_capacity", .kind = K_RINGCAP, .off = offsetof(T, m), \
		     .min = RING_CAP_MIN, .max = RING_CAP_MAX }
#define ENUM(k, T, m, n, v) { .key = k, .kind = K_ENUM, .off = offsetof(T, m), .names = n, .values = v }
#define STR(k, kd, T, m, lo, hi, chk) { .key = k, .kind = kd, .off = offsetof(T, m), \
		.cap = sizeof(((T *)0)->m), .min = lo, .max = hi, .check = chk }
#define OBJ(k, T, m, s) { .key = k, .kind = K_OBJ, .off = offsetof(T, m), .sub = s }
#define END { .key = NULL }

static const char *const level_names[] = { "debug", "info", "notice", "warning", "error", NULL };
static const int level_values[] = { LOG_DEBUG, LOG_INFO, LOG_NOTICE, LOG_WARNING, LOG_ERR };
static const char *const policy_names[] = { "reject_new", "drop_oldest", NULL };
static const char *const sched_names[] = { "batch", "normal", NULL };
static const char *const worker_names[] = { "mock", "openai", "llamacpp", "tgi", "anthropic",
					     "plugin", NULL };
static const char *const balance_names[] = { "least_inflight", "session_hash", NULL };

static void dump_lanes(struct out *o, const void *p);
static void dump_spin(struct out *o, const void *p);
static void dump_rag_enabled(struct out *o, const void *p);

static const struct field rings_tab[] = {
	{ .key = "capacity", .kind = K_POW2, .off = offsetof(struct tpo_config_rings, capacity),
	  .min = RING_CAP_MIN, .max = RING_CAP_MAX },
	U32("max_record", struct tpo_config_rings, max_record, 65536, 16777216),
	END
};

#define ADM struct tpo_config_admission
static const struct field admission_tab[] = {
	U32("max_inflight_per_lane", ADM, max_inflight_per_lane, 1, 1000000),
	ENUM("policy", ADM, policy, policy_names, NULL),
	U32("retry_after_s", ADM, retry_after_s, 1, 3600),
	U32("request_timeout_ms", ADM, request_timeout_ms, 1, 3600000),
	U32("max_body_bytes", ADM, max_body_bytes, 1024, 67108864),
	U32("max_header_bytes", ADM, max_header_bytes, 1024, 1048576),
	U32("max_headers", ADM, max_headers, 1, 1000),
	U32("header_timeout_ms", ADM, header_timeout_ms, 100, 600000),
	U32("idle_timeout_ms", ADM, idle_timeout_ms, 100, 3600000),
	U32("max_connections", ADM, max_connections, 1, 1000000),
	END
};

static const struct field auth_tab[] = {
	STR("api_keys_env", K_ENVNULL, struct tpo_config, auth_api_keys_env, 1,
	    TPO_CONFIG_ENV_LEN - 1, NULL),
	END
};

#define RST struct tpo_config_restart
static const struct field restart_tab[] = {
	U32("base_ms", RST, fsm.base_ms, 1, 600000),
	U32("cap_ms", RST, fsm.cap_ms, 1, 3600000),
	U32("jitter_pct", RST, fsm.jitter_pct, 0, 100),
	U32("stable_ms", RST, fsm.stable_ms, 1, 3600000),
	U32("max_restarts", RST, fsm.max_restarts, 1, TPO_FSM_RESTARTS_MAX),
	U32("window_ms", RST, fsm.window_ms, 1, 3600000),
	U32("open_ms", RST, fsm.open_ms, 1, 3600000),
	U32("open_max_ms", RST, fsm.open_max_ms, 1, 3600000),
	U32("probe_ok_ms", RST, fsm.probe_ok_ms, 0, 3600000),
	U32("quarantine_after", RST, quarantine_after, 1, 10),
	END
};

static const struct field stream_tab[] = {
	RCAP(struct tpo_config_stream, ring_capacity),
	END
};

#define RAG struct tpo_config_rag
static const struct field rag_tab[] = {
	RCAP(RAG, ring_capacity),
	{ .key = "enabled", .kind = K_CUSTOM, .off = offsetof(RAG, enabled),
	  .parse = parse_rag_enabled, .dump = dump_rag_enabled },
	STR("context_file", K_STRNULL, RAG, context_file, 1, TPO_CONFIG_PATH_LEN - 1, NULL),
	U32("max_context_bytes", RAG, max_context_bytes, 0, 16777216),
	END
};

#define ASM struct tpo_config_assemble
static const struct field assemble_tab[] = {
	RCAP(ASM, ring_capacity),
	STR("template", K_STR, ASM, template, 1, TPO_CONFIG_TEMPLATE_LEN - 1, check_template),
	U32("max_prompt_bytes", ASM, max_prompt_bytes, 256, 16777216),
	END
};

#define MCK struct tpo_config_mock
static const struct field mock_tab[] = {
	U32("tokens_per_second", MCK, tokens_per_second, 0, 10000000),
	U32("max_tokens", MCK, max_tokens, 1, 1000000),
	I64("seed", MCK, seed, INT64_MIN, INT64_MAX),
	END
};

#define TMO struct tpo_config_timeouts
static const struct field timeouts_tab[] = {
	U32("connect_ms", TMO, connect_ms, 1, 3600000),
	U32("first_token_ms", TMO, first_token_ms, 1, 3600000),
	U32("idle_ms", TMO, idle_ms, 1, 3600000),
	U32("total_ms", TMO, total_ms, 1, 3600000),
	END
};

#define RTR struct tpo_config_retries
static const struct field retries_tab[] = {
	U32("max_attempts", RTR, max_attempts, 1, 10),
	U32("base_ms", RTR, base_ms, 1, 60000),
	U32("cap_ms", RTR, cap_ms, 1, 600000),
	END
};

#define EP struct tpo_config_endpoint
static const struct field endpoint_tab[] = {
	{ .key = "url", .kind = K_STR, .off = offsetof(EP, url), .cap = TPO_CONFIG_URL_LEN,
	  .min = 1, .max = TPO_CONFIG_URL_LEN - 1, .check = check_url, .flags = F_REQUIRED },
	STR("api_key_env", K_ENVNULL, EP, api_key_env, 1, TPO_CONFIG_ENV_LEN - 1, NULL),
	STR("model", K_STRNULL, EP, model, 1, TPO_CONFIG_MODEL_LEN - 1, NULL),
	U32("weight", EP, weight, 1, 100),
	END
};

static const struct field breaker_tab[] = {
	U32("failures", struct tpo_config_breaker, failures, 1, 1000),
	U32("open_ms", struct tpo_config_breaker, open_ms, 1, 3600000),
	END
};

#define PLG struct tpo_config_plugin
static const struct field plugin_tab[] = {
	STR("path", K_STRNULL, PLG, path, 1, TPO_CONFIG_PATH_LEN - 1, NULL),
	STR("options", K_STRNULL, PLG, options, 1, TPO_CONFIG_OPTIONS_LEN - 1, NULL),
	END
};

#define INF struct tpo_config_infer
static const struct field infer_tab[] = {
	RCAP(INF, ring_capacity),
	U32("processes", INF, processes, 1, 8),
	ENUM("worker", INF, worker, worker_names, NULL),
	U32("max_inflight", INF, max_inflight, 1, 100000),
	OBJ("mock", INF, mock, mock_tab),
	OBJ("timeouts", INF, timeouts, timeouts_tab),
	OBJ("retries", INF, retries, retries_tab),
	{ .key = "endpoints", .kind = K_OBJARR, .off = offsetof(INF, endpoints),
	  .off_n = offsetof(INF, nendpoints), .cap = sizeof(struct tpo_config_endpoint),
	  .nmin = 0, .nmax = TPO_CONFIG_ENDPOINTS_MAX, .sub = endpoint_tab },
	ENUM("balance", INF, balance, balance_names, NULL),
	OBJ("breaker", INF, breaker, breaker_tab),
	OBJ("plugin", INF, plugin, plugin_tab),
	END
};

#define PST struct tpo_config_post
static const struct field post_tab[] = {
	RCAP(PST, ring_capacity),
	{ .key = "stop", .kind = K_STRARR, .off = offsetof(PST, stop), .off_n = offsetof(PST, nstop),
	  .cap = TPO_CONFIG_STOP_LEN, .min = 1, .max = TPO_CONFIG_STOP_LEN - 1,
	  .nmin = 0, .nmax = TPO_CONFIG_STOP_MAX },
	U32("max_tokens", PST, max_tokens, 1, 1000000),
	{ .key = "redact", .kind = K_STRARR, .off = offsetof(PST, redact),
	  .off_n = offsetof(PST, nredact), .cap = TPO_CONFIG_REDACT_LEN, .min = 1,
	  .max = TPO_CONFIG_REDACT_LEN - 1, .nmin = 0, .nmax = TPO_CONFIG_REDACT_MAX },
	END
};

#define STG struct tpo_config_stages
static const struct field stages_tab[] = {
	OBJ("stream", STG, stream, stream_tab),
	OBJ("rag", STG, rag, rag_tab),
	OBJ("assemble", STG, assemble, assemble_tab),
	OBJ("infer", STG, infer, infer_tab),
	OBJ("post", STG, post, post_tab),
	END
};

#define CFG struct tpo_config
static const struct field top_tab[] = {
	STR("name", K_STR, CFG, name, 1, TPO_CONFIG_NAME_LEN - 1, check_name),
	STR("listen", K_STR, CFG, listen, 1, TPO_CONFIG_LISTEN_LEN - 1, check_listen),
	{ .key = "lanes", .kind = K_CUSTOM, .off = offsetof(CFG, lanes), .parse = parse_lanes,
	  .dump = dump_lanes },
	{ .key = "spin_ns", .kind = K_CUSTOM, .off = offsetof(CFG, spin_ns), .parse = parse_spin,
	  .dump = dump_spin },
	ENUM("sched", CFG, sched, sched_names, NULL),
	U32("drain_timeout_ms", CFG, drain_timeout_ms, 1, 600000),
	ENUM("log_level", CFG, log_level, level_names, level_values),
	{ .key = "models", .kind = K_STRARR, .off = offsetof(CFG, models), .off_n = offsetof(CFG, nmodels),
	  .cap = TPO_CONFIG_MODEL_LEN, .min = 1, .max = TPO_CONFIG_MODEL_LEN - 1,
	  .nmin = 1, .nmax = TPO_CONFIG_MODELS_MAX, .flags = F_UNIQUE },
	OBJ("rings", CFG, rings, rings_tab),
	OBJ("admission", CFG, admission, admission_tab),
	{ .key = "auth", .kind = K_OBJ, .off = 0, .sub = auth_tab },  /* fields are in CFG */
	OBJ("restart", CFG, restart, restart_tab),
	OBJ("stages", CFG, stages, stages_tab),
	END
};

/* ---- defaults -------------------------------------------------------- */

int tpo_config_defaults(struct tpo_config *c)
{
	struct tpo_config_infer *in = &c->stages.infer;

	memset(c, 0, sizeof(*c));
	strcpy(c->name, "default");
	strcpy(c->listen, "127.0.0.1:8080");
	strcpy(c->listen_host, "127.0.0.1");
	c->listen_port = 8080;
	c->lanes.mode = TPO_LANES_AUTO;
	c->spin_ns = TPO_CONFIG_SPIN_AUTO;
	c->sched = TPO_SCHED_BATCH;
	c->drain_timeout_ms = 10000;
	c->log_level = LOG_INFO;
	c->nmodels = 1;
	strcpy(c->models[0], "tpo-mock");

	c->rings.capacity = 1048576;
	c->rings.max_record = 65536;

	c->admission.max_inflight_per_lane = 256;
	c->admission.policy = TPO_POLICY_REJECT_NEW;
	c->admission.retry_after_s = 1;
	c->admission.request_timeout_ms = 120000;
	c->admission.max_body_bytes = 1048576;
	c->admission.max_header_bytes = 16384;
	c->admission.max_headers = 64;
	c->admission.header_timeout_ms = 10000;
	c->admission.idle_timeout_ms = 60000;
	c->admission.max_connections = 10000;

	c->restart.fsm.base_ms = 100;
	c->restart.fsm.cap_ms = 30000;
	c->restart.fsm.jitter_pct = 20;
	c->restart.fsm.stable_ms = 60000;
	c->restart.fsm.max_restarts = 5;
	c->restart.fsm.window_ms = 60000;
	c->restart.fsm.open_ms = 30000;
	c->restart.fsm.open_max_ms = 300000;
	c->restart.fsm.probe_ok_ms = 0;
	c->restart.quarantine_after = 2;

	c->stages.rag.max_context_bytes = 8192;
	strcpy(c->stages.assemble.template, "{context}{messages}");
	c->stages.assemble.max_prompt_bytes = 32768;

	in->processes = 1;
	in->worker = TPO_WORKER_MOCK;
	in->max_inflight = 64;
	in->mock.tokens_per_second = 50;
	in->mock.max_tokens = 64;
	in->mock.seed = 0;
	in->timeouts.connect_ms = 5000;
	in->timeouts.first_token_ms = 30000;
	in->timeouts.idle_ms = 30000;
	in->timeouts.total_ms = 300000;
	in->retries.max_attempts = 3;
	in->retries.base_ms = 100;
	in->retries.cap_ms = 2000;
	in->balance = TPO_BALANCE_LEAST_INFLIGHT;
	in->breaker.failures = 5;
	in->breaker.open_ms = 10000;

	c->stages.post.max_tokens = 4096;
	return 0;
}

/* ---- cross-field checks ---------------------------------------------- */

static int seen_bad(struct ctx *x, const char *path)
{
	struct seen *s = seen_find(x, path);

	return s && s->bad;
}

static long seen_off(struct ctx *x, const char *path)
{
	struct seen *s = seen_find(x, path);

	return s ? s->val_off : -1;
}

/* hi must be >= lo: blame hi if the file sets it, else lo. */
static void check_order(struct ctx *x, const char *lo_path, uint64_t lo,
			const char *hi_path, uint64_t hi)
{
	if (hi >= lo || seen_bad(x, lo_path) || seen_bad(x, hi_path))
		return;
	if (seen_find(x, hi_path))
		err_at(x, hi_path, seen_off(x, hi_path),
		       "expected an integer >= %s (%" PRIu64 ")", lo_path, lo);
	else
		err_at(x, lo_path, seen_off(x, lo_path),
		       "expected an integer <= %s (%" PRIu64 ", its default)", hi_path, hi);
}

static void check_ring(struct ctx *x, const char *path, uint64_t cap, uint64_t need)
{
	if (cap >= need || seen_bad(x, path) || seen_bad(x, "rings.max_record"))
		return;
	if (seen_find(x, path) || !seen_find(x, "rings.max_record"))
		err_at(x, path, seen_off(x, path), "expected at least 2 * (rings.max_record + %u) "
		       "= %" PRIu64 " bytes", REC_OVERHEAD, need);
	else
		err_at(x, "rings.max_record", seen_off(x, "rings.max_record"),
		       "expected at most %s / 2 - %u = %" PRIu64, path, REC_OVERHEAD,
		       cap / 2 - REC_OVERHEAD);
}

static void check_cross(struct ctx *x)
{
	struct tpo_config *c = x->c;
	struct tpo_config_stages *s = &c->stages;
	const struct tpo_config_infer *in = &s->infer;
	uint64_t need = 2 * ((uint64_t)c->rings.max_record + REC_OVERHEAD);
	static const char *const rc[] = {
		"stages.stream.ring_capacity", "stages.rag.ring_capacity",
		"stages.assemble.ring_capacity", "stages.infer.ring_capacity",
		"stages.post.ring_capacity",
	};
	const uint64_t rv[] = {
		s->stream.ring_capacity, s->rag.ring_capacity, s->assemble.ring_capacity,
		in->ring_capacity, s->post.ring_capacity,
	};
	int k;

	if (!seen_bad(x, "rings.capacity"))
		check_ring(x, "rings.capacity", c->rings.capacity, need);
	for (k = 0; k < 5; k++)
		if (rv[k])
			check_ring(x, rc[k], rv[k], need);

	check_order(x, "restart.base_ms", c->restart.fsm.base_ms,
		    "restart.cap_ms", c->restart.fsm.cap_ms);
	check_order(x, "restart.open_ms", c->restart.fsm.open_ms,
		    "restart.open_max_ms", c->restart.fsm.open_max_ms);
	if (c->restart.fsm.probe_ok_ms)
		check_order(x, "restart.probe_ok_ms", c->restart.fsm.probe_ok_ms,
			    "restart.stable_ms", c->restart.fsm.stable_ms);
	check_order(x, "stages.infer.retries.base_ms", in->retries.base_ms,
		    "stages.infer.retries.cap_ms", in->retries.cap_ms);

	if (c->stages.rag.enabled == TPO_RAG_OFF && c->stages.rag.context_file[0] &&
	    !seen_bad(x, "stages.rag.context_file"))
		err_at(x, "stages.rag.enabled", seen_off(x, "stages.rag.enabled"),
		       "expected true or \"auto\": stages.rag.context_file is set, "
		       "and retrieval runs in the rag stage");

	if (seen_bad(x, "stages.infer.worker"))
		return;
	if (in->worker != TPO_WORKER_MOCK && in->worker != TPO_WORKER_PLUGIN &&
	    in->nendpoints == 0 && !seen_bad(x, "stages.infer.endpoints")) {
		const char *wn = worker_names[in->worker];

		if (seen_find(x, "stages.infer.endpoints"))
			err_at(x, "stages.infer.endpoints", seen_off(x, "stages.infer.endpoints"),
			       "expected at least one endpoint for worker \"%s\"", wn);
		else
			err_at(x, "stages.infer.worker", seen_off(x, "stages.infer.worker"),
			       "worker \"%s\" needs at least one entry in stages.infer.endpoints", wn);
	}
	if (in->worker == TPO_WORKER_PLUGIN && !in->plugin.path[0] &&
	    !seen_bad(x, "stages.infer.plugin.path")) {
		if (seen_find(x, "stages.infer.plugin.path"))
			err_at(x, "stages.infer.plugin.path", seen_off(x, "stages.infer.plugin.path"),
			       "expected the plugin's path (a string) for worker \"plugin\"");
		else
			err_at(x, "stages.infer.worker", seen_off(x, "stages.infer.worker"),
			       "worker \"plugin\" needs stages.infer.plugin.path");
	}
}

/* ---- parse / load ---------------------------------------------------- */

static const char *type_name(jsmntype_t t, const char *js, const jsmntok_t *tok)
{
	switch (t) {
	case JSMN_ARRAY: return "an array";
	case JSMN_STRING: return "a string";
	case JSMN_PRIMITIVE:
		if (js[tok->start] == 't' || js[tok->start] == 'f')
			return "a boolean";
		return js[tok->start] == 'n' ? "null" : "a number";
	default: return "something else";
	}
}

int tpo_config_parse(struct tpo_config *c, const char *json, size_t len,
		     const char *file, struct tpo_config_errors *errs)
{
	struct tpo_json_error je;
	jsmntok_t *toks = NULL;
	struct ctx *x;
	size_t i;
	int n, ret = -EINVAL;

	if (errs) {
		errs->n = 0;
		errs->dropped = 0;
	}
	tpo_config_defaults(c);
	x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	x->js = json;
	x->len = len;
	x->file = file ? file : "<config>";
	x->c = c;
	x->errs = errs;

	for (i = 0; i < len; i++)
		if (json[i] != ' ' && json[i] != '\t' && json[i] != '\n' && json[i] != '\r')
			break;
	if (i == len) {
		err_at(x, "", (long)len, "empty file, expected a JSON object");
		goto out;
	}
	if (len > TPO_CONFIG_FILE_MAX) {
		err_at(x, "", -1, "file larger than %u bytes", TPO_CONFIG_FILE_MAX);
		goto out;
	}
	n = tpo_json_tokenize(json, len, &toks, &je);
	if (n == -ENOMEM) {
		ret = -ENOMEM;
		err_at(x, "", -1, "out of memory");
		goto out;
	}
	if (n < 0) {
		err_at(x, "", (long)je.off, "invalid JSON: %s", je.msg);
		goto out;
	}
	x->t = toks;
	x->n = n;
	if (toks[0].type != JSMN_OBJECT) {
		err_at(x, "", val_off(&toks[0]), "expected a JSON object, found %s",
		       type_name(toks[0].type, json, &toks[0]));
		goto out;
	}
	walk_obj(x, 0, top_tab, c);
	check_cross(x);
	if (x->nerr == 0)
		ret = 0;
out:
	free(toks);
	free(x);
	return ret;
}

int tpo_config_name_of(const char *path, char *name, size_t cap)
{
	static char buf[1 << 20];
	jsmntok_t *t = NULL;
	ssize_t len;
	int fd, nt, k, err = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	len = read(fd, buf, sizeof(buf));
	err = len < 0 ? -errno : 0;
	close(fd);
	if (err < 0)
		return err;
	nt = tpo_json_tokenize(buf, (size_t)len, &t, NULL);
	if (nt < 1 || t[0].type != JSMN_OBJECT) {
		free(t);
		return -EINVAL;
	}
	snprintf(name, cap, "default");
	for (k = 1; k > 0 && k + 1 < nt; k = tpo_json_skip(t, nt, k)) {
		size_t vl = (size_t)(t[k + 1].end - t[k + 1].start);

		if (t[k].end - t[k].start != 4 || memcmp(buf + t[k].start, "name", 4))
			continue;
		/* The first "name" decides: one that is no instance name never
		 * falls back to "default" (that could be another instance). */
		if (t[k + 1].type != JSMN_STRING || vl == 0 || vl >= cap) {
			err = -EINVAL;
			break;
		}
		memcpy(name, buf + t[k + 1].start, vl);
		name[vl] = 0;
		if (check_name(NULL, name, NULL))
			err = -EINVAL;
		break;
	}
	free(t);
	return err;
}

int tpo_config_load(struct tpo_config *c, const char *path, struct tpo_config_errors *errs)
{
	struct stat st;
	char *buf = NULL;
	size_t len = 0, cap;
	int fd, ret;

	if (errs) {
		errs->n = 0;
		errs->dropped = 0;
	}
	tpo_config_defaults(c);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		goto err_msg;
	}
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto err_close;
	}
	if (S_ISDIR(st.st_mode)) {
		ret = -EISDIR;
		goto err_close;
	}
	cap = st.st_size > 0 && (uint64_t)st.st_size <= TPO_CONFIG_FILE_MAX ?
	      (size_t)st.st_size + 1 : 65536;
	buf = malloc(cap);
	if (!buf) {
		ret = -ENOMEM;
		goto err_close;
	}
	for (;;) {
		ssize_t r;

		if (len == cap) {
			char *nb;

			if (cap > TPO_CONFIG_FILE_MAX) {
				ret = -EFBIG;
				goto err_free;
			}
			nb = realloc(buf, cap * 2);
			if (!nb) {
				ret = -ENOMEM;
				goto err_free;
			}
			buf = nb;
			cap *= 2;
		}
		r = read(fd, buf + len, cap - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			ret = -errno;
			goto err_free;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	ret = tpo_config_parse(c, buf, len, path, errs);
	free(buf);
	return ret;

err_free:
	free(buf);
err_close:
	close(fd);
err_msg:
	if (errs) {
		errs->n = 1;
		snprintf(errs->msg[0], TPO_CONFIG_ERROR_LEN, "%s: cannot read: %s", path,
			 ret == -EFBIG ? "file larger than 16 MiB" : strerror(-ret));
	}
	return ret;
}

void tpo_config_free(struct tpo_config *c)
{
	(void)c;
}

void tpo_config_errors_print(const struct tpo_config_errors *e, FILE *f, const char *prog)
{
	int i;

	for (i = 0; i < e->n; i++)
		fprintf(f, "%s: config: %s\n", prog, e->msg[i]);
	if (e->dropped)
		fprintf(f, "%s: config: ... and %d more error%s\n", prog, e->dropped,
			e->dropped == 1 ? "" : "s");
}

uint64_t tpo_config_ring_capacity(const struct tpo_config *c, int stage)
{
	uint64_t v;

	switch (stage) {
	case TPO_ST_STREAM:   v = c->stages.stream.ring_capacity; break;
	case TPO_ST_RAG:      v = c->stages.rag.ring_capacity; break;
	case TPO_ST_ASSEMBLE: v = c->stages.assemble.ring_capacity; break;
	case TPO_ST_INFER:    v = c->stages.infer.ring_capacity; break;
	case TPO_ST_POST:     v = c->stages.post.ring_capacity; break;
	default:              return 0;
	}
	return v ? v : c->rings.capacity;
}

int tpo_config_stage_runs(const struct tpo_config *c, int stage)
{
	if (stage != TPO_ST_RAG)
		return 1;
	return c->stages.rag.enabled == TPO_RAG_ON ||
	       (c->stages.rag.enabled == TPO_RAG_AUTO && c->stages.rag.context_file[0]);
}

/* ---- dump ------------------------------------------------------------ */

struct out {
	char *b;
	size_t cap, n;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = vsnprintf(o->n < o->cap ? o->b + o->n : NULL, o->n < o->cap ? o->cap - o->n : 0,
		      fmt, ap);
	va_end(ap);
	if (r > 0)
		o->n += (size_t)r;
}

static void put_str(struct out *o, const char *s)
{
	put(o, "\"");
	o->n += tpo_json_escape(s, strlen(s), o->n < o->cap ? o->b + o->n : NULL,
				o->n < o->cap ? o->cap - o->n : 0);
	put(o, "\"");
}

static void dump_lanes(struct out *o, const void *p)
{
	const struct tpo_lanes_spec *l = p;
	int k;

	if (l->mode == TPO_LANES_COUNT) {
		put(o, "%d", l->count);
	} else if (l->mode == TPO_LANES_LIST) {
		put(o, "[");
		for (k = 0; k < l->ncpus; k++)
			put(o, "%s%d", k ? ", " : "", l->cpus[k]);
		put(o, "]");
	} else {
		put(o, "\"auto\"");
	}
}

static void dump_spin(struct out *o, const void *p)
{
	int64_t v = *(const int64_t *)p;

	if (v < 0)
		put(o, "\"auto\"");
	else
		put(o, "%" PRId64, v);
}

static void dump_rag_enabled(struct out *o, const void *p)
{
	uint32_t v = *(const uint32_t *)p;

	put(o, "%s", v == TPO_RAG_ON ? "true" : v == TPO_RAG_OFF ? "false" : "\"auto\"");
}

static void dump_obj(struct out *o, const struct field *tab, const void *base, int ind);

static void dump_value(struct out *o, const struct field *f, const void *base, int ind)
{
	const char *p = (const char *)base + f->off;
	int k, n;

	switch (f->kind) {
	case K_U32:
		put(o, "%" PRIu32, *(const uint32_t *)p);
		break;
	case K_U64:
	case K_POW2:
	case K_RINGCAP:
		put(o, "%" PRIu64, *(const uint64_t *)p);
		break;
	case K_I64:
		put(o, "%" PRId64, *(const int64_t *)p);
		break;
	case K_ENUM:
		for (k = 0; f->names[k]; k++)
			if ((f->values ? f->values[k] : k) == *(const int *)p)
				break;
		if (f->names[k])
			put_str(o, f->names[k]);
		else
			put(o, "null");   /* unreachable for a parsed config; fails to re-parse */
		break;
	case K_STR:
		put_str(o, p);
		break;
	case K_STRNULL:
	case K_ENVNULL:
		if (*p)
			put_str(o, p);
		else
			put(o, "null");
		break;
	case K_STRARR:
		n = *(const int *)((const char *)base + f->off_n);
		put(o, "[");
		for (k = 0; k < n; k++) {
			put(o, "%s", k ? ", " : "");
			put_str(o, p + f->cap * (size_t)k);
		}
		put(o, "]");
		break;
	case K_OBJ:
		dump_obj(o, f->sub, p, ind + 1);
		break;
	case K_OBJARR:
		n = *(const int *)((const char *)base + f->off_n);
		put(o, "[");
		for (k = 0; k < n; k++) {
			put(o, "%s\n%*s", k ? "," : "", 2 * (ind + 2), "");
			dump_obj(o, f->sub, p + f->cap * (size_t)k, ind + 2);
		}
		if (n)
			put(o, "\n%*s", 2 * (ind + 1), "");
		put(o, "]");
		break;
	case K_CUSTOM:
		f->dump(o, p);
		break;
	}
}

static void dump_obj(struct out *o, const struct field *tab, const void *base, int ind)
{
	int k;

	put(o, "{");
	for (k = 0; tab[k].key; k++) {
		put(o, "%s\n%*s\"%s\": ", k ? "," : "", 2 * (ind + 1), "", tab[k].key);
		dump_value(o, &tab[k], base, ind);
	}
	put(o, "\n%*s}", 2 * ind, "");
}

int tpo_config_dump(const struct tpo_config *c, char *buf, size_t cap)
{
	struct out o = { buf, cap, 0 };

	dump_obj(&o, top_tab, c, 0);
	put(&o, "\n");
	if (o.n >= cap) {
		if (cap)
			buf[0] = '\0';
		return -ENOSPC;
	}
	return (int)o.n;
}
