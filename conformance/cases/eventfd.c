/*
 * An eventfd with a count in it (5, then 37 added): after the move it
 * reads 42 at once, then would block; it still counts. (An EFD_SEMAPHORE
 * eventfd is eventfd_semaphore.)
 */
#include "corpus.h"
#include <stdint.h>
#include <sys/eventfd.h>

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	int efd = eventfd(5, EFD_NONBLOCK);
	if (efd < 0)
		die("eventfd");
	uint64_t v = 37;
	if (write(efd, &v, 8) != 8)
		die("write");
	ready();
	wait_go();
	CHECK(fcntl(efd, F_GETFL) & O_NONBLOCK, "the eventfd lost O_NONBLOCK");
	v = 0;
	CHECK(read(efd, &v, 8) == 8 && v == 42, "the eventfd read %llu, not 42 (%s)", (unsigned long long)v, strerror(errno));
	CHECK(read(efd, &v, 8) < 0 && errno == EAGAIN, "the eventfd reads again after it was read to 0");
	v = 2;
	CHECK(write(efd, &v, 8) == 8 && write(efd, &v, 8) == 8 && read(efd, &v, 8) == 8 && v == 4,
	      "the eventfd after the move: 2 + 2 read %llu", (unsigned long long)v);
	finish();
}
