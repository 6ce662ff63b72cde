/*
 * File locks (flock and POSIX) on files the tree has deleted: CRIU
 * restores such a file as a copy of its own, so nothing the source keeps
 * stands in the restore's way, and phaul chooses file_locks itself.
 * criu-opts: file_locks
 */
#include <sys/file.h>
#include "corpus.h"

static int locked_file(const char *name)
{
	int fd = open(corpus_path(name), O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open %s", name);
	if (write(fd, "data\n", 5) != 5)
		die("write %s", name);
	unlink(corpus_path(name));
	return fd;
}

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	int f = locked_file("flocked");
	int p = locked_file("posix-locked");
	if (flock(f, LOCK_EX) < 0)
		die("flock");
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
	if (fcntl(p, F_SETLK, &fl) < 0)
		die("fcntl F_SETLK");
	ready();
	wait_go();
	pid_t me = getpid();
	pid_t kid = fork();
	if (kid == 0) {
		/* Another open of the flocked file: its lock is still held. */
		char path[64];
		snprintf(path, sizeof(path), "/proc/self/fd/%d", f);
		int other = open(path, O_RDWR);
		if (other < 0)
			_exit(10);
		if (flock(other, LOCK_EX | LOCK_NB) == 0)
			_exit(11);
		/* The POSIX lock, seen from another process. */
		struct flock q = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
		if (fcntl(p, F_GETLK, &q) < 0)
			_exit(12);
		if (q.l_type != F_WRLCK || q.l_pid != me)
			_exit(13);
		_exit(0);
	}
	int st;
	waitpid(kid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) != 10, "cannot reopen the deleted file");
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) != 11, "the flock on the deleted file is lost");
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) != 12, "F_GETLK failed");
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) != 13, "the POSIX lock on the deleted file is lost");
	CHECK(WIFEXITED(st), "the checking child died: %#x", st);
	finish();
}
