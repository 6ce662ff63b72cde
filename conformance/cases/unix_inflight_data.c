/*
 * A client connected to a unix listening socket (DIR/listen), not accepted
 * yet, that has already sent data: after the move the connection is
 * accepted and the data is read from it.
 *
 * criu-cannot: CRIU does not dump a not-yet-accepted unix connection with data queued on it ("unix: Non-empty write queue on an in-flight socket", criu/sk-unix.c)
 */
#include "corpus.h"
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include "unix_listen.h"

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	struct sockaddr_un sa;
	int l, c;
	unix_listen_connect("listen", &sa, &l, &c);
	const char *cs = "from the client, before it was accepted";
	if (send(c, cs, strlen(cs), 0) != (ssize_t)strlen(cs))
		die("send from the client");
	ready();
	wait_go();
	struct pollfd p = { l, POLLIN, 0 };
	int a = -1;
	if (poll(&p, 1, 10000) != 1)
		fail("the connection pending on DIR/listen is gone: nothing to accept");
	else if ((a = accept(l, NULL, NULL)) < 0)
		fail("accept: %s", strerror(errno));
	if (a >= 0) {
		char buf[256] = "";
		ssize_t n = recv(a, buf, sizeof(buf), MSG_DONTWAIT);
		CHECK(n == (ssize_t)strlen(cs) && memcmp(buf, cs, n) == 0,
		      "the accepted connection holds %zd bytes \"%.*s\", not what the client sent", n, n > 0 ? (int)n : 0, buf);
	}
	finish();
}
