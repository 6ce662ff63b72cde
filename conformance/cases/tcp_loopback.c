/*
 * TCP on 127.0.0.1 inside the tree: a listener (on a free port), and an
 * established connection between two sockets of the tree, accepted from
 * it, with data queued both ways (one way partly read). After the move the
 * queued data is there, byte for byte, the connection carries data both
 * ways, and the listener, on the same port, takes new connections. And a
 * pair of UDP sockets on 127.0.0.1, connected to each other, with a
 * datagram queued: after the move they keep their ports and peers and
 * carry datagrams both ways. The queued datagram may be lost (UDP makes
 * no promise, and CRIU 4.2.1 does not dump UDP receive queues), but if it
 * is there, it is whole, and nothing else is.
 *
 * criu-opts: tcp_established
 */
#include "corpus.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

static int readable(int fd, int ms)
{
	struct pollfd p = { fd, POLLIN, 0 };
	return poll(&p, 1, ms) == 1;
}

/* take reads n bytes from a stream socket, waiting (up to 10 s) for them. */
static ssize_t take(int fd, char *buf, size_t n)
{
	size_t got = 0;
	while (got < n && readable(fd, 10000)) {
		ssize_t r = recv(fd, buf + got, n - got, MSG_DONTWAIT);
		if (r <= 0)
			break;
		got += r;
	}
	return got;
}

static void expect(const char *what, int fd, const char *want)
{
	char buf[65536];
	size_t n = strlen(want);
	ssize_t got = take(fd, buf, n);
	CHECK(got == (ssize_t)n && memcmp(buf, want, n) == 0, "%s: %zd bytes \"%.*s\", not the %zu of \"%s\"", what, got,
	      got > 0 ? (int)got : 0, buf, n, want);
	/* Nothing more than was sent. */
	got = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
	if (got == 0)
		fail("%s: the connection is closed", what);
	else
		CHECK(got < 0 && errno == EAGAIN, "%s: %zd bytes more than were sent", what, got);
}

static struct sockaddr_in local(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return sa;
}

