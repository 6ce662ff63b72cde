/*
 * A named FIFO (DIR/fifo) the tree holds open at both ends, with data
 * queued in it: after the move the ends are the FIFO at that path, and the
 * data is there to read, in order; a child of the tree holding a write end
 * of its own still writes into the same FIFO.
 * phaul-own: a destination that sees the same FIFO (one kernel and one filesystem, as the two hosts here share) has the same pipe: the frozen source keeps it, with its data, until the commit, and the restore would queue the data again (the tree would read it twice); a destination with a FIFO of its own at that path takes the data
 * phaul-refuses: files
 */
#include "corpus.h"

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	if (mkfifo(corpus_path("fifo"), 0600) < 0)
		die("mkfifo");
	int r = open(corpus_path("fifo"), O_RDONLY | O_NONBLOCK);
	if (r < 0)
		die("open the FIFO for reading");
	int w = open(corpus_path("fifo"), O_WRONLY | O_NONBLOCK);
	if (w < 0)
		die("open the FIFO for writing");
	const char before[] = "queued before the move\n";
	if (write(w, before, strlen(before)) != (ssize_t)strlen(before))
		die("write the FIFO");
	/* A child with a write end of its own, which writes when told. */
	pid_t kid = fork();
	if (kid < 0)
		die("fork");
	if (kid == 0) {
		close(r);
		close(w);
		int cw = open(corpus_path("fifo"), O_WRONLY | O_NONBLOCK);
		if (cw < 0)
			_exit(1);
		corpus_write("kid-open", "open\n");
		while (!exists("kid-go"))
			sleep_ms(10);
		write(cw, "from the child\n", 15);
		_exit(0);
	}
	for (int i = 0; i < 1000 && !exists("kid-open"); i++)
		sleep_ms(10);
	if (!exists("kid-open"))
		die("the child did not open the FIFO");
	struct stat path_st;
	if (stat(corpus_path("fifo"), &path_st) < 0)
		die("stat");
	ready();
	wait_go();
	struct stat st;
	stat(corpus_path("fifo"), &path_st);
	for (int i = 0; i < 2; i++) {
		int fd = i ? w : r;
		if (fstat(fd, &st) < 0) {
			fail("fstat the %s end: %s", i ? "write" : "read", strerror(errno));
			continue;
		}
		CHECK(S_ISFIFO(st.st_mode), "the %s end is no FIFO (mode %o)", i ? "write" : "read", st.st_mode);
		CHECK(st.st_dev == path_st.st_dev && st.st_ino == path_st.st_ino,
		      "the %s end is inode %lu, DIR/fifo is %lu", i ? "write" : "read", (unsigned long)st.st_ino,
		      (unsigned long)path_st.st_ino);
	}
	int fl = fcntl(r, F_GETFL);
	CHECK((fl & O_ACCMODE) == O_RDONLY && (fl & O_NONBLOCK), "the read end's flags are %#x", fl);
	fl = fcntl(w, F_GETFL);
	CHECK((fl & O_ACCMODE) == O_WRONLY && (fl & O_NONBLOCK), "the write end's flags are %#x", fl);
	char buf[256] = "";
	ssize_t n = read(r, buf, sizeof(buf));
	CHECK(n == (ssize_t)strlen(before) && memcmp(buf, before, n) == 0, "the FIFO held %zd bytes: \"%.*s\"", n,
	      n > 0 ? (int)n : 0, buf);
	corpus_write("kid-go", "go\n");
	int st_kid;
	waitpid(kid, &st_kid, 0);
	CHECK(WIFEXITED(st_kid) && WEXITSTATUS(st_kid) == 0, "the child ended with %#x", st_kid);
	memset(buf, 0, sizeof(buf));
	n = read(r, buf, sizeof(buf));
	CHECK(n == 15 && memcmp(buf, "from the child\n", 15) == 0, "what the child wrote after the move: %zd bytes \"%.*s\"",
	      n, n > 0 ? (int)n : 0, buf);
	CHECK(write(w, "after", 5) == 5, "write the FIFO after the move: %s", strerror(errno));
	memset(buf, 0, sizeof(buf));
	n = read(r, buf, sizeof(buf));
	CHECK(n == 5 && memcmp(buf, "after", 5) == 0, "the FIFO after the move gave %zd bytes \"%.*s\"", n,
	      n > 0 ? (int)n : 0, buf);
	finish();
}
