/*
 * tpo-top — live view of a tpo instance, read-only from its stats segment.
 *
 * Interactive (ncurses) by default; `--once` prints one plain table and
 * `--json` one JSON object per refresh. The data model (snapshots, rates,
 * ordering, plain outputs) is stagebin/topdata.c. Exit codes: 0 ok (also
 * when the instance stops), 64 usage, 111 cannot attach (no instance,
 * unknown layout version, mapping error).
 */
#include <curses.h>
#include <errno.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "shm/seg.h"
#include "shm/stats.h"
#include "stagebin/topdata.h"

#define EX_OK       0
#define EX_USAGE    64
#define EX_SYSTEM   111

static const char usage[] =
	"usage: tpo-top [--name NAME] [-d SECONDS] [--once | --json [--count N]]\n"
	"  --name NAME    instance to watch (default \"default\")\n"
	"  -d SECONDS     refresh interval, may be fractional (default 1)\n"
	"  --once         print one plain-text table (rates over one interval) and exit\n"
	"  --json         print one JSON object per refresh, one per line\n"
	"  --count N      with --json: stop after N objects (default: until stopped)\n"
	"keys: q quit, s cycle sort column, l cycle lane filter, p pause, h help\n";

static volatile sig_atomic_t quit_sig;

static void on_signal(int sig)
{
	quit_sig = sig;
}

struct top {
	const char *name;
	struct tpo_stats st;
	char path[TPO_SEG_PATH_MAX + 16];
	ino_t ino;
	double interval;
	struct tpo_top_snap *cur, *prev;
	enum tpo_top_sort sort;
	int lane;               /* -1: all lanes */
	int paused, help;
};

/* The instance is gone once its supervisor is dead or its stats segment was
 * unlinked or replaced (a new instance of the same name). */
static int instance_alive(struct top *t)
{
	struct stat sb;

	if (stat(t->path, &sb) < 0 || sb.st_ino != t->ino)
		return 0;
	/* Its supervisor's lock, not its pid (which may name another process
	 * by now). */
	return tpo_seg_owner_alive(t->name, "stats") != 0;
}

static int attach(struct top *t)
{
	struct stat sb;
	uint32_t found = 0;
	int err;

	err = tpo_stats_attach(&t->st, t->name, 0);
	if (err == -EPROTONOSUPPORT) {
		struct tpo_seg seg;

		if (tpo_seg_attach(&seg, t->name, "stats", TPO_SEG_STATS, TPO_STATS_VERSION,
				   0, &found) == 0)
			tpo_seg_close(&seg);
		fprintf(stderr, "tpo-top: instance %s: stats layout version %u is not supported "
			"(this tpo-top reads version %u); use the tpo-top built with that "
			"supervisor\n", t->name, found, TPO_STATS_VERSION);
		return -1;
	}
	if (err == -ENOENT) {
		fprintf(stderr, "tpo-top: no instance \"%s\" (no /dev/shm/tpo.%s.stats): "
			"is tpo-supervisor running?\n", t->name, t->name);
		return -1;
	}
	if (err < 0) {
		fprintf(stderr, "tpo-top: unable to attach /tpo.%s.stats: %s\n", t->name,
			tpo_seg_strerror(err));
		return -1;
	}
	snprintf(t->path, sizeof(t->path), "/dev/shm%s", t->st.seg.path);
	if (stat(t->path, &sb) == 0)
		t->ino = sb.st_ino;
	return 0;
}

static void sleep_s(double s)
{
	struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !quit_sig)
		;
}

/* Rotates t->cur into t->prev and takes a new t->cur. 0, or -EAGAIN if
 * the instance header stayed busy (then the last snapshot stays current). */
static int sample(struct top *t)
{
	struct tpo_top_snap *tmp = t->prev;
	int err;

	t->prev = t->cur;
	t->cur = tmp;
	err = tpo_top_take(&t->st, t->prev->mono_ns ? t->prev : NULL, t->cur);
	if (err < 0) {
		t->cur = t->prev;
		t->prev = tmp;
	}
	return err;
}

