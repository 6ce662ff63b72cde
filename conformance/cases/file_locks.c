/*
 * Locks on files in DIR: a flock (LOCK_EX) on DIR/flock, a POSIX write
 * lock (F_SETLK) on bytes 0-99 of DIR/posix, an OFD read lock
 * (F_OFD_SETLK) on bytes 10-19 of DIR/ofd. After the move each is still
 * held, by the same holder, on the same range: another open file
 * description is refused the flock; a child sees the POSIX lock as its
 * parent's (F_GETLK); another open file description sees the OFD lock
 * (F_OFD_GETLK). Released, each is free.
 *
 * criu-opts: file_locks
 * phaul-own: a destination that sees the same files (one kernel and one filesystem, as the two hosts here share) would wait for ever for the locks the frozen source keeps until the commit; a destination with files of its own at those paths takes the locks
 * phaul-refuses: files
 */
#include "corpus.h"
#include <sys/file.h>

static int open_in(const char *name, int flags)
{
	int fd = open(corpus_path(name), flags | O_CREAT, 0644);
	if (fd < 0)
		die("open %s", name);
	return fd;
}

/* getlk asks (cmd F_GETLK or F_OFD_GETLK) what a lock of type on
 * [start, start+len) of fd would conflict with. */
static struct flock getlk(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	if (fcntl(fd, cmd, &fl) < 0)
		fl.l_type = -1;
	return fl;
}

/* posix_seen is what a child, through an open of its own, sees of the POSIX
 * lock on DIR/posix (held by holder, or by none if holder is 0): "ok" or
 * what differed. */
static void posix_seen(char *out, size_t size, pid_t holder)
{
	int fd = open(corpus_path("posix"), O_RDWR);
	if (fd < 0) {
		snprintf(out, size, "the child cannot open DIR/posix: %s", strerror(errno));
		return;
	}
	struct flock fl = getlk(fd, F_GETLK, F_WRLCK, 0, 0);
	struct flock past = getlk(fd, F_GETLK, F_WRLCK, 100, 0);
	if (!holder && fl.l_type != F_UNLCK)
		snprintf(out, size, "DIR/posix is still locked once its holder unlocked it (type %d bytes %lld+%lld by %d)",
			 fl.l_type, (long long)fl.l_start, (long long)fl.l_len, fl.l_pid);
	else if (!holder)
		snprintf(out, size, "ok");
	else if (fl.l_type != F_WRLCK || fl.l_start != 0 || fl.l_len != 100 || fl.l_pid != holder)
		snprintf(out, size, "the POSIX lock on DIR/posix is type %d bytes %lld+%lld held by %d, not a write lock on 0+100 held by %d",
			 fl.l_type, (long long)fl.l_start, (long long)fl.l_len, fl.l_pid, holder);
	else if (past.l_type != F_UNLCK)
		snprintf(out, size, "DIR/posix is locked past byte 99 (type %d from %lld)", past.l_type, (long long)past.l_start);
	else
		snprintf(out, size, "ok");
	close(fd);
}

/* child_sees runs posix_seen in a child and returns what it said. */
static const char *child_sees(int held)
{
	static char buf[512];
	int p[2];
	if (pipe(p) < 0)
		return "pipe failed";
	pid_t parent = getpid(), kid = fork();
	if (kid == 0) {
		char out[512];
		posix_seen(out, sizeof(out), held ? parent : 0);
		write(p[1], out, strlen(out));
		_exit(0);
	}
	close(p[1]);
	memset(buf, 0, sizeof(buf));
	if (kid < 0 || read(p[0], buf, sizeof(buf) - 1) <= 0)
		snprintf(buf, sizeof(buf), "no answer from the child");
	close(p[0]);
	waitpid(kid, NULL, 0);
	return buf;
}

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	int ffd = open_in("flock", O_RDWR);
	if (flock(ffd, LOCK_EX | LOCK_NB) < 0)
		die("flock");
	int pfd = open_in("posix", O_RDWR);
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100 };
	if (fcntl(pfd, F_SETLK, &fl) < 0)
		die("F_SETLK");
	int ofd = open_in("ofd", O_RDWR);
	fl = (struct flock){ .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 10 };
	if (fcntl(ofd, F_OFD_SETLK, &fl) < 0)
		die("F_OFD_SETLK");
	ready();
	wait_go();

	/* flock: another open file description of DIR/flock is refused it. */
	int other = open(corpus_path("flock"), O_RDWR);
	CHECK(flock(other, LOCK_SH | LOCK_NB) < 0 && errno == EWOULDBLOCK,
	      "a second open of DIR/flock gets a shared flock: the exclusive one is gone");
	flock(ffd, LOCK_UN);
	CHECK(flock(other, LOCK_EX | LOCK_NB) == 0, "DIR/flock stays locked once its holder unlocked it: %s", strerror(errno));
	close(other);

	/* POSIX: a child sees its parent's lock, on its range. */
	const char *seen = child_sees(1);
	CHECK(strcmp(seen, "ok") == 0, "%s", seen);
	fl = (struct flock){ .l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100 };
	fcntl(pfd, F_SETLK, &fl);
	seen = child_sees(0);
	CHECK(strcmp(seen, "ok") == 0, "%s", seen);

	/* OFD: another open file description sees the read lock, on its range;
	 * a read lock does not conflict with it. */
	other = open(corpus_path("ofd"), O_RDWR);
	struct flock w = getlk(other, F_OFD_GETLK, F_WRLCK, 0, 0);
	CHECK(w.l_type == F_RDLCK && w.l_start == 10 && w.l_len == 10 && w.l_pid == -1,
	      "the OFD lock on DIR/ofd is type %d bytes %lld+%lld pid %d, not a read lock on 10+10 (pid -1)", w.l_type,
	      (long long)w.l_start, (long long)w.l_len, w.l_pid);
	struct flock r = getlk(other, F_OFD_GETLK, F_RDLCK, 0, 0);
	CHECK(r.l_type == F_UNLCK, "the OFD lock on DIR/ofd conflicts with a read lock: type %d", r.l_type);
	fl = (struct flock){ .l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 10 };
	fcntl(ofd, F_OFD_SETLK, &fl);
	w = getlk(other, F_OFD_GETLK, F_WRLCK, 0, 0);
	CHECK(w.l_type == F_UNLCK, "DIR/ofd once unlocked by its holder is still locked (type %d)", w.l_type);
	finish();
}
