/*
 * A file of DIR opened, written and then unlinked: after the move the
 * descriptor still reads its content, at the same offset, with its mode;
 * fstat says it has no link; it takes writes; and no name of it came back.
 */
#include "corpus.h"

#define SIZE 10000

static char content(int i) { return 'a' + (i * 13) % 26; }

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	int fd = open(corpus_path("doomed"), O_RDWR | O_CREAT | O_TRUNC, 0640);
	if (fd < 0)
		die("open");
	fchmod(fd, 0640);
	char buf[SIZE];
	for (int i = 0; i < SIZE; i++)
		buf[i] = content(i);
	if (write(fd, buf, SIZE) != SIZE)
		die("write");
	lseek(fd, 1234, SEEK_SET);
	if (unlink(corpus_path("doomed")) < 0)
		die("unlink");
	struct stat before;
	fstat(fd, &before);

	ready();
	wait_go();

	struct stat st;
	if (fstat(fd, &st) < 0) {
		fail("fstat of the deleted file: %s", strerror(errno));
		finish();
	}
	CHECK(st.st_nlink == 0, "the deleted file has %lu links", (unsigned long)st.st_nlink);
	CHECK(st.st_size == SIZE, "the deleted file has %lld bytes, not %d", (long long)st.st_size, SIZE);
	CHECK((st.st_mode & 07777) == (before.st_mode & 07777), "the deleted file's mode is %04o, it was %04o",
	      st.st_mode & 07777, before.st_mode & 07777);
	off_t off = lseek(fd, 0, SEEK_CUR);
	CHECK(off == 1234, "the offset is %lld, it was 1234", (long long)off);
	char got[SIZE];
	ssize_t n = pread(fd, got, SIZE, 0);
	CHECK(n == SIZE, "read %zd bytes of the deleted file, not %d", n, SIZE);
	if (n == SIZE)
		for (int i = 0; i < SIZE; i++)
			if (got[i] != content(i)) {
				fail("the deleted file's byte %d is %#x, not %#x", i, got[i], content(i));
				break;
			}
	CHECK(pwrite(fd, "Z", 1, SIZE) == 1, "write to the deleted file: %s", strerror(errno));
	char z = 0;
	CHECK(pread(fd, &z, 1, SIZE) == 1 && z == 'Z', "the deleted file does not read back what was written to it");
	CHECK(!exists("doomed"), "the deleted file has a name in DIR again");
	finish();
}
