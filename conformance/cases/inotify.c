/*
 * An inotify watch on DIR/watched (creations and deletions): a file created
 * and deleted there after the move is reported, with the watch's
 * descriptor and the file's name, and nothing else is. An event queued
 * before the move and not read may be reported once, or not at all: CRIU
 * 4.2.1 restores the watches, not the queue of events.
 */
#include "corpus.h"
#include <poll.h>
#include <sys/inotify.h>

/* next waits (up to ms) for the next event on fd and returns it, or NULL. */
static struct inotify_event *next(int fd, int ms)
{
	static char buf[8192] __attribute__((aligned(8)));
	static ssize_t len, off;
	for (;;) {
		while (off < len) {
			struct inotify_event *e = (struct inotify_event *)(buf + off);
			off += sizeof(*e) + e->len;
			return e;
		}
		struct pollfd p = { fd, POLLIN, 0 };
		if (poll(&p, 1, ms) != 1)
			return NULL;
		len = read(fd, buf, sizeof(buf));
		off = 0;
		if (len <= 0)
			return NULL;
	}
}

/* in is DIR/watched/name (DIR/watched for ""), in a static buffer. */
static const char *in(const char *name)
{
	static char path[4096];
	snprintf(path, sizeof(path), "%s/watched%s%s", corpus_dir, *name ? "/" : "", name);
	return path;
}

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	if (mkdir(in(""), 0755) < 0)
		die("mkdir");
	int fd = inotify_init1(IN_NONBLOCK);
	if (fd < 0)
		die("inotify_init1");
	int wd = inotify_add_watch(fd, in(""), IN_CREATE | IN_DELETE);
	if (wd < 0)
		die("inotify_add_watch");
	close(open(in("before"), O_CREAT | O_WRONLY, 0644));
	ready();
	wait_go();
	/* What inotify queued before the move, if anything is left of it. */
	int before = 0;
	struct inotify_event *e;
	while ((e = next(fd, 0)) != NULL) {
		if (e->len && strcmp(e->name, "before") == 0 && e->wd == wd && (e->mask & IN_CREATE))
			before++;
		else
			fail("an event not caused: wd %d mask %#x name \"%s\"", e->wd, e->mask, e->len ? e->name : "");
	}
	CHECK(before <= 1, "the creation of \"before\" was reported %d times after the move", before);
	close(open(in("after"), O_CREAT | O_WRONLY, 0644));
	unlink(in("after"));
	e = next(fd, 10000);
	if (!e)
		fail("the creation of a file in DIR/watched after the move is not reported");
	else
		CHECK(e->wd == wd && e->mask == IN_CREATE && e->len && strcmp(e->name, "after") == 0,
		      "the creation of DIR/watched/after is reported as wd %d mask %#x name \"%s\", not wd %d mask %#x",
		      e->wd, e->mask, e->len ? e->name : "", wd, IN_CREATE);
	e = next(fd, 10000);
	if (!e)
		fail("the deletion of a file in DIR/watched after the move is not reported");
	else
		CHECK(e->wd == wd && e->mask == IN_DELETE && e->len && strcmp(e->name, "after") == 0,
		      "the deletion of DIR/watched/after is reported as wd %d mask %#x name \"%s\", not wd %d mask %#x",
		      e->wd, e->mask, e->len ? e->name : "", wd, IN_DELETE);
	/* Only what was asked for: an open is not reported. */
	close(open(in("before"), O_RDONLY));
	e = next(fd, 100);
	CHECK(e == NULL, "an event not asked for is reported: mask %#x", e ? e->mask : 0);
	finish();
}
