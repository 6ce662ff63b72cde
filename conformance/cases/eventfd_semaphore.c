/*
 * An EFD_SEMAPHORE eventfd with a count of 3: after the move it reads 1,
 * three times, then would block.
 *
 * criu-cannot: CRIU 4.2.1 recreates every eventfd as eventfd(count, 0) (criu/eventfd.c): EFD_SEMAPHORE, which fdinfo shows as eventfd-semaphore: 1, is lost, and the restored eventfd reads its whole count at once
 * phaul-refuses: criu
 */
#include "corpus.h"
#include <stdint.h>
#include <sys/eventfd.h>

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	int sem = eventfd(0, EFD_NONBLOCK | EFD_SEMAPHORE);
	if (sem < 0)
		die("eventfd");
	uint64_t v = 3;
	if (write(sem, &v, 8) != 8)
		die("write");
	ready();
	wait_go();
	for (int i = 0; i < 3; i++) {
		v = 0;
		ssize_t n = read(sem, &v, 8);
		if (n < 0)
			fail("read %d of the semaphore eventfd: %s", i + 1, strerror(errno));
		else
			CHECK(v == 1, "read %d of the semaphore eventfd gave %llu, not 1", i + 1, (unsigned long long)v);
	}
	CHECK(read(sem, &v, 8) < 0 && errno == EAGAIN, "the semaphore eventfd reads a fourth time: it counted more than 3");
	finish();
}
