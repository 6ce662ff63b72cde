/*
 * Timerfds: a periodic one (60 s) armed and not yet expired; a periodic
 * one (60 s) that has expired once, unread, its expiration counted by the
 * kernel (timerfd_gettime re-arms it); an expired one-shot. After the move
 * the periodic ones are still armed, with their intervals, none due later
 * than it was; each reads the expirations it had; the one-shot is
 * disarmed. (A periodic timer expired and unread at the checkpoint is
 * timerfd_expired.)
 */
#include "corpus.h"
#include <poll.h>
#include <stdint.h>
#include <sys/timerfd.h>

static int readable(int fd, int ms)
{
	struct pollfd p = { fd, POLLIN, 0 };
	return poll(&p, 1, ms) == 1;
}

static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }
#define SEC 1000000000LL

/* check_timer checks a timer's setting and its unread expirations. */
static void check_timer(const char *what, int fd, long long interval, long long max_due, uint64_t want)
{
	struct itimerspec cur;
	if (timerfd_gettime(fd, &cur) < 0) {
		fail("%s: timerfd_gettime: %s", what, strerror(errno));
		return;
	}
	CHECK(ns(cur.it_interval) == interval, "%s: the interval is %lld ns, not %lld", what, ns(cur.it_interval), interval);
	if (max_due)
		CHECK(ns(cur.it_value) > 0 && ns(cur.it_value) <= max_due, "%s: due in %lld ns: %s", what, ns(cur.it_value),
		      ns(cur.it_value) ? "later than before the move" : "disarmed");
	else
		CHECK(ns(cur.it_value) == 0, "%s: armed, due in %lld ns", what, ns(cur.it_value));
	uint64_t n = 0;
	ssize_t r = read(fd, &n, 8);
	if (r < 0 && errno != EAGAIN)
		fail("%s: read: %s", what, strerror(errno));
	else
		CHECK(n == want, "%s: %llu expirations read, not %llu", what, (unsigned long long)n, (unsigned long long)want);
}

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	int armed = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	int counted = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	int once = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	if (armed < 0 || counted < 0 || once < 0)
		die("timerfd_create");
	struct itimerspec it = { .it_value = { 30, 0 }, .it_interval = { 60, 0 } };
	if (timerfd_settime(armed, 0, &it, NULL) < 0)
		die("timerfd_settime");
	it.it_value = (struct timespec){ 0, 1000000 };
	if (timerfd_settime(counted, 0, &it, NULL) < 0)
		die("timerfd_settime");
	it.it_interval = (struct timespec){ 0, 0 };
	if (timerfd_settime(once, 0, &it, NULL) < 0)
		die("timerfd_settime");
	if (!readable(counted, 10000) || !readable(once, 10000))
		die("the timers did not expire");
	timerfd_gettime(counted, &it);
	ready();
	wait_go();
	check_timer("the armed 60 s timer", armed, 60 * SEC, 30 * SEC, 0);
	check_timer("the 60 s timer expired once", counted, 60 * SEC, 60 * SEC, 1);
	check_timer("the expired one-shot timer", once, 0, 0, 1);
	CHECK(!readable(once, 50), "the expired one-shot timer expires again after the move");
	finish();
}