static int stopped(struct top *t)
{
	fprintf(stderr, "tpo-top: instance %s stopped\n", t->name);
	return EX_OK;
}

static int run_plain(struct top *t, int json, long count)
{
	sample(t);
	for (long n = 0; (count <= 0 || n < count) && !quit_sig; n++) {
		sleep_s(t->interval);
		if (quit_sig)
			break;
		if (!instance_alive(t))
			return stopped(t);
		sample(t);
		if (json)
			tpo_top_print_json(stdout, t->cur);
		else
			tpo_top_print_table(stdout, t->cur, t->sort, t->lane);
		fflush(stdout);
		if (!json)
			break;
	}
	return EX_OK;
}

/* ---- the screen -------------------------------------------------------- */

enum { C_RUN = 1, C_WARN, C_BAD, C_HALF, C_DIM, C_HEAD, C_QLOW, C_QMID, C_QHIGH };

enum col { COL_STAGE, COL_LN, COL_PID, COL_STATE, COL_RST, COL_QUEUE, COL_IN, COL_OUT,
	   COL_P50, COL_P95, COL_P99, COL_QW99, COL_TTFT, COL_INFL, NCOLS };

static const struct {
	const char *head;
	int width, left, drop;  /* drop: order in which narrow screens lose it */
	int sort;               /* enum tpo_top_sort it shows, or -1 */
} cols[NCOLS] = {
	[COL_STAGE] = { "STAGE", 8, 1, 0, TPO_TOP_SORT_UNIT },
	[COL_LN]    = { "LN", 2, 0, 0, -1 },
	[COL_PID]   = { "PID", 7, 0, 0, -1 },
	[COL_STATE] = { "STATE", 9, 1, 0, -1 },
	[COL_RST]   = { "RST", 3, 0, 0, TPO_TOP_SORT_RESTARTS },
	[COL_QUEUE] = { "QUEUE", 10, 1, 0, TPO_TOP_SORT_QUEUE },
	[COL_IN]    = { "IN/s", 5, 0, 0, TPO_TOP_SORT_IN },
	[COL_OUT]   = { "OUT/s", 5, 0, 0, TPO_TOP_SORT_OUT },
	[COL_P50]   = { "P50", 5, 0, 2, -1 },
	[COL_P95]   = { "P95", 5, 0, 1, -1 },
	[COL_P99]   = { "P99", 5, 0, 0, TPO_TOP_SORT_P99 },
	[COL_QW99]  = { "QW99", 5, 0, 3, -1 },
	[COL_TTFT]  = { "TTFT99", 6, 0, 5, -1 },
	[COL_INFL]  = { "INFL", 4, 0, 4, -1 },
};

/* Which columns fit in width: drop by increasing `drop` rank until they do. */
static void fit_columns(int width, int *shown)
{
	int total = 0;

	for (int c = 0; c < NCOLS; c++) {
		shown[c] = 1;
		total += cols[c].width + (c ? 1 : 0);
	}
	for (int rank = 1; total > width && rank <= 5; rank++)
		for (int c = 0; c < NCOLS; c++)
			if (cols[c].drop == rank && shown[c]) {
				shown[c] = 0;
				total -= cols[c].width + 1;
			}
}

static int state_color(const struct tpo_top_unit *u)
{
	if (!u->ok)
		return C_DIM;
	switch (u->p.state) {
	case TPO_UNIT_RUNNING:   return C_RUN;
	case TPO_UNIT_BACKOFF:   return C_WARN;
	case TPO_UNIT_OPEN:      return C_BAD;
	case TPO_UNIT_HALF_OPEN: return C_HALF;
	case TPO_UNIT_FAILED:    return C_BAD;
	default:                 return C_DIM;
	}
}

/* The queue column: "depth/cap" over a bar whose filled part is reverse
 * video, coloured by how full the input rings are. */
