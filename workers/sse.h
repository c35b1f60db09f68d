/*
 * sse.h — an incremental parser for Server-Sent Events (the WHATWG
 * "text/event-stream" format) shared by every HTTP model worker.
 *
 * Feed it the response body in pieces of any size, split at any byte: a line
 * may end in LF, CRLF or a lone CR (a CRLF split across two feeds counts
 * once). "data:" lines of one event are joined with "\n"; "event:" names the
 * event; lines starting with ':' are comments; "id:" and "retry:" are
 * ignored; a blank line dispatches the event (if it has data or a name). One
 * space after the colon is dropped. A partial event at the end of the stream
 * is dropped, as the standard says.
 *
 * Not thread-safe; one parser per stream. The parser owns its buffers
 * (tpo_sse_fini frees them).
 */
#ifndef TPO_SSE_H
#define TPO_SSE_H

#include <stddef.h>

#define TPO_SSE_LINE_MAX (4u << 20)   /* longest line or event data, bytes */

/*
 * One event: name ("message" when the stream gave none), data NUL-terminated
 * with its length. Returns 0 to go on, or a negative value that stops the
 * feed and is returned by tpo_sse_feed.
 */
typedef int tpo_sse_event_fn(void *arg, const char *event, const char *data, size_t len);

struct tpo_sse {
	tpo_sse_event_fn *fn;
	void *arg;
	char *line;            /* the current, unfinished line */
	size_t line_len, line_cap;
	char *data;            /* data of the current event */
	size_t data_len, data_cap;
	int has_data;
	char event[64];
	int cr;                /* the last byte fed was a CR */
	size_t max;            /* line/data limit */
};

void tpo_sse_init(struct tpo_sse *p, tpo_sse_event_fn *fn, void *arg);
/* tpo_sse_init keeping the buffers p has (p initialised, or zeroed). */
void tpo_sse_rearm(struct tpo_sse *p, tpo_sse_event_fn *fn, void *arg);
/* Forgets any partial line or event (a new response on the same parser). */
void tpo_sse_reset(struct tpo_sse *p);
void tpo_sse_fini(struct tpo_sse *p);

/*
 * Parses buf[0..len). Returns 0, the callback's negative value, -E2BIG when a
 * line or an event's data exceeds TPO_SSE_LINE_MAX, or -ENOMEM.
 */
int tpo_sse_feed(struct tpo_sse *p, const char *buf, size_t len);

#endif
