/*
 * unix_listen.h: a listening unix stream socket bound to DIR/name, and a
 * client connected to it (not accepted yet), for the cases that need one.
 */
#include <sys/socket.h>
#include <sys/un.h>

/* sa gets the address; l the listener, c the client. */
static void unix_listen_connect(const char *name, struct sockaddr_un *sa, int *l, int *c)
{
	*sa = (struct sockaddr_un){ .sun_family = AF_UNIX };
	if (strlen(corpus_path(name)) >= sizeof(sa->sun_path))
		die("DIR is too long a path for a unix socket");
	strcpy(sa->sun_path, corpus_path(name));
	*l = socket(AF_UNIX, SOCK_STREAM, 0);
	if (*l < 0 || bind(*l, (struct sockaddr *)sa, sizeof(*sa)) < 0 || listen(*l, 8) < 0)
		die("listen on %s", sa->sun_path);
	*c = socket(AF_UNIX, SOCK_STREAM, 0);
	if (*c < 0 || connect(*c, (struct sockaddr *)sa, sizeof(*sa)) < 0)
		die("connect");
}