static void draw_queue(int y, int x, int w, const struct tpo_top_unit *u)
{
	char a[16], b[16], txt[32];
	int fill = 0, color;
	double frac = u->q_cap ? (double)u->q_depth / (double)u->q_cap : 0;

	if (u->q_depth)
		fill = (int)(frac * w + 0.999);
	if (fill > w)
		fill = w;
	color = frac < 0.5 ? C_QLOW : frac < 0.9 ? C_QMID : C_QHIGH;
	snprintf(txt, sizeof(txt), "%s/%s", tpo_top_fmt_bytes(a, sizeof(a), u->q_depth),
		 tpo_top_fmt_bytes(b, sizeof(b), u->q_cap));
	for (int i = 0; i < w; i++) {
		char ch = i < (int)strlen(txt) ? txt[i] : ' ';
		attr_t at = i < fill ? (A_REVERSE | COLOR_PAIR(color)) : A_NORMAL;

		attron(at);
		mvaddch(y, x + i, (chtype)(unsigned char)ch);
		attroff(at);
	}
}

static void draw_help(int rows, int width)
{
	static const char *lines[] = {
		"tpo-top keys",
		"",
		"  q      quit",
		"  s      cycle the sort column (stage, restarts, queue, in/s, out/s, p99)",
		"  l      cycle the lane filter (all, 0, 1, ...)",
		"  p      pause / resume refreshing",
		"  h      this help (any key closes it)",
		"",
		"QUEUE  bytes queued / capacity of the stage's input rings",
		"P50..P99  service time since start; QW99 queue wait p99",
		"TTFT99, INFL  infer: time to first token p99, requests in flight",
		"narrow screens hide P95, P50, QW99, INFL, TTFT99 in that order",
	};
	int n = (int)(sizeof(lines) / sizeof(lines[0]));

	for (int i = 0; i < n && 3 + i < rows; i++) {
		move(3 + i, 0);
		clrtoeol();
		mvaddnstr(3 + i, 1, lines[i], width - 2);
	}
}

