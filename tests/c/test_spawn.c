/* test_spawn.c -- tp_spawn / tp_child: real children (cat, sh, yes, sleep). */
#include "harness.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <time.h>

static const char *const ENV_CLEAN[] = {"FOO=bar", "PATH=/usr/bin:/bin", NULL};

/* Reads from fd until EOF or max bytes; bounded by timeout_ms. */
static ssize_t read_all(int fd, char *buf, size_t max, int timeout_ms)
{
    size_t got = 0;
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, timeout_ms) <= 0)
            return -1;
        ssize_t n = read(fd, buf + got, max - got);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            return (ssize_t)got;
        got += (size_t)n;
        if (got == max)
            return (ssize_t)got;
    }
}

/* 1 if the test process has no child left at all (no zombie). */
static int no_children(void)
{
    return waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

TEST(cat_echo_and_status)
{
    const char *argv[] = {"cat", NULL};
    char err[256] = "";
    tp_child *ch = tp_spawn(argv, NULL, NULL, -1, err, sizeof err);
    CHECK_MSG(ch, "%s", err);
    CHECK(tp_child_pid(ch) > 0);
    int fd = tp_child_fd(ch);
    CHECK(fd >= 3);
    CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    CHECK(write(fd, "hello\n", 6) == 6);
    CHECK(shutdown(fd, SHUT_WR) == 0); /* cat sees EOF on stdin */
    char buf[64];
    CHECK(read_all(fd, buf, sizeof buf, 5000) == 6);
    CHECK(memcmp(buf, "hello\n", 6) == 0);
    tp_wait w = {.timeout_ms = 5000};
    int st = 12345;
    CHECK(tp_child_wait(ch, &w, &st) == TP_DONE);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* Waiting again returns the same status. */
    st = 12345;
    CHECK(tp_child_wait(ch, NULL, &st) == TP_DONE);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(tp_child_kill(ch, SIGTERM) == 0); /* reaped: a no-op */
    tp_child_free(ch);
    CHECK(no_children());
}

TEST(exit_status)
{
    const char *argv[] = {"sh", "-c", "exit 3", NULL};
    char err[256];
    tp_child *ch = tp_spawn(argv, NULL, NULL, -1, err, sizeof err);
    CHECK_MSG(ch, "%s", err);
    tp_wait w = {.timeout_ms = 5000};
    int st;
    CHECK(tp_child_wait(ch, &w, &st) == TP_DONE);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 3);
    tp_child_free(ch);
    CHECK(no_children());
}

TEST(missing_program)
{
    char err[256] = "";
    const char *argv[] = {"tp-no-such-program-xyz", "arg", NULL};
    tp_child *ch = tp_spawn(argv, NULL, NULL, -1, err, sizeof err);
    CHECK(ch == NULL);
    CHECK_MSG(strcmp(err, "spawn tp-no-such-program-xyz: No such file or "
                          "directory") == 0,
              "%s", err);
    CHECK(errno == ENOENT);
    const char *argv2[] = {"./nope", NULL};
    ch = tp_spawn(argv2, NULL, NULL, -1, err, sizeof err);
    CHECK(ch == NULL);
    CHECK_MSG(strcmp(err, "spawn ./nope: No such file or directory") == 0, "%s",
              err);
    /* Not executable. */
    const char *argv3[] = {"/etc/passwd", NULL};
    ch = tp_spawn(argv3, NULL, NULL, -1, err, sizeof err);
    CHECK(ch == NULL);
    CHECK_MSG(strstr(err, "spawn /etc/passwd: Permission denied"), "%s", err);
    CHECK(no_children()); /* the failed child was reaped */
    const char *empty[] = {NULL};
    CHECK(tp_spawn(empty, NULL, NULL, -1, err, sizeof err) == NULL);
    CHECK(tp_spawn(NULL, NULL, NULL, -1, NULL, 0) == NULL);
    tp_child_free(NULL);
}

TEST(env_and_cwd)
{
    const char *argv[] = {"sh", "-c", "echo $FOO; pwd", NULL};
    char err[256];
    tp_child *ch = tp_spawn(argv, ENV_CLEAN, "/tmp", -1, err, sizeof err);
    CHECK_MSG(ch, "%s", err);
    char buf[64] = "";
    ssize_t n = read_all(tp_child_fd(ch), buf, sizeof buf - 1, 5000);
    CHECK(n > 0);
    buf[n] = '\0';
    CHECK_MSG(strcmp(buf, "bar\n/tmp\n") == 0, "%s", buf);
    tp_child_free(ch);
    ch = tp_spawn(argv, NULL, "/no/such/dir", -1, err, sizeof err);
    CHECK(ch == NULL);
    CHECK_MSG(strcmp(err, "spawn sh: cwd /no/such/dir: No such file or "
                          "directory") == 0,
              "%s", err);
    CHECK(no_children());
}

