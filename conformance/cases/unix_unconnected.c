/*
 * Unix datagram sockets that are not connected: one neither bound nor
 * connected, one bound to DIR/dgram with datagrams queued on it, sent by
 * the first and by a third bound to DIR/sender. After the move each keeps
 * its name (or lack of one), none is connected, the queued datagrams are
 * there, in order, whole, and the first still sends to DIR/dgram. (Not
 * checked: the sender's address of a queued datagram. CRIU 4.2.1 requeues
 * them without it: recvfrom gives an unnamed sender after a restore.)
 */
#include "corpus.h"
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

static void bind_to(int fd, const char *name, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (strlen(corpus_path(name)) >= sizeof(sa->sun_path))
		die("DIR is too long a path for a unix socket");
	strcpy(sa->sun_path, corpus_path(name));
	if (bind(fd, (struct sockaddr *)sa, sizeof(*sa)) < 0)
		die("bind %s", name);
}

/* name is what getsockname says of fd: its path, or "" for none. */
static const char *name(int fd)
{
	static struct sockaddr_un sa;
	memset(&sa, 0, sizeof(sa));
	socklen_t len = sizeof(sa);
	if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
		return "(getsockname failed)";
	if (len <= offsetof(struct sockaddr_un, sun_path))
		return "";
	return sa.sun_path;
}

static const char *const msgs[] = { "one, from the unbound socket", "two, from DIR/sender", "3", "four, from DIR/sender" };

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	struct sockaddr_un dst, snd;
	int u = socket(AF_UNIX, SOCK_DGRAM, 0);
	int b = socket(AF_UNIX, SOCK_DGRAM, 0);
	int s = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (u < 0 || b < 0 || s < 0)
		die("socket");
	bind_to(b, "dgram", &dst);
	bind_to(s, "sender", &snd);
	for (int i = 0; i < 4; i++) {
		const char *m = msgs[i];
		if (sendto(i % 2 ? s : u, m, strlen(m), 0, (struct sockaddr *)&dst, sizeof(dst)) != (ssize_t)strlen(m))
			die("sendto");
	}
	ready();
	wait_go();
	CHECK(strcmp(name(u), "") == 0, "the unbound socket is bound to \"%s\"", name(u));
	CHECK(strcmp(name(b), dst.sun_path) == 0, "the socket bound to DIR/dgram is bound to \"%s\"", name(b));
	CHECK(strcmp(name(s), snd.sun_path) == 0, "the socket bound to DIR/sender is bound to \"%s\"", name(s));
	int fds[3] = { u, b, s };
	for (int i = 0; i < 3; i++) {
		struct sockaddr_un peer;
		socklen_t len = sizeof(peer);
		CHECK(getpeername(fds[i], (struct sockaddr *)&peer, &len) < 0 && errno == ENOTCONN,
		      "socket %d is connected after the move", i);
	}
	for (int i = 0; i < 4; i++) {
		char buf[256] = "";
		ssize_t n = recv(b, buf, sizeof(buf), MSG_DONTWAIT);
		if (n < 0) {
			fail("datagram %d queued on DIR/dgram is gone: %s", i, strerror(errno));
			break;
		}
		CHECK(n == (ssize_t)strlen(msgs[i]) && memcmp(buf, msgs[i], n) == 0, "datagram %d is \"%.*s\", not \"%s\"", i,
		      (int)n, buf, msgs[i]);
	}
	char buf[64];
	ssize_t n = recv(b, buf, sizeof(buf), MSG_DONTWAIT);
	CHECK(n < 0 && errno == EAGAIN, "DIR/dgram holds a datagram more than was sent (%zd bytes)", n);
	CHECK(sendto(u, "after", 5, 0, (struct sockaddr *)&dst, sizeof(dst)) == 5, "sendto DIR/dgram after the move: %s",
	      strerror(errno));
	memset(buf, 0, sizeof(buf));
	n = recv(b, buf, sizeof(buf), MSG_DONTWAIT);
	CHECK(n == 5 && memcmp(buf, "after", 5) == 0, "DIR/dgram got \"%.*s\" after the move, not \"after\"", n > 0 ? (int)n : 0, buf);
	finish();
}
