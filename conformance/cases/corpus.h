/*
 * corpus.h: what every case of the conformance corpus shares. A case is
 * run as CASE DIR: it sets up one kind of kernel state, says "ready"
 * (DIR/ready), waits for "go" (DIR/go, made by the test once the tree has
 * been checkpointed and restored), checks that the state survived, and
 * writes its verdict to DIR/result: "ok", or what differed, one line per
 * difference. It exits 0 if all was well.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *corpus_dir;
static char corpus_failures[8192];
static int corpus_failed;

/* corpus_write writes text to DIR/name, atomically (through a rename). */
static void corpus_write(const char *name, const char *text)
{
	char tmp[4096], path[4096];
	snprintf(tmp, sizeof(tmp), "%s/.%s.%d", corpus_dir, name, getpid());
	snprintf(path, sizeof(path), "%s/%s", corpus_dir, name);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		_exit(3);
	if (write(fd, text, strlen(text)) < 0)
		_exit(3);
	close(fd);
	rename(tmp, path);
}

/* corpus_path is DIR/name, in a static buffer. */
static const char *corpus_path(const char *name)
{
	static char path[4096];
	snprintf(path, sizeof(path), "%s/%s", corpus_dir, name);
	return path;
}

static void corpus_init(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s DIR\n", argv[0]);
		exit(2);
	}
	corpus_dir = argv[1];
}

/* sleep_ms sleeps, through any signal. */
static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* exists says whether DIR/name exists. */
static int exists(const char *name)
{
	return access(corpus_path(name), F_OK) == 0;
}

/* read_line reads the first line of DIR/name into buf (left as it was if
 * there is no such file). */
static void read_line(const char *name, char *buf, int size)
{
	FILE *f = fopen(corpus_path(name), "r");
	if (f) {
		if (!fgets(buf, size, f))
			buf[0] = 0;
		fclose(f);
	}
}

/* fail records one difference. */
static void fail(const char *fmt, ...)
{
	va_list ap;
	size_t n = strlen(corpus_failures);
	va_start(ap, fmt);
	vsnprintf(corpus_failures + n, sizeof(corpus_failures) - n, fmt, ap);
	va_end(ap);
	n = strlen(corpus_failures);
	if (n + 1 < sizeof(corpus_failures)) {
		corpus_failures[n] = '\n';
		corpus_failures[n + 1] = 0;
	}
	corpus_failed = 1;
}

#define CHECK(cond, ...)                    \
	do {                                \
		if (!(cond))                \
			fail(__VA_ARGS__);  \
	} while (0)

/* die gives up before the state could be set up: a broken case. */
#define die(...)                                           \
	do {                                               \
		char _m[512];                              \
		snprintf(_m, sizeof(_m), "setup: " __VA_ARGS__); \
		fail("%s: %s", _m, strerror(errno));       \
		corpus_write("result", corpus_failures);   \
		exit(1);                                   \
	} while (0)

/* map maps anonymous memory, or gives up. */
static void *map(size_t len, int prot, int flags)
{
	void *p = mmap(NULL, len, prot, flags, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

static void ready(void) { corpus_write("ready", "ready\n"); }

/* wait_go waits (polling, so as to set up no state of its own) for go. */
static void wait_go(void)
{
	while (!exists("go"))
		sleep_ms(10);
}

/* finish writes the verdict and exits. */
static void finish(void)
{
	corpus_write("result", corpus_failed ? corpus_failures : "ok\n");
	exit(corpus_failed);
}
