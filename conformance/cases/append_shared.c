/*
 * A log on a filesystem both hosts share, appended to all the time: it is
 * the same file after the move, and the appends go on at its end.
 */
#include "corpus.h"

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	int fd = open(corpus_path("app.log"), O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd < 0)
		die("open");
	long n = 0;
	char line[64];
	for (; n < 20; n++) {
		int len = snprintf(line, sizeof(line), "line %ld\n", n);
		write(fd, line, len);
	}
	ready();
	while (!exists("go")) {
		int len = snprintf(line, sizeof(line), "line %ld\n", n++);
		write(fd, line, len);
		sleep_ms(5);
	}
	struct stat st;
	fstat(fd, &st);
	off_t end = lseek(fd, 0, SEEK_CUR);
	CHECK(end == st.st_size, "the offset is %lld, the file has %lld bytes", (long long)end, (long long)st.st_size);
	int len = snprintf(line, sizeof(line), "line %ld\n", n++);
	CHECK(write(fd, line, len) == len, "append after the move: %s", strerror(errno));
	/* Every line is there, in order, once. */
	FILE *f = fopen(corpus_path("app.log"), "r");
	long want = 0, got;
	while (f && fscanf(f, "line %ld\n", &got) == 1) {
		if (got != want) {
			fail("line %ld where line %ld was due", got, want);
			break;
		}
		want++;
	}
	if (f)
		fclose(f);
	CHECK(want == n, "%ld lines in the log, %ld written", want, n);
	finish();
}
