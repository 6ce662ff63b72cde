/*
 * Pipes with unread data in them: one partly read already, one filled to
 * the brim after its size was raised. After the move every unread byte
 * is there, in order, and nothing more; the pipes still carry data.
 */
#include "corpus.h"

/* pattern is the byte at offset i of what was written into pipe n. */
static unsigned char pattern(int n, long i) { return (unsigned char)(i * 7 + i / 251 + n * 101); }

/* drain reads all that a non-blocking fd holds into buf (at most max). */
static long drain(int fd, unsigned char *buf, long max)
{
	long got = 0;
	for (;;) {
		ssize_t r = read(fd, buf + got, max - got > 65536 ? 65536 : max - got);
		if (r <= 0)
			return r < 0 && errno != EAGAIN ? -1 : got;
		got += r;
		if (got == max)
			return got;
	}
}

static void check_bytes(const char *what, int n, const unsigned char *buf, long got, long from, long want)
{
	CHECK(got == want, "%s: %ld unread bytes after the move, %ld before", what, got, want);
	long len = got < want ? got : want;
	for (long i = 0; i < len; i++)
		if (buf[i] != pattern(n, from + i)) {
			fail("%s: byte %ld is %#x, %#x was written", what, from + i, buf[i], pattern(n, from + i));
			break;
		}
}

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	static unsigned char buf[1 << 20];
	/* Pipe 0: 10000 bytes written, 1234 of them read. */
	int a[2];
	if (pipe2(a, O_NONBLOCK) < 0)
		die("pipe");
	for (long i = 0; i < 10000; i++)
		buf[i] = pattern(0, i);
	if (write(a[1], buf, 10000) != 10000)
		die("write pipe 0");
	if (read(a[0], buf, 1234) != 1234)
		die("read pipe 0");
	/* Pipe 1: grown to 256 KiB, then filled until it would block, a
	 * page at a time, so that it is full to the byte. */
	int b[2];
	if (pipe2(b, O_NONBLOCK) < 0)
		die("pipe");
	if (fcntl(b[1], F_SETPIPE_SZ, 256 * 1024) < 0)
		die("F_SETPIPE_SZ");
	int size = fcntl(b[1], F_GETPIPE_SZ);
	long full = 0;
	for (;;) {
		unsigned char chunk[65536];
		long page = sysconf(_SC_PAGESIZE);
		for (int i = 0; i < page; i++)
			chunk[i] = pattern(1, full + i);
		ssize_t w = write(b[1], chunk, page);
		if (w < 0) {
			if (errno == EAGAIN)
				break;
			die("write pipe 1");
		}
		full += w;
	}
	ready();
	wait_go();
	CHECK(fcntl(b[0], F_GETPIPE_SZ) == size, "pipe 1 holds %d bytes, it held %d", fcntl(b[0], F_GETPIPE_SZ), size);
	CHECK(write(b[1], "x", 1) < 0 && errno == EAGAIN, "the full pipe 1 takes one more byte: it is not full");
	long got = drain(a[0], buf, sizeof(buf));
	check_bytes("pipe 0", 0, buf, got, 1234, 10000 - 1234);
	got = drain(b[0], buf, sizeof(buf));
	check_bytes("pipe 1", 1, buf, got, 0, full);
	/* Both still carry data, each end to its own pipe. */
	CHECK(write(a[1], "after", 5) == 5, "write pipe 0 after the move: %s", strerror(errno));
	CHECK(write(b[1], "AFTER", 5) == 5, "write pipe 1 after the move: %s", strerror(errno));
	char s[8] = "";
	CHECK(read(a[0], s, sizeof(s)) == 5 && memcmp(s, "after", 5) == 0, "pipe 0 after the move gave %.5s", s);
	memset(s, 0, sizeof(s));
	CHECK(read(b[0], s, sizeof(s)) == 5 && memcmp(s, "AFTER", 5) == 0, "pipe 1 after the move gave %.5s", s);
	finish();
}
