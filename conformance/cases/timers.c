/*
 * POSIX timers and itimers: a periodic CLOCK_MONOTONIC timer and a
 * one-shot CLOCK_REALTIME one far ahead, both SIGEV_SIGNAL with values;
 * one created and never armed; ITIMER_REAL periodic with a handler
 * counting. After the move the same timers exist with the same intervals,
 * the armed ones go on firing with their values, the far one is still
 * ahead and the disarmed one is still disarmed; overruns are sane.
 */
#include "corpus.h"
#include <sys/time.h>

#define PERIODIC_NS (20 * 1000000L) /* 20ms */
#define ITIMER_US 10000             /* 10ms */
#define FAR_S 3600

static volatile sig_atomic_t periodic_runs, bad_value, far_runs, disarmed_runs, alarm_runs;
static volatile int max_overrun;

static void on_timer(int sig, siginfo_t *si, void *uc)
{
	if (si->si_code != SI_TIMER) {
		bad_value = 1000 + si->si_code;
		return;
	}
	switch (si->si_value.sival_int) {
	case 101:
		if (sig != SIGRTMIN)
			bad_value = sig;
		periodic_runs++;
		if (si->si_overrun > max_overrun)
			max_overrun = si->si_overrun;
		break;
	case 202:
		far_runs++;
		break;
	case 303:
		disarmed_runs++;
		break;
	default:
		bad_value = si->si_value.sival_int;
	}
}

static void on_alarm(int sig) { alarm_runs++; }

static timer_t make_timer(clockid_t clock, int sig, int value)
{
	struct sigevent ev;
	memset(&ev, 0, sizeof(ev));
	ev.sigev_notify = SIGEV_SIGNAL;
	ev.sigev_signo = sig;
	ev.sigev_value.sival_int = value;
	timer_t t;
	if (timer_create(clock, &ev, &t) < 0)
		die("timer_create");
	return t;
}

/* wait_more polls until *counter has grown by n, for 5 s at most. */
static int wait_more(volatile sig_atomic_t *counter, int n)
{
	int start = *counter;
	for (int i = 0; i < 500 && *counter - start < n; i++)
		sleep_ms(10);
	return *counter - start;
}

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_timer;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaction(SIGRTMIN, &sa, NULL);
	sigaction(SIGRTMIN + 1, &sa, NULL);
	sigaction(SIGRTMIN + 2, &sa, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);

	timer_t periodic = make_timer(CLOCK_MONOTONIC, SIGRTMIN, 101);
	timer_t far = make_timer(CLOCK_REALTIME, SIGRTMIN + 1, 202);
	timer_t disarmed = make_timer(CLOCK_MONOTONIC, SIGRTMIN + 2, 303);
	struct itimerspec its = { { 0, PERIODIC_NS }, { 0, PERIODIC_NS } };
	if (timer_settime(periodic, 0, &its, NULL) < 0)
		die("timer_settime");
	struct itimerspec far_its = { { 0, 0 }, { FAR_S, 0 } };
	if (timer_settime(far, 0, &far_its, NULL) < 0)
		die("timer_settime");
	struct itimerval itv = { { 0, ITIMER_US }, { 0, ITIMER_US } };
	if (setitimer(ITIMER_REAL, &itv, NULL) < 0)
		die("setitimer");
	if (wait_more(&periodic_runs, 3) < 3 || wait_more(&alarm_runs, 3) < 3)
		die("the timers do not fire");

	ready();
	wait_go();

	/* The same timers, by the same ids. */
	struct itimerspec got;
	if (timer_gettime(periodic, &got) < 0)
		fail("the periodic timer is gone: %s", strerror(errno));
	else {
		CHECK(got.it_interval.tv_sec == 0 && got.it_interval.tv_nsec == PERIODIC_NS,
		      "the periodic timer's interval is %lld.%09ld s, it was 0.020 s", (long long)got.it_interval.tv_sec,
		      got.it_interval.tv_nsec);
		CHECK(got.it_value.tv_sec != 0 || got.it_value.tv_nsec != 0, "the periodic timer is disarmed");
		CHECK(got.it_value.tv_sec == 0 && got.it_value.tv_nsec <= PERIODIC_NS,
		      "the periodic timer fires next in %lld.%09ld s, more than its interval",
		      (long long)got.it_value.tv_sec, got.it_value.tv_nsec);
	}
	if (timer_gettime(far, &got) < 0)
		fail("the one-shot timer is gone: %s", strerror(errno));
	else {
		CHECK(got.it_interval.tv_sec == 0 && got.it_interval.tv_nsec == 0,
		      "the one-shot timer has an interval of %lld.%09ld s", (long long)got.it_interval.tv_sec,
		      got.it_interval.tv_nsec);
		CHECK(got.it_value.tv_sec > FAR_S - 300 && got.it_value.tv_sec < FAR_S,
		      "the one-shot timer fires in %lld s, it was due in %d s less the time of the test",
		      (long long)got.it_value.tv_sec, FAR_S);
	}
	if (timer_gettime(disarmed, &got) < 0)
		fail("the disarmed timer is gone: %s", strerror(errno));
	else
		CHECK(got.it_value.tv_sec == 0 && got.it_value.tv_nsec == 0 && got.it_interval.tv_sec == 0 &&
			      got.it_interval.tv_nsec == 0,
		      "the disarmed timer is armed: %lld.%09ld s, interval %lld.%09ld s", (long long)got.it_value.tv_sec,
		      got.it_value.tv_nsec, (long long)got.it_interval.tv_sec, got.it_interval.tv_nsec);
	struct itimerval igot;
	getitimer(ITIMER_REAL, &igot);
	CHECK(igot.it_interval.tv_sec == 0 && igot.it_interval.tv_usec == ITIMER_US,
	      "ITIMER_REAL's interval is %lld.%06ld s, it was 0.010 s", (long long)igot.it_interval.tv_sec,
	      (long)igot.it_interval.tv_usec);
	CHECK(igot.it_value.tv_sec == 0 && igot.it_value.tv_usec > 0 && igot.it_value.tv_usec <= ITIMER_US,
	      "ITIMER_REAL fires next in %lld.%06ld s", (long long)igot.it_value.tv_sec, (long)igot.it_value.tv_usec);
	getitimer(ITIMER_VIRTUAL, &igot);
	CHECK(igot.it_value.tv_sec == 0 && igot.it_value.tv_usec == 0, "ITIMER_VIRTUAL, never set, is armed");

	/* They go on firing. */
	int n = wait_more(&periodic_runs, 10);
	CHECK(n >= 10, "the periodic timer fired %d times in 5 s after the move", n);
	n = wait_more(&alarm_runs, 10);
	CHECK(n >= 10, "ITIMER_REAL fired %d times in 5 s after the move", n);
	int ov = timer_getoverrun(periodic);
	CHECK(ov >= 0 && ov < 100000, "the periodic timer's overrun is %d", ov);
	CHECK(max_overrun < 100000, "the periodic timer was delivered with an overrun of %d", max_overrun);
	CHECK(bad_value == 0, "a timer signal came with a wrong signal, value or code (%d)", (int)bad_value);
	CHECK(far_runs == 0, "the one-shot timer, an hour ahead, fired");
	CHECK(disarmed_runs == 0, "the disarmed timer fired");
	finish();
}