static void draw(struct top *t)
{
	const struct tpo_top_snap *s = t->cur;
	int rows, width, shown[NCOLS], idx[TPO_NSTAGES * TPO_MAX_LANES], n, y, x;
	int ep_lines, room;
	char a[16], b[16], c[16], d[16], e[16], line[512], lanebuf[16];
	uint64_t up = s->real_ns > s->info.start_ns ?
		(s->real_ns - s->info.start_ns) / 1000000000ull : 0;

	getmaxyx(stdscr, rows, width);
	erase();
	snprintf(line, sizeof(line), "tpo-top  instance %s  up %llud %02llu:%02llu:%02llu  "
		 "lanes %u  supervisor %d%s%s", s->info.name,
		 (unsigned long long)(up / 86400), (unsigned long long)(up / 3600 % 24),
		 (unsigned long long)(up / 60 % 60), (unsigned long long)(up % 60), s->nlanes,
		 s->info.sup_pid, s->info.draining ? "  DRAINING" : "",
		 t->paused ? "  PAUSED" : "");
	attron(A_BOLD);
	mvaddnstr(0, 0, line, width);
	attroff(A_BOLD);
	snprintf(line, sizeof(line), "req/s in %s out %s  tok/s %s  sheds/s %s  err/s %s  "
		 "restarts %llu", tpo_top_fmt_rate(a, sizeof(a), s->in_s),
		 tpo_top_fmt_rate(b, sizeof(b), s->out_s), tpo_top_fmt_rate(c, sizeof(c), s->tokens_s),
		 tpo_top_fmt_rate(d, sizeof(d), s->sheds_s), tpo_top_fmt_rate(e, sizeof(e), s->errors_s),
		 (unsigned long long)s->restarts);
	mvaddnstr(1, 0, line, width);
	if (t->lane < 0)
		snprintf(lanebuf, sizeof(lanebuf), "all");
	else
		snprintf(lanebuf, sizeof(lanebuf), "%d", t->lane);
	snprintf(line, sizeof(line), "sort: %s  lane: %s  every %gs  (h help, q quit)",
		 tpo_top_sort_name(t->sort), lanebuf, t->interval);
	mvaddnstr(2, 0, line, width);
	if (t->help) {
		draw_help(rows, width);
		refresh();
		return;
	}

	fit_columns(width, shown);
	x = 0;
	attron(A_REVERSE | A_BOLD);
	mvhline(3, 0, ' ', width);
	for (int col = 0; col < NCOLS; col++) {
		if (!shown[col])
			continue;
		if (x + cols[col].width > width)
			break;
		if (cols[col].sort == (int)t->sort)
			attron(A_UNDERLINE);
		snprintf(line, sizeof(line), cols[col].left ? "%-*s" : "%*s", cols[col].width,
			 cols[col].head);
		mvaddnstr(3, x, line, width - x);
		attroff(A_UNDERLINE);
		x += cols[col].width + 1;
	}
	attroff(A_REVERSE | A_BOLD);

	ep_lines = 1 + (s->nep ? (int)s->nep + 1 : 1);
	room = rows - 4 - ep_lines;
	if (room < 1)
		room = rows - 4;
	n = tpo_top_order(s, t->sort, t->lane, idx);
	y = 4;
	for (int i = 0; i < n && y < 4 + room; i++, y++) {
		const struct tpo_top_unit *u = &s->unit[idx[i] / TPO_MAX_LANES][idx[i] % TPO_MAX_LANES];
		int infer = u->stage == TPO_STAGE_INFER;

		if (i == room - 1 && n > room) {
			snprintf(line, sizeof(line), "... %d more rows (l filters a lane)", n - i);
			mvaddnstr(y, 0, line, width);
			y++;
			break;
		}
		x = 0;
		for (int col = 0; col < NCOLS; col++) {
			const char *v = line;
			int w = cols[col].width, attr = 0;

			if (!shown[col])
				continue;
			if (x + w > width)
				break;
			switch (col) {
			case COL_STAGE: v = tpo_stats_stage_name((int)u->stage); break;
			case COL_LN:    snprintf(line, sizeof(line), "%u", u->lane); break;
			case COL_PID:   /* "-": no process (rag "off", or between restarts) */
				if (u->ok && u->p.pid > 0)
					snprintf(line, sizeof(line), "%d", u->p.pid);
				else
					v = "-";
				break;
			case COL_STATE:
				snprintf(line, sizeof(line), "%s%s",
					 u->ok ? tpo_unit_state_name((int)u->p.state) : "?",
					 u->stale ? "*" : "");
				attr = COLOR_PAIR(state_color(u)) |
				       (u->ok && u->p.state == TPO_UNIT_FAILED ? A_BOLD : 0);
				break;
			case COL_RST:   snprintf(line, sizeof(line), "%u", u->ok ? u->p.restarts : 0); break;
			case COL_QUEUE: draw_queue(y, x, w, u); x += w + 1; continue;
			case COL_IN:    tpo_top_fmt_rate(line, sizeof(line), u->in_s); break;
			case COL_OUT:   tpo_top_fmt_rate(line, sizeof(line), u->out_s); break;
			case COL_P50:   tpo_top_fmt_ns(line, sizeof(line), u->svc_p50); break;
			case COL_P95:   tpo_top_fmt_ns(line, sizeof(line), u->svc_p95); break;
			case COL_P99:   tpo_top_fmt_ns(line, sizeof(line), u->svc_p99); break;
			case COL_QW99:  tpo_top_fmt_ns(line, sizeof(line), u->qwait_p99); break;
			case COL_TTFT:
				if (infer)
					tpo_top_fmt_ns(line, sizeof(line), u->ttft_p99);
				else
					v = "";
				break;
			case COL_INFL:
				if (infer)
					snprintf(line, sizeof(line), "%lld",
						 (long long)(u->ok ? u->p.in_flight : 0));
				else
					v = "";
				break;
			}
			{
				char cell[64];

				snprintf(cell, sizeof(cell), cols[col].left ? "%-*.*s" : "%*.*s", w, w, v);
				attron(attr);
				mvaddnstr(y, x, cell, width - x);
				attroff(attr);
			}
			x += w + 1;
		}
	}

	y++;
	if (y >= rows)
		goto out;
	if (!s->nep) {
		attron(COLOR_PAIR(C_DIM));
		mvaddnstr(y, 0, "no upstream endpoints (mock worker)", width);
		attroff(COLOR_PAIR(C_DIM));
		goto out;
	}
	attron(A_REVERSE | A_BOLD);
	mvhline(y, 0, ' ', width);
	snprintf(line, sizeof(line), "%-4s %-3s %-28s %-9s %5s %9s %7s", "LANE", "EP",
		 "UPSTREAM", "STATE", "INFL", "REQUESTS", "ERRORS");
	mvaddnstr(y, 0, line, width);
	attroff(A_REVERSE | A_BOLD);
	for (uint32_t i = 0; i < s->nep && ++y < rows; i++) {
		const struct tpo_ep_snapshot *ep = &s->ep[i];
		int color = ep->state == TPO_EP_CLOSED ? C_RUN :
			    ep->state == TPO_EP_OPEN ? C_BAD : C_HALF;

		snprintf(line, sizeof(line), "%4u %3u %-28.28s ", ep->lane, ep->index,
			 ep->name[0] ? ep->name : ep->url);
		mvaddnstr(y, 0, line, width);
		attron(COLOR_PAIR(color));
		snprintf(line, sizeof(line), "%-9s", tpo_ep_state_name((int)ep->state));
		mvaddnstr(y, 38, line, width - 38 > 0 ? width - 38 : 0);
		attroff(COLOR_PAIR(color));
		snprintf(line, sizeof(line), " %5lld %9llu %7llu", (long long)ep->in_flight,
			 (unsigned long long)ep->requests, (unsigned long long)ep->errors);
		mvaddnstr(y, 47, line, width - 47 > 0 ? width - 47 : 0);
	}
out:
	refresh();
}

