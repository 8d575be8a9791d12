/* util.c -- time, the one blocking wait, fd checks, SIGPIPE-free writes. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void tp__errbuf(char *errbuf, size_t errlen, const char *fmt, ...)
{
    if (!errbuf || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
}

void tp__strlcpy(char *dst, const char *src, size_t dstlen)
{
    if (dstlen == 0)
        return;
    if (!src)
        src = "";
    size_t n = strlen(src);
    if (n >= dstlen)
        n = dstlen - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

int64_t tp__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t tp__deadline(const tp_wait *w)
{
    if (!w || w->timeout_ms == 0)
        return 0;
    if (w->timeout_ms < 0)
        return -1;
    return tp__now_ms() + w->timeout_ms;
}

int tp__poll(struct pollfd *fds, int n, const tp_wait *w, int64_t deadline,
             int extra_timeout_ms)
{
    if (deadline == 0)
        return TP_TIMEOUT;
    /* Both limits are absolute, so waking up for interrupt checks does not
     * restart either of them. */
    int64_t extra_deadline =
        extra_timeout_ms >= 0 ? tp__now_ms() + extra_timeout_ms : -1;
    int check = w && w->interrupted;
    for (;;) {
        int64_t now = tp__now_ms();
        int64_t slice = -1;
        if (deadline > 0) {
            slice = deadline - now;
            if (slice <= 0)
                return TP_TIMEOUT;
        }
        if (extra_deadline >= 0) {
            int64_t e = extra_deadline - now;
            if (e < 0)
                e = 0;
            if (slice < 0 || e <= slice)
                slice = e;
        }
        /* Wake up regularly so the binding can run signal handlers even
         * when the signal was delivered to another thread. */
        if (check && (slice < 0 || slice > TP_INTERRUPT_CHECK_MS))
            slice = TP_INTERRUPT_CHECK_MS;
        int r = poll(fds, (nfds_t)n, (int)slice);
        if (r > 0)
            return r;
        if (r < 0 && errno != EINTR)
            return TP_ERROR;
        if (check && w->interrupted(w->arg))
            return TP_INTERRUPTED;
        if (r == 0 && extra_deadline >= 0 && tp__now_ms() >= extra_deadline)
            return 0;
    }
}

static unsigned long fork_generation;
static pthread_once_t fork_hook_once = PTHREAD_ONCE_INIT;

static void count_fork_in_child(void)
{
    fork_generation++; /* the child runs single-threaded here */
}

static void install_fork_hook(void)
{
    pthread_atfork(NULL, NULL, count_fork_in_child);
}

unsigned long tp__fork_generation(void)
{
    pthread_once(&fork_hook_once, install_fork_hook);
    return __atomic_load_n(&fork_generation, __ATOMIC_RELAXED);
}

int tp__check_fd(int fd, char *errbuf, size_t errlen)
{
    if (fd < 0) {
        tp__errbuf(errbuf, errlen, "invalid file descriptor %d", fd);
        errno = EBADF;
        return -1;
    }
    if (fcntl(fd, F_GETFL) < 0) {
        int e = errno;
        tp__errbuf(errbuf, errlen, "file descriptor %d is not open: %s", fd,
                   strerror(e));
        errno = e;
        return -1;
    }
    return 0;
}

int tp__set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -1;
    if (fl & O_NONBLOCK)
        return 0;
    return fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

int tp__is_socket(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

ssize_t tp__write_nosig(int fd, const void *buf, size_t len, int is_socket)
{
    if (is_socket)
        return send(fd, buf, len, MSG_NOSIGNAL);
    /* A pipe: block SIGPIPE in this thread only, and swallow the one our
     * write raised, so the host's disposition is never consulted. */
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    int already_pending = 0;
    sigset_t pend;
    if (sigpending(&pend) == 0)
        already_pending = sigismember(&pend, SIGPIPE);
    ssize_t r = write(fd, buf, len);
    int e = errno;
    if (r < 0 && e == EPIPE && !already_pending) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = e;
    return r;
}