TEST(stderr_redirect_and_inherit)
{
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    const char *argv[] = {"sh", "-c", "echo out; echo err >&2", NULL};
    char err[256];
    tp_child *ch = tp_spawn(argv, NULL, NULL, p[1], err, sizeof err);
    CHECK_MSG(ch, "%s", err);
    close(p[1]);
    char buf[64] = "";
    CHECK(read_all(p[0], buf, sizeof buf, 5000) == 4);
    CHECK(memcmp(buf, "err\n", 4) == 0);
    CHECK(read_all(tp_child_fd(ch), buf, sizeof buf, 5000) == 4);
    CHECK(memcmp(buf, "out\n", 4) == 0);
    close(p[0]);
    tp_child_free(ch);
    /* A closed stderr fd is an argument error, before any fork. */
    ch = tp_spawn(argv, NULL, NULL, 999, err, sizeof err);
    CHECK(ch == NULL);
    CHECK_MSG(strstr(err, "stderr fd 999"), "%s", err);
    CHECK(no_children());
}

TEST(other_fds_closed_in_child)
{
    /* An fd the host opened WITHOUT close-on-exec must not leak either. */
    int leak = open("/dev/null", O_RDONLY);
    CHECK(leak >= 0);
    CHECK(dup2(leak, 57) == 57);
    close(leak);
    const char *argv[] = {
        "sh", "-c",
        "for f in 0 1 2 57; do test -e /proc/$$/fd/$f && printf $f.; done",
        NULL};
    char err[256];
    tp_child *ch = tp_spawn(argv, NULL, NULL, -1, err, sizeof err);
    CHECK_MSG(ch, "%s", err);
    char buf[64] = "";
    ssize_t n = read_all(tp_child_fd(ch), buf, sizeof buf - 1, 5000);
    close(57);
    CHECK(n >= 0);
    buf[n] = '\0';
    /* stderr (2) may be closed in the test runner; 57 must be absent. */
    CHECK_MSG(strncmp(buf, "0.1.", 4) == 0 && !strstr(buf, "57"), "%s", buf);
    tp_child_free(ch);
}

TEST(signals_reset_in_child)
{
    /* The host ignores SIGPIPE (as Python does) and blocks SIGTERM: the
     * child must get the defaults. A non-interactive sh cannot undo an
     * inherited SIG_IGN, so `kill -PIPE $$` tells which one it got. */
    struct sigaction ign = {.sa_handler = SIG_IGN}, old;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, &old);
    sigset_t term, oldmask;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_BLOCK, &term, &oldmask);

    char err[256];
    const char *pipe_self[] = {"sh", "-c", "kill -PIPE $$; echo survived",
                               NULL};
    tp_child *ch = tp_spawn(pipe_self, NULL, NULL, -1, err, sizeof err);
    const char *sl[] = {"sleep", "10", NULL};
    tp_child *ch2 = tp_spawn(sl, NULL, NULL, -1, err, sizeof err);
    sigaction(SIGPIPE, &old, NULL);
    sigprocmask(SIG_SETMASK, &oldmask, NULL);
    CHECK(ch && ch2);

    tp_wait w = {.timeout_ms = 5000};
    int st = 0, st2 = 0;
    int r = tp_child_wait(ch, &w, &st);
    int k = tp_child_kill(ch2, SIGTERM);
    int r2 = tp_child_wait(ch2, &w, &st2);
    tp_child_free(ch);
    tp_child_free(ch2);
    CHECK(r == TP_DONE && r2 == TP_DONE && k == 0);
    CHECK_MSG(WIFSIGNALED(st) && WTERMSIG(st) == SIGPIPE, "status %#x", st);
    CHECK_MSG(WIFSIGNALED(st2) && WTERMSIG(st2) == SIGTERM, "status %#x", st2);
    CHECK(no_children());
}

static int interrupt_calls;
static int interrupt_now(void *arg)
{
    (void)arg;
    interrupt_calls++;
    return 1;
}

TEST(wait_timeout_interrupt_and_free_kills)
{
    const char *argv[] = {"sleep", "30", NULL};
    char err[256];
    tp_child *ch = tp_spawn(argv, NULL, NULL, -1, err, sizeof err);
    CHECK_MSG(ch, "%s", err);
    pid_t pid = tp_child_pid(ch);
    int st = 7;
    CHECK(tp_child_wait(ch, NULL, &st) == TP_TIMEOUT); /* non-blocking */
    tp_wait w = {.timeout_ms = 50};
    int64_t t0 = now_ms();
    CHECK(tp_child_wait(ch, &w, &st) == TP_TIMEOUT);
    CHECK(now_ms() - t0 >= 45);
    CHECK(st == 7);
    tp_wait wi = {.timeout_ms = -1, .interrupted = interrupt_now};
    CHECK(tp_child_wait(ch, &wi, &st) == TP_INTERRUPTED);
    CHECK(interrupt_calls >= 1);
    /* free: closes, waits a short grace, SIGTERM, reaps. */
    t0 = now_ms();
    tp_child_free(ch);
    CHECK(now_ms() - t0 < 3000);
    CHECK(kill(pid, 0) < 0 && errno == ESRCH);
    CHECK(no_children());
}

