/*
 * Periodic timerfds that have expired and not been read when the tree is
 * checkpointed (as a timer in any event loop may be): one of 60 s, expired
 * once, and one of 1 ms. After the move both are still armed, with their
 * intervals: the 60 s one reads its expiration and is due within 60 s, the
 * 1 ms one keeps expiring.
 *
 * criu-cannot: CRIU 4.2.1 dumps a timerfd's it_value from fdinfo, which is (0, 0) for a timer that has expired and not been read (the kernel re-arms it only on read or timerfd_gettime); it restores it with timerfd_settime and that zero value, which disarms it: interval kept, but it never expires again
 * phaul-mends: the destination sets such a timer's it_value to its interval in the images (rearmTimerfds): due one interval after the restore, its ticks kept
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

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	int slow = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	int fast = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	if (slow < 0 || fast < 0)
		die("timerfd_create");
	struct itimerspec it = { .it_value = { 0, 1000000 }, .it_interval = { 60, 0 } };
	if (timerfd_settime(slow, 0, &it, NULL) < 0)
		die("timerfd_settime");
	it.it_interval = (struct timespec){ 0, 1000000 };
	if (timerfd_settime(fast, 0, &it, NULL) < 0)
		die("timerfd_settime");
	if (!readable(slow, 10000) || !readable(fast, 10000))
		die("the timers did not expire");
	ready();
	wait_go();
	struct itimerspec cur;
	uint64_t n = 0;
	CHECK(read(slow, &n, 8) == 8 && n == 1, "the 60 s timer read %llu expirations, not 1 (%s)", (unsigned long long)n,
	      strerror(errno));
	timerfd_gettime(slow, &cur);
	CHECK(ns(cur.it_interval) == 60000000000LL, "the 60 s timer's interval is %lld ns", ns(cur.it_interval));
	CHECK(ns(cur.it_value) > 0 && ns(cur.it_value) <= 60000000000LL, "the 60 s timer is due in %lld ns: %s",
	      ns(cur.it_value), ns(cur.it_value) ? "later than its interval" : "disarmed");
	n = 0;
	CHECK(read(fast, &n, 8) == 8 && n >= 1, "the 1 ms timer read %llu expirations, not one at least (%s)",
	      (unsigned long long)n, strerror(errno));
	timerfd_gettime(fast, &cur);
	CHECK(ns(cur.it_interval) == 1000000, "the 1 ms timer's interval is %lld ns", ns(cur.it_interval));
	CHECK(readable(fast, 10000), "the 1 ms timer does not expire after the move");
	finish();
}