static void screen_init(void)
{
	initscr();
	cbreak();
	noecho();
	keypad(stdscr, TRUE);
	curs_set(0);
	if (has_colors()) {
		start_color();
		use_default_colors();
		init_pair(C_RUN, COLOR_GREEN, -1);
		init_pair(C_WARN, COLOR_YELLOW, -1);
		init_pair(C_BAD, COLOR_RED, -1);
		init_pair(C_HALF, COLOR_MAGENTA, -1);
		init_pair(C_DIM, COLOR_BLUE, -1);
		init_pair(C_HEAD, COLOR_CYAN, -1);
		init_pair(C_QLOW, COLOR_GREEN, -1);
		init_pair(C_QMID, COLOR_YELLOW, -1);
		init_pair(C_QHIGH, COLOR_RED, -1);
	}
}

static int run_screen(struct top *t)
{
	struct timespec now;
	double next, left;
	int gone = 0;

	screen_init();
	sample(t);
	draw(t);
	clock_gettime(CLOCK_MONOTONIC, &now);
	next = (double)now.tv_sec + (double)now.tv_nsec / 1e9 + t->interval;
	while (!quit_sig) {
		int ch;

		clock_gettime(CLOCK_MONOTONIC, &now);
		left = next - ((double)now.tv_sec + (double)now.tv_nsec / 1e9);
		timeout(left > 0 ? (int)(left * 1000) + 1 : 0);
		ch = getch();
		if (ch == ERR) {
			clock_gettime(CLOCK_MONOTONIC, &now);
			if ((double)now.tv_sec + (double)now.tv_nsec / 1e9 < next)
				continue;
			next += t->interval;
			if ((double)now.tv_sec + (double)now.tv_nsec / 1e9 > next)
				next = (double)now.tv_sec + (double)now.tv_nsec / 1e9 + t->interval;
			if (!instance_alive(t)) {
				gone = 1;
				break;
			}
			if (!t->paused)
				sample(t);
			draw(t);
			continue;
		}
		if (t->help && ch != KEY_RESIZE) {
			t->help = 0;
			draw(t);
			continue;
		}
		switch (ch) {
		case 'q': case 'Q':
			quit_sig = -1;
			break;
		case 's':
			t->sort = (enum tpo_top_sort)((t->sort + 1) % TPO_TOP_NSORT);
			break;
		case 'S':
			t->sort = (enum tpo_top_sort)((t->sort + TPO_TOP_NSORT - 1) % TPO_TOP_NSORT);
			break;
		case 'l':
			t->lane = t->lane + 1 >= (int)t->cur->nlanes ? -1 : t->lane + 1;
			break;
		case 'p': case ' ':
			t->paused = !t->paused;
			break;
		case 'h': case '?':
			t->help = 1;
			break;
		case KEY_RESIZE:
		default:
			break;
		}
		draw(t);
	}
	if (gone) {
		int rows, width;

		getmaxyx(stdscr, rows, width);
		attron(A_REVERSE | A_BOLD);
		mvaddnstr(rows / 2, width > 30 ? width / 2 - 15 : 0,
			  "  instance stopped            ", width);
		attroff(A_REVERSE | A_BOLD);
		refresh();
		napms(1500);
	}
	endwin();
	if (gone)
		return stopped(t);
	return EX_OK;
}

