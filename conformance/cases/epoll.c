/*
 * An epoll set with several fds registered, each with its own events and
 * data: a pipe's read end (EPOLLIN), an eventfd with a count in it
 * (EPOLLIN), one end of a socketpair (EPOLLIN | EPOLLOUT | EPOLLET), and the
 * write end of a full pipe (EPOLLOUT). After the move the set holds the
 * same fds with the same events and data (fdinfo), epoll_wait reports the
 * ready ones with their data and events, and a fd made ready after the
 * move is reported too.
 */
#include "corpus.h"
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

struct reg {
	const char *name;
	int fd;
	uint32_t events;
	uint64_t data;
};

/* registered returns the events and data fdinfo shows for fd in the epoll
 * set ep, or -1 if fd is not in it. */
static int registered(int ep, int fd, uint32_t *events, uint64_t *data)
{
	char path[64], line[512];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", ep);
	FILE *f = fopen(path, "r");
	int found = -1;
	while (f && fgets(line, sizeof(line), f)) {
		int tfd;
		unsigned int ev;
		unsigned long long d;
		if (sscanf(line, "tfd: %d events: %x data: %llx", &tfd, &ev, &d) == 3 && tfd == fd) {
			*events = ev;
			*data = d;
			found = 0;
		}
	}
	if (f)
		fclose(f);
	return found;
}

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	int in[2], full[2], sp[2];
	if (pipe2(in, O_NONBLOCK) < 0 || pipe2(full, O_NONBLOCK) < 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sp) < 0)
		die("pipe");
	int efd = eventfd(3, EFD_NONBLOCK);
	if (efd < 0)
		die("eventfd");
	char page[4096] = { 0 };
	while (write(full[1], page, sizeof(page)) > 0)
		;
	struct reg regs[] = {
		{ "the empty pipe", in[0], EPOLLIN, 0x1111000000000001ULL },
		{ "the eventfd", efd, EPOLLIN, 0x2222000000000002ULL },
		{ "the socket", sp[0], EPOLLIN | EPOLLOUT | EPOLLET, 0x3333000000000003ULL },
		{ "the full pipe", full[1], EPOLLOUT, 0x4444000000000004ULL },
	};
	int nregs = sizeof(regs) / sizeof(regs[0]);
	int ep = epoll_create1(0);
	if (ep < 0)
		die("epoll_create1");
	for (int i = 0; i < nregs; i++) {
		struct epoll_event ev = { .events = regs[i].events, .data.u64 = regs[i].data };
		if (epoll_ctl(ep, EPOLL_CTL_ADD, regs[i].fd, &ev) < 0)
			die("epoll_ctl %s", regs[i].name);
	}
	ready();
	wait_go();
	for (int i = 0; i < nregs; i++) {
		uint32_t ev = 0;
		uint64_t data = 0;
		if (registered(ep, regs[i].fd, &ev, &data) < 0)
			fail("%s (fd %d) is not in the epoll set", regs[i].name, regs[i].fd);
		else
			/* The kernel adds EPOLLERR and EPOLLHUP to every registration. */
			CHECK(ev == (regs[i].events | EPOLLERR | EPOLLHUP) && data == regs[i].data,
			      "%s is in the epoll set with events %#x data %#llx, not %#x %#llx", regs[i].name, ev,
			      (unsigned long long)data, regs[i].events | EPOLLERR | EPOLLHUP,
			      (unsigned long long)regs[i].data);
	}
	/* Ready: the eventfd (a count) and the socket (writable); not the empty
	 * pipe, nor the full one. */
	struct epoll_event got[8];
	int n = epoll_wait(ep, got, 8, 1000);
	int seen_efd = 0, seen_sock = 0;
	for (int i = 0; i < n; i++) {
		if (got[i].data.u64 == regs[1].data && got[i].events == EPOLLIN)
			seen_efd++;
		else if (got[i].data.u64 == regs[2].data && got[i].events == EPOLLOUT)
			seen_sock++;
		else
			fail("epoll_wait reports data %#llx events %#x", (unsigned long long)got[i].data.u64, got[i].events);
	}
	CHECK(n >= 0, "epoll_wait: %s", strerror(errno));
	CHECK(seen_efd == 1, "epoll_wait does not report the eventfd ready (data %#llx)", (unsigned long long)regs[1].data);
	CHECK(seen_sock == 1, "epoll_wait does not report the socket writable (data %#llx)", (unsigned long long)regs[2].data);
	/* Edge-triggered: the socket is not reported again until it changes. */
	n = epoll_wait(ep, got, 8, 0);
	for (int i = 0; i < n; i++)
		CHECK(got[i].data.u64 != regs[2].data, "the edge-triggered socket is reported again with no new edge");
	/* Made ready after the move: data into the empty pipe, and into the
	 * socket. */
	write(in[1], "x", 1);
	write(sp[1], "y", 1);
	uint64_t v;
	read(efd, &v, 8);
	int seen_pipe = 0;
	seen_sock = 0;
	n = epoll_wait(ep, got, 8, 10000);
	for (int i = 0; i < n; i++) {
		if (got[i].data.u64 == regs[0].data && got[i].events == EPOLLIN)
			seen_pipe++;
		else if (got[i].data.u64 == regs[2].data && (got[i].events & EPOLLIN))
			seen_sock++;
		else
			fail("after the move, epoll_wait reports data %#llx events %#x", (unsigned long long)got[i].data.u64,
			     got[i].events);
	}
	CHECK(seen_pipe == 1, "the pipe made readable after the move is not reported (data %#llx)",
	      (unsigned long long)regs[0].data);
	CHECK(seen_sock == 1, "the socket made readable after the move is not reported (data %#llx)",
	      (unsigned long long)regs[2].data);
	finish();
}
