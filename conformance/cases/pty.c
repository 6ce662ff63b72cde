/*
 * A pty pair (posix_openpt, grantpt, unlockpt, ptsname) held by the tree,
 * with data queued both ways: written to the slave (output, for the master
 * to read) and to the master (input, for the slave to read); termios
 * settings (raw-ish, a speed, control characters) and the window size set
 * on it. After the move the queued data is read at both ends, the slave's
 * name, the termios and the window size are the same, and the pair still
 * carries data.
 * phaul-own: on a destination that shares the source's /dev/pts (as the two hosts here do) the index is taken by the frozen source until the commit, and CRIU restores a pty with its index ("Unable to open dev/ptmx with specified index"); a destination with a /dev/pts of its own restores it
 * phaul-refuses: files
 */
#include "corpus.h"
#include <poll.h>
#include <sys/ioctl.h>
#include <termios.h>

static const char out_data[] = "queued output, slave to master\n";
static const char in_data[] = "queued input\n";

/* read_all reads n bytes from fd, polling for 5 s at most. */
static ssize_t read_all(int fd, char *buf, size_t n)
{
	size_t got = 0;
	for (int i = 0; i < 500 && got < n; i++) {
		struct pollfd p = { fd, POLLIN, 0 };
		if (poll(&p, 1, 10) > 0) {
			ssize_t r = read(fd, buf + got, n - got);
			if (r <= 0)
				break;
			got += r;
		}
	}
	return got;
}

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	int master = posix_openpt(O_RDWR | O_NOCTTY);
	if (master < 0)
		die("posix_openpt");
	if (grantpt(master) < 0 || unlockpt(master) < 0)
		die("grantpt/unlockpt");
	char name[64];
	if (ptsname_r(master, name, sizeof(name)))
		die("ptsname");
	int slave = open(name, O_RDWR | O_NOCTTY);
	if (slave < 0)
		die("open %s", name);

	struct termios t;
	tcgetattr(slave, &t);
	t.c_lflag &= ~(ECHO | ECHONL | ICANON | IEXTEN);
	t.c_lflag |= ISIG;
	t.c_iflag &= ~(ICRNL | IXON);
	t.c_oflag &= ~OPOST; /* output as is: no \n to \r\n */
	t.c_cc[VMIN] = 1;
	t.c_cc[VTIME] = 3;
	t.c_cc[VINTR] = 'X' & 0x1f;
	cfsetispeed(&t, B19200);
	cfsetospeed(&t, B19200);
	if (tcsetattr(slave, TCSANOW, &t) < 0)
		die("tcsetattr");
	tcgetattr(slave, &t);
	struct winsize ws = { .ws_row = 37, .ws_col = 111 };
	if (ioctl(master, TIOCSWINSZ, &ws) < 0)
		die("TIOCSWINSZ");

	if (write(slave, out_data, sizeof(out_data) - 1) != sizeof(out_data) - 1)
		die("write to the slave");
	if (write(master, in_data, sizeof(in_data) - 1) != sizeof(in_data) - 1)
		die("write to the master");
	/* Both are queued before the checkpoint. */
	int queued = 0;
	for (int i = 0; i < 1000; i++) {
		int a = 0, b = 0;
		ioctl(master, FIONREAD, &a);
		ioctl(slave, FIONREAD, &b);
		if (a == sizeof(out_data) - 1 && b == sizeof(in_data) - 1) {
			queued = 1;
			break;
		}
		sleep_ms(10);
	}
	if (!queued)
		die("the data is not queued in the pty");

	ready();
	wait_go();

	char now[64] = "";
	CHECK(ptsname_r(master, now, sizeof(now)) == 0 && strcmp(now, name) == 0, "the slave is %s, it was %s", now, name);
	struct stat st;
	CHECK(fstat(slave, &st) == 0 && S_ISCHR(st.st_mode) && isatty(slave), "the slave is no tty any more");
	struct termios got;
	if (tcgetattr(slave, &got) < 0)
		fail("tcgetattr: %s", strerror(errno));
	else {
		CHECK(got.c_iflag == t.c_iflag, "c_iflag is %#x, it was %#x", got.c_iflag, t.c_iflag);
		CHECK(got.c_oflag == t.c_oflag, "c_oflag is %#x, it was %#x", got.c_oflag, t.c_oflag);
		CHECK(got.c_cflag == t.c_cflag, "c_cflag is %#x, it was %#x", got.c_cflag, t.c_cflag);
		CHECK(got.c_lflag == t.c_lflag, "c_lflag is %#x, it was %#x", got.c_lflag, t.c_lflag);
		CHECK(cfgetospeed(&got) == B19200, "the speed is %#x, not B19200", cfgetospeed(&got));
		for (int i = 0; i < NCCS; i++)
			CHECK(got.c_cc[i] == t.c_cc[i], "c_cc[%d] is %#x, it was %#x", i, got.c_cc[i], t.c_cc[i]);
	}
	struct winsize wgot = { 0 };
	ioctl(slave, TIOCGWINSZ, &wgot);
	CHECK(wgot.ws_row == 37 && wgot.ws_col == 111, "the window is %ux%u, it was 37x111", wgot.ws_row, wgot.ws_col);

	char buf[128] = "";
	ssize_t n = read_all(master, buf, sizeof(out_data) - 1);
	CHECK(n == sizeof(out_data) - 1 && memcmp(buf, out_data, n) == 0,
	      "the master reads %zd bytes \"%.*s\" of the slave's queued output \"%s\"", n, (int)n, buf, out_data);
	memset(buf, 0, sizeof(buf));
	n = read_all(slave, buf, sizeof(in_data) - 1);
	CHECK(n == sizeof(in_data) - 1 && memcmp(buf, in_data, n) == 0,
	      "the slave reads %zd bytes \"%.*s\" of the master's queued input \"%s\"", n, (int)n, buf, in_data);
	/* And it still carries data. */
	write(slave, "after", 5);
	memset(buf, 0, sizeof(buf));
	n = read_all(master, buf, 5);
	CHECK(n == 5 && memcmp(buf, "after", 5) == 0, "data written to the slave after the move: the master reads \"%.*s\"",
	      (int)n, buf);
	finish();
}