static int port_of(int fd)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
		return -1;
	return ntohs(sa.sin_port);
}

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	struct sockaddr_in sa = local(0);
	int l = socket(AF_INET, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(l, 8) < 0)
		die("listen on 127.0.0.1");
	int port = port_of(l);
	sa = local(port);
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("connect");
	int s = accept(l, NULL, NULL);
	if (s < 0)
		die("accept");
	int cport = port_of(c);
	const char *cs = "0123456789 from the client, queued before the move";
	const char *sc = "from the server, queued before the move";
	if (send(c, cs, strlen(cs), 0) != (ssize_t)strlen(cs) || send(s, sc, strlen(sc), 0) != (ssize_t)strlen(sc))
		die("send");
	char skip[10];
	if (take(s, skip, 10) != 10) /* the server reads the first ten bytes */
		die("recv");
	/* The rest has arrived: it is in the receive queues, not in flight. */
	char peek[256];
	for (int i = 0; i < 1000 && recv(s, peek, sizeof(peek), MSG_PEEK | MSG_DONTWAIT) < (ssize_t)strlen(cs) - 10; i++)
		sleep_ms(10);
	for (int i = 0; i < 1000 && recv(c, peek, sizeof(peek), MSG_PEEK | MSG_DONTWAIT) < (ssize_t)strlen(sc); i++)
		sleep_ms(10);

	struct sockaddr_in ua = local(0), ub = local(0);
	int u1 = socket(AF_INET, SOCK_DGRAM, 0), u2 = socket(AF_INET, SOCK_DGRAM, 0);
	if (u1 < 0 || u2 < 0 || bind(u1, (struct sockaddr *)&ua, sizeof(ua)) < 0 || bind(u2, (struct sockaddr *)&ub, sizeof(ub)) < 0)
		die("bind UDP");
	ua = local(port_of(u1));
	ub = local(port_of(u2));
	if (connect(u1, (struct sockaddr *)&ub, sizeof(ub)) < 0 || connect(u2, (struct sockaddr *)&ua, sizeof(ua)) < 0)
		die("connect UDP");
	const char *ud = "a datagram queued before the move";
	if (send(u1, ud, strlen(ud), 0) != (ssize_t)strlen(ud) || !readable(u2, 10000))
		die("send UDP");
	ready();
	wait_go();

	CHECK(port_of(l) == port, "the listener is on port %d, not %d", port_of(l), port);
	CHECK(port_of(c) == cport, "the client is on port %d, not %d", port_of(c), cport);
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	CHECK(getsockopt(c, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 && ti.tcpi_state == TCP_ESTABLISHED,
	      "the client's connection is in TCP state %d, not established", ti.tcpi_state);
	expect("client to server", s, cs + 10);
	expect("server to client", c, sc);
	CHECK(send(c, "ping", 4, MSG_NOSIGNAL) == 4, "send from the client after the move: %s", strerror(errno));
	expect("client to server after the move", s, "ping");
	CHECK(send(s, "pong", 4, MSG_NOSIGNAL) == 4, "send from the server after the move: %s", strerror(errno));
	expect("server to client after the move", c, "pong");

	int c2 = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(connect(c2, (struct sockaddr *)&sa, sizeof(sa)) == 0, "a new connection to the listener: %s", strerror(errno));
	int s2 = readable(l, 10000) ? accept(l, NULL, NULL) : -1;
	CHECK(s2 >= 0, "the listener does not accept a new connection");
	if (s2 >= 0) {
		CHECK(send(c2, "new", 3, MSG_NOSIGNAL) == 3, "send on the new connection: %s", strerror(errno));
		expect("the new connection", s2, "new");
	}

	CHECK(port_of(u1) == ntohs(ua.sin_port) && port_of(u2) == ntohs(ub.sin_port), "the UDP sockets are on ports %d %d, not %d %d",
	      port_of(u1), port_of(u2), ntohs(ua.sin_port), ntohs(ub.sin_port));
	for (int i = 0; i < 2; i++) {
		struct sockaddr_in peer = { 0 };
		socklen_t plen = sizeof(peer);
		struct sockaddr_in *want = i ? &ua : &ub;
		CHECK(getpeername(i ? u2 : u1, (struct sockaddr *)&peer, &plen) == 0 && peer.sin_port == want->sin_port &&
			      peer.sin_addr.s_addr == want->sin_addr.s_addr,
		      "UDP socket %d is connected to port %d, not %d (%s)", i + 1, ntohs(peer.sin_port),
		      ntohs(want->sin_port), strerror(errno));
	}
	char buf[256] = "";
	ssize_t n = recv(u2, buf, sizeof(buf), MSG_DONTWAIT);
	if (n < 0)
		CHECK(errno == EAGAIN, "recv UDP: %s", strerror(errno));
	else
		CHECK(n == (ssize_t)strlen(ud) && memcmp(buf, ud, n) == 0, "the UDP datagram queued before the move is %zd bytes \"%.*s\"",
		      n, (int)n, buf);
	n = recv(u2, buf, sizeof(buf), MSG_DONTWAIT);
	CHECK(n < 0 && errno == EAGAIN, "a UDP datagram more than was sent (%zd bytes)", n);
	CHECK(send(u1, "udp there", 9, 0) == 9, "send UDP after the move: %s", strerror(errno));
	memset(buf, 0, sizeof(buf));
	n = readable(u2, 10000) ? recv(u2, buf, sizeof(buf), MSG_DONTWAIT) : -1;
	CHECK(n == 9 && memcmp(buf, "udp there", 9) == 0, "UDP 1 to 2 after the move gave %zd bytes \"%.*s\"", n,
	      n > 0 ? (int)n : 0, buf);
	CHECK(send(u2, "udp after", 9, 0) == 9, "send UDP after the move: %s", strerror(errno));
	memset(buf, 0, sizeof(buf));
	n = readable(u1, 10000) ? recv(u1, buf, sizeof(buf), MSG_DONTWAIT) : -1;
	CHECK(n == 9 && memcmp(buf, "udp after", 9) == 0, "UDP 2 to 1 after the move gave %zd bytes \"%.*s\"", n,
	      n > 0 ? (int)n : 0, buf);
	finish();
}
