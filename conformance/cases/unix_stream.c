/*
 * Unix stream sockets: a connected pair with data queued both ways (one
 * way partly read), and a listening socket bound to DIR/listen with a
 * client connected to it, not accepted yet. After the move the data is
 * there, byte for byte, the pair is still each other's peer, and the
 * pending connection is accepted and carries data both ways. (A client
 * that has sent data before it was accepted is unix_inflight_data.)
 */
#include "corpus.h"
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include "unix_listen.h"

/* readable waits (up to 10 s) until fd can be read. */
static int readable(int fd)
{
	struct pollfd p = { fd, POLLIN, 0 };
	return poll(&p, 1, 10000) == 1;
}

/* take reads what a non-blocking socket holds. */
static ssize_t take(int fd, char *buf, size_t max)
{
	ssize_t got = 0;
	for (;;) {
		ssize_t r = recv(fd, buf + got, max - got, MSG_DONTWAIT);
		if (r <= 0)
			return got ? got : r;
		got += r;
	}
}

static void expect(const char *what, int fd, const char *want)
{
	char buf[65536];
	size_t n = strlen(want);
	ssize_t got = take(fd, buf, sizeof(buf));
	CHECK(got == (ssize_t)n && memcmp(buf, want, n) == 0, "%s: %zd bytes \"%.*s\", %zu were queued \"%s\"", what,
	      got, got > 0 ? (int)(got > 80 ? 80 : got) : 0, buf, n, want);
}

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	int sp[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) < 0)
		die("socketpair");
	const char *ab = "0123456789 from a to b, queued before the move";
	const char *ba = "from b to a, queued before the move";
	if (send(sp[0], ab, strlen(ab), 0) != (ssize_t)strlen(ab) || send(sp[1], ba, strlen(ba), 0) != (ssize_t)strlen(ba))
		die("send");
	char skip[10];
	if (recv(sp[1], skip, 10, 0) != 10) /* b reads the first ten bytes */
		die("recv");

	struct sockaddr_un sa;
	int l, c;
	unix_listen_connect("listen", &sa, &l, &c);
	ready();
	wait_go();

	expect("a to b", sp[1], ab + 10);
	expect("b to a", sp[0], ba);
	CHECK(send(sp[0], "ping", 4, 0) == 4, "send a to b after the move: %s", strerror(errno));
	expect("a to b after the move", sp[1], "ping");
	CHECK(send(sp[1], "pong", 4, 0) == 4, "send b to a after the move: %s", strerror(errno));
	expect("b to a after the move", sp[0], "pong");

	struct sockaddr_un got = { 0 };
	socklen_t len = sizeof(got);
	CHECK(getsockname(l, (struct sockaddr *)&got, &len) == 0 && strcmp(got.sun_path, sa.sun_path) == 0,
	      "the listening socket is bound to \"%s\", not \"%s\"", got.sun_path, sa.sun_path);
	int on = 0;
	len = sizeof(on);
	CHECK(getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on, "the socket bound to DIR/listen does not listen");
	int a = -1;
	if (!readable(l))
		fail("the connection pending on DIR/listen is gone: nothing to accept");
	else if ((a = accept(l, NULL, NULL)) < 0)
		fail("accept: %s", strerror(errno));
	if (a >= 0) {
		CHECK(send(c, "hello", 5, 0) == 5, "send from the client: %s", strerror(errno));
		if (readable(a))
			expect("client to the accepted socket", a, "hello");
		else
			fail("the accepted socket gets nothing from the client");
		CHECK(send(a, "welcome", 7, 0) == 7, "send to the client: %s", strerror(errno));
		if (readable(c))
			expect("accepted socket to the client", c, "welcome");
		else
			fail("the client gets nothing from the accepted socket");
	}
	/* The listener still takes new connections. */
	int c2 = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(connect(c2, (struct sockaddr *)&sa, sizeof(sa)) == 0, "a new connection to DIR/listen: %s", strerror(errno));
	CHECK(readable(l) && accept(l, NULL, NULL) >= 0, "a new connection is not accepted: %s", strerror(errno));
	finish();
}
