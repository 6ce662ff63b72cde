/*
 * unix_packets.h: the body of unix_dgram.c and unix_seqpacket.c, which
 * define TYPE (SOCK_DGRAM, SOCK_SEQPACKET) and include it.
 */
#include "corpus.h"
#include <sys/socket.h>

/* msg fills buf with datagram i of direction dir and returns its length. */
static size_t msg(int dir, int i, char *buf)
{
	static const size_t sizes[] = { 1, 17, 3000, 64, 100, 2, 1000 };
	size_t n = sizes[i];
	for (size_t j = 0; j < n; j++)
		buf[j] = (char)('a' + (j + i * 3 + dir * 5) % 26);
	return n;
}
#define NMSG 7

static void expect(const char *what, int fd, int dir, int from)
{
	char want[4096], got[8192];
	for (int i = from; i < NMSG; i++) {
		size_t n = msg(dir, i, want);
		ssize_t r = recv(fd, got, sizeof(got), MSG_DONTWAIT | MSG_TRUNC);
		if (r < 0) {
			fail("%s: datagram %d of %d is gone: %s", what, i, NMSG - 1, strerror(errno));
			return;
		}
		if (r != (ssize_t)n || memcmp(got, want, n) != 0) {
			fail("%s: datagram %d is %zd bytes \"%.*s...\", it was %zu bytes \"%.*s...\"", what, i, r,
			     (int)(r < 20 ? r : 20), got, n, (int)(n < 20 ? n : 20), want);
			return;
		}
	}
	ssize_t r = recv(fd, got, sizeof(got), MSG_DONTWAIT);
	CHECK(r < 0 && errno == EAGAIN, "%s: a datagram more than was sent (%zd bytes)", what, r);
}

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	int sp[2];
	if (socketpair(AF_UNIX, TYPE, 0, sp) < 0)
		die("socketpair");
	char buf[4096];
	for (int i = 0; i < NMSG; i++) {
		size_t n = msg(0, i, buf);
		if (send(sp[0], buf, n, 0) != (ssize_t)n)
			die("send a to b");
		n = msg(1, i, buf);
		if (send(sp[1], buf, n, 0) != (ssize_t)n)
			die("send b to a");
	}
	if (recv(sp[1], buf, sizeof(buf), 0) != (ssize_t)msg(0, 0, buf)) /* b reads the first one */
		die("recv");
	ready();
	wait_go();
	int type = 0;
	socklen_t len = sizeof(type);
	CHECK(getsockopt(sp[0], SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == TYPE, "the socket's type is %d, not %d",
	      type, TYPE);
	expect("a to b", sp[1], 0, 1);
	expect("b to a", sp[0], 1, 0);
	CHECK(send(sp[0], "ping", 4, 0) == 4 && send(sp[0], "!", 1, 0) == 1, "send a to b after the move: %s",
	      strerror(errno));
	char got[16] = "";
	CHECK(recv(sp[1], got, sizeof(got), MSG_DONTWAIT) == 4 && memcmp(got, "ping", 4) == 0,
	      "a to b after the move: \"%s\", not \"ping\"", got);
	CHECK(recv(sp[1], got, sizeof(got), MSG_DONTWAIT) == 1 && got[0] == '!', "a to b after the move: no second datagram");
	CHECK(send(sp[1], "pong", 4, 0) == 4, "send b to a after the move: %s", strerror(errno));
	memset(got, 0, sizeof(got));
	CHECK(recv(sp[0], got, sizeof(got), MSG_DONTWAIT) == 4 && memcmp(got, "pong", 4) == 0,
	      "b to a after the move: \"%s\", not \"pong\"", got);
	finish();
}