TEST(free_kills_term_resistant_child)
{
    /* Ignores SIGTERM: tp_child_free escalates to SIGKILL after ~1 s. */
    const char *argv[] = {"sh", "-c", "trap '' TERM; echo ready; exec sleep 30",
                          NULL};
    char err[256];
    tp_child *ch = tp_spawn(argv, NULL, NULL, -1, err, sizeof err);
    CHECK_MSG(ch, "%s", err);
    char buf[16];
    CHECK(read_all(tp_child_fd(ch), buf, 6, 5000) == 6); /* trap is set */
    pid_t pid = tp_child_pid(ch);
    tp_child_free(ch);
    CHECK(kill(pid, 0) < 0 && errno == ESRCH);
    CHECK(no_children());
}

TEST(free_after_eof_reaps_cat)
{
    const char *argv[] = {"cat", NULL};
    char err[256];
    tp_child *ch = tp_spawn(argv, NULL, NULL, -1, err, sizeof err);
    CHECK_MSG(ch, "%s", err);
    pid_t pid = tp_child_pid(ch);
    int64_t t0 = now_ms();
    tp_child_free(ch); /* cat exits on EOF within the grace: no SIGTERM */
    CHECK(now_ms() - t0 < 1000);
    CHECK(kill(pid, 0) < 0 && errno == ESRCH);
    CHECK(no_children());
}

TEST(sigchld_ignored_no_zombie)
{
    struct sigaction ign = {.sa_handler = SIG_IGN}, old;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGCHLD, &ign, &old);
    const char *argv[] = {"sh", "-c", "read x; exit 5", NULL};
    char err[256];
    tp_child *ch = tp_spawn(argv, NULL, NULL, -1, err, sizeof err);
    int ok = ch != NULL;
    int r = -99, st = 0, r2 = -99, st2 = 0;
    pid_t pid = 0;
    if (ok) {
        pid = tp_child_pid(ch);
        tp_wait w0 = {.timeout_ms = 100};
        r = tp_child_wait(ch, &w0, &st); /* still running: timeout */
        ok = write(tp_child_fd(ch), "go\n", 3) == 3;
        tp_wait w = {.timeout_ms = 5000};
        r2 = tp_child_wait(ch, &w, &st2);
        tp_child_free(ch);
    }
    sigaction(SIGCHLD, &old, NULL);
    CHECK_MSG(ok, "%s", err);
    CHECK(r == TP_TIMEOUT);
    CHECK(r2 == TP_DONE);
    CHECK(st2 == -1); /* the kernel reaped it: status unknown */
    CHECK(kill(pid, 0) < 0 && errno == ESRCH);
    CHECK(no_children());
}

TEST(output_survives_exit)
{
    /* The child writes 64 KiB and exits before we read anything. */
    const char *argv[] = {"sh", "-c", "head -c 65536 /dev/zero; exit 0", NULL};
    char err[256];
    tp_child *ch = tp_spawn(argv, NULL, NULL, -1, err, sizeof err);
    CHECK_MSG(ch, "%s", err);
    /* Our side first shrinks nothing: the socketpair buffer may be smaller
     * than 64 KiB, so read while waiting. */
    static char buf[70000];
    ssize_t n = read_all(tp_child_fd(ch), buf, sizeof buf, 5000);
    CHECK(n == 65536);
    tp_wait w = {.timeout_ms = 5000};
    int st;
    CHECK(tp_child_wait(ch, &w, &st) == TP_DONE);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    tp_child_free(ch);
}

TEST(host_without_stdin_stdout)
{
    /* In a forked copy with fds 0 and 1 closed, socketpair() returns low
     * numbers; the child must still get its end on 0 and 1. */
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(0);
        close(1);
        const char *argv[] = {"cat", NULL};
        tp_child *ch = tp_spawn(argv, NULL, NULL, -1, NULL, 0);
        if (!ch || tp_child_fd(ch) < 3)
            _exit(2);
        int fd = tp_child_fd(ch);
        if (write(fd, "abc", 3) != 3 || shutdown(fd, SHUT_WR) < 0)
            _exit(3);
        char buf[8];
        if (read_all(fd, buf, sizeof buf, 5000) != 3 ||
            memcmp(buf, "abc", 3) != 0)
            _exit(4);
        tp_child_free(ch);
        _exit(0);
    }
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);
}

int main(void)
{
    RUN(cat_echo_and_status);
    RUN(exit_status);
    RUN(missing_program);
    RUN(env_and_cwd);
    RUN(stderr_redirect_and_inherit);
    RUN(other_fds_closed_in_child);
    RUN(signals_reset_in_child);
    RUN(wait_timeout_interrupt_and_free_kills);
    RUN(free_kills_term_resistant_child);
    RUN(free_after_eof_reaps_cat);
    RUN(sigchld_ignored_no_zombie);
    RUN(output_survives_exit);
    RUN(host_without_stdin_stdout);
    return DONE_TESTS();
}