int main(int argc, char **argv)
{
	struct top t = { .name = "default", .interval = 1.0, .lane = -1 };
	struct sigaction sa = { .sa_handler = on_signal };
	int once = 0, json = 0, rc;
	long count = 0;

	setlocale(LC_ALL, "");
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		char *end;

		if (!strcmp(a, "--name") || !strcmp(a, "-n")) {
			if (++i >= argc)
				goto usage_err;
			t.name = argv[i];
		} else if (!strncmp(a, "--name=", 7)) {
			t.name = a + 7;
		} else if (!strcmp(a, "-d") || !strcmp(a, "--delay")) {
			if (++i >= argc)
				goto usage_err;
			t.interval = strtod(argv[i], &end);
			if (*end || !(t.interval >= 0.05 && t.interval <= 3600))
				goto usage_err;
		} else if (!strcmp(a, "--once")) {
			once = 1;
		} else if (!strcmp(a, "--json")) {
			json = 1;
		} else if (!strcmp(a, "--count")) {
			if (++i >= argc)
				goto usage_err;
			count = strtol(argv[i], &end, 10);
			if (*end || count < 1)
				goto usage_err;
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			fputs(usage, stdout);
			return EX_OK;
		} else {
			goto usage_err;
		}
	}
	if (once && json)
		goto usage_err;
	if (tpo_seg_name_ok(t.name) < 0) {
		fprintf(stderr, "tpo-top: bad instance name \"%s\"\n", t.name);
		return EX_USAGE;
	}
	if (!once && !json && (!isatty(STDOUT_FILENO) || !isatty(STDIN_FILENO))) {
		fprintf(stderr, "tpo-top: not a terminal: use --once or --json\n");
		return EX_USAGE;
	}

	t.cur = calloc(1, sizeof(*t.cur));
	t.prev = calloc(1, sizeof(*t.prev));
	if (!t.cur || !t.prev) {
		fprintf(stderr, "tpo-top: out of memory\n");
		rc = EX_SYSTEM;
		goto out_free;
	}
	if (attach(&t) < 0) {
		rc = EX_SYSTEM;
		goto out_free;
	}
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	if (once || json)
		rc = run_plain(&t, json, once ? 1 : count);
	else
		rc = run_screen(&t);
	tpo_stats_close(&t.st);
out_free:
	free(t.cur);
	free(t.prev);
	return rc;

usage_err:
	fputs(usage, stderr);
	return EX_USAGE;
}
