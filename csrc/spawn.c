/*
 * spawn.c -- tp_child: a command with stdin and stdout on a socketpair.
 *
 * posix_spawnp() is used (glibc implements it with clone(CLONE_VFORK), so it
 * is cheap even for a big host process, and it reports an exec failure
 * synchronously and reaps the failed child itself). Every fd the core opens
 * is close-on-exec; fds the host opened without FD_CLOEXEC are closed in the
 * child with posix_spawn_file_actions_addclosefrom_np() where glibc has it
 * (2.34+); elsewhere only close-on-exec protects them.
 *
 * Reaping is by waitpid(pid) only, never wait(-1): the host may have other
 * children. Exit is awaited by polling a pidfd (Linux >= 5.3) in the one
 * blocking loop, tp__poll(); without pidfds, waitpid(WNOHANG) every 10 ms.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

struct tp_child {
    pid_t pid;
    int fd;     /* our end of the socketpair */
    int pidfd;  /* -1 when pidfds are unavailable */
    int reaped; /* 1 once waitpid() returned the status (or ECHILD) */
    int status; /* as from waitpid; -1 if unknown (SIGCHLD ignored) */
};

#define TP__CHILD_FREE_GRACE_MS 100
#define TP__CHILD_TERM_WAIT_MS 1000
#define TP__CHILD_POLL_MS 10

static int pidfd_open_(pid_t pid)
{
#if defined(SYS_pidfd_open) && !defined(TP_NO_PIDFD) /* test switch */
    /* pidfds are always close-on-exec. */
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

/* Moves fd to a number >= 3 (close-on-exec) so that the dup2() onto 0, 1 and
 * 2 in the child cannot clobber it. Returns the new fd or -1. */
static int dup_high(int fd)
{
    return fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

/* Signals a scripting host commonly ignores or handles (Python ignores
 * SIGPIPE and SIGXFSZ): reset to the default in the child, so that e.g.
 * `yes` dies of SIGPIPE instead of spinning on EPIPE. SIGHUP is left alone
 * so that nohup keeps working. */
static const int reset_signals[] = {SIGPIPE, SIGXFSZ, SIGCHLD, SIGINT, SIGTERM,
                                    SIGQUIT, SIGALRM, SIGUSR1, SIGUSR2};

tp_child *tp_spawn(const char *const argv[], const char *const envp[],
                   const char *cwd, int stderr_fd, char *errbuf, size_t errlen)
{
    if (!argv || !argv[0] || !argv[0][0]) {
        tp__errbuf(errbuf, errlen, "spawn: empty argv");
        errno = EINVAL;
        return NULL;
    }
    const char *name = argv[0];
    if (cwd) {
        /* posix_spawnp() would report a bad cwd as the program's ENOENT;
         * check it first to name the right culprit. */
        struct stat st;
        int e = 0;
        if (stat(cwd, &st) < 0)
            e = errno;
        else if (!S_ISDIR(st.st_mode))
            e = ENOTDIR;
        if (e) {
            tp__errbuf(errbuf, errlen, "spawn %s: cwd %s: %s", name, cwd,
                       strerror(e));
            errno = e;
            return NULL;
        }
    }
    if (stderr_fd >= 0 && tp__check_fd(stderr_fd, NULL, 0) < 0) {
        int e = errno;
        tp__errbuf(errbuf, errlen, "spawn %s: stderr fd %d: %s", name,
                   stderr_fd, strerror(e));
        errno = e;
        return NULL;
    }

    tp_child *ch = calloc(1, sizeof *ch);
    if (!ch) {
        tp__errbuf(errbuf, errlen, "spawn %s: out of memory", name);
        errno = ENOMEM;
        return NULL;
    }
    ch->fd = ch->pidfd = -1;
    ch->status = -1;

    int sv[2] = {-1, -1};
    int child_end = -1, err_copy = -1;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int fa_ok = 0, attr_ok = 0;
    int e = 0;
    const char *what = "socketpair";

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        e = errno;
        goto fail;
    }
    what = "dup";
    /* Both ends at >= 3: the host may have closed its stdin/stdout, and then
     * socketpair() hands out 0 or 1. */
    if (sv[1] < 3) {
        child_end = dup_high(sv[1]);
        if (child_end < 0) {
            e = errno;
            goto fail;
        }
        close(sv[1]);
        sv[1] = -1;
    } else {
        child_end = sv[1];
        sv[1] = -1;
    }
    if (sv[0] < 3) {
        int hi = dup_high(sv[0]);
        if (hi < 0) {
            e = errno;
            goto fail;
        }
        close(sv[0]);
        sv[0] = hi;
    }
    if (stderr_fd >= 0 && stderr_fd < 2) {
        err_copy = dup_high(stderr_fd);
        if (err_copy < 0) {
            e = errno;
            goto fail;
        }
        stderr_fd = err_copy;
    }

    what = "posix_spawn setup";
    if ((e = posix_spawn_file_actions_init(&fa)) != 0)
        goto fail;
    fa_ok = 1;
    if ((e = posix_spawn_file_actions_adddup2(&fa, child_end, 0)) != 0 ||
        (e = posix_spawn_file_actions_adddup2(&fa, child_end, 1)) != 0)
        goto fail;
    if (stderr_fd >= 0 &&
        (e = posix_spawn_file_actions_adddup2(&fa, stderr_fd, 2)) != 0)
        goto fail;
#if defined(__GLIBC__) &&                                                      \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    if ((e = posix_spawn_file_actions_addclosefrom_np(&fa, 3)) != 0)
        goto fail;
#endif
    if (cwd && (e = posix_spawn_file_actions_addchdir_np(&fa, cwd)) != 0)
        goto fail;

    if ((e = posix_spawnattr_init(&attr)) != 0)
        goto fail;
    attr_ok = 1;
    sigset_t empty, defaults;
    sigemptyset(&empty);
    sigemptyset(&defaults);
    for (size_t i = 0; i < sizeof reset_signals / sizeof reset_signals[0]; i++)
        sigaddset(&defaults, reset_signals[i]);
    if ((e = posix_spawnattr_setsigmask(&attr, &empty)) != 0 ||
        (e = posix_spawnattr_setsigdefault(&attr, &defaults)) != 0 ||
        (e = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK |
                                                 POSIX_SPAWN_SETSIGDEF)) != 0)
        goto fail;

    what = NULL;
    pid_t pid;
    e = posix_spawnp(&pid, name, &fa, &attr, (char *const *)argv,
                     envp ? (char *const *)envp : environ);
    if (e != 0)
        goto fail;

    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(child_end);
    if (err_copy >= 0)
        close(err_copy);
    ch->pid = pid;
    ch->fd = sv[0];
    ch->pidfd = pidfd_open_(pid);
    return ch;

fail:
    if (fa_ok)
        posix_spawn_file_actions_destroy(&fa);
    if (attr_ok)
        posix_spawnattr_destroy(&attr);
    if (sv[0] >= 0)
        close(sv[0]);
    if (sv[1] >= 0)
        close(sv[1]);
    if (child_end >= 0)
        close(child_end);
    if (err_copy >= 0)
        close(err_copy);
    free(ch);
    if (what)
        tp__errbuf(errbuf, errlen, "spawn %s: %s: %s", name, what, strerror(e));
    else
        tp__errbuf(errbuf, errlen, "spawn %s: %s", name, strerror(e));
    errno = e;
    return NULL;
}

int tp_child_fd(const tp_child *ch)
{
    return ch ? ch->fd : -1;
}

pid_t tp_child_pid(const tp_child *ch)
{
    return ch ? ch->pid : -1;
}

/* waitpid(pid, WNOHANG): 1 once reaped (status stored), 0 if running. */
static int try_reap(tp_child *ch)
{
    if (ch->reaped)
        return 1;
    for (;;) {
        int st;
        pid_t r = waitpid(ch->pid, &st, WNOHANG);
        if (r == ch->pid) {
            ch->status = st;
            break;
        }
        if (r == 0)
            return 0;
        if (errno == EINTR)
            continue;
        /* ECHILD: SIGCHLD is ignored (the kernel reaped it) or the host
         * reaped it itself; the status is lost, but no zombie exists. */
        ch->status = -1;
        break;
    }
    ch->reaped = 1;
    if (ch->pidfd >= 0) {
        close(ch->pidfd);
        ch->pidfd = -1;
    }
    return 1;
}

/* Waits for exit up to deadline (tp__deadline() form). */
static int wait_deadline(tp_child *ch, const tp_wait *w, int64_t deadline)
{
    while (!try_reap(ch)) {
        int r;
        if (ch->pidfd >= 0) {
            struct pollfd p = {ch->pidfd, POLLIN, 0};
            r = tp__poll(&p, 1, w, deadline, -1);
        } else {
            r = tp__poll(NULL, 0, w, deadline, TP__CHILD_POLL_MS);
        }
        if (r == TP_TIMEOUT || r == TP_INTERRUPTED)
            return r;
        if (r == TP_ERROR && errno != EINTR)
            return TP_ERROR;
    }
    return TP_DONE;
}

int tp_child_wait(tp_child *ch, const tp_wait *w, int *status)
{
    if (!ch) {
        errno = EINVAL;
        return TP_ERROR;
    }
    int r = wait_deadline(ch, w, tp__deadline(w));
    if (r == TP_DONE && status)
        *status = ch->status;
    return r;
}

int tp_child_kill(tp_child *ch, int sig)
{
    if (!ch) {
        errno = EINVAL;
        return -1;
    }
    /* Once reaped the pid may belong to another process: do nothing (like
     * subprocess.Popen.send_signal). Before that it is ours, a zombie at
     * worst, so kill() cannot hit a stranger. */
    if (ch->reaped)
        return 0;
    if (kill(ch->pid, sig) < 0 && errno != ESRCH)
        return -1;
    return 0;
}

static void wait_ms(tp_child *ch, int ms)
{
    tp_wait w = {.timeout_ms = ms};
    wait_deadline(ch, &w, tp__deadline(&w));
}

void tp_child_free(tp_child *ch)
{
    if (!ch)
        return;
    if (ch->fd >= 0)
        close(ch->fd); /* the child sees EOF on stdin */
    if (!try_reap(ch)) {
        /* A short grace for a child that exits on EOF by itself. */
        wait_ms(ch, TP__CHILD_FREE_GRACE_MS);
        if (!ch->reaped) {
            tp_child_kill(ch, SIGTERM);
            wait_ms(ch, TP__CHILD_TERM_WAIT_MS);
        }
        if (!ch->reaped) {
            tp_child_kill(ch, SIGKILL);
            while (waitpid(ch->pid, NULL, 0) < 0 && errno == EINTR)
                ;
            ch->reaped = 1;
        }
    }
    if (ch->pidfd >= 0)
        close(ch->pidfd);
    free(ch);
}

int tp__child_pidfd(const tp_child *ch)
{
    return ch->pidfd;
}

int tp__child_exited(const tp_child *ch)
{
    if (ch->reaped)
        return 1;
    siginfo_t si;
    memset(&si, 0, sizeof si);
    /* WNOWAIT: look without reaping. ECHILD: already reaped by the system
     * (SIGCHLD ignored), i.e. gone. */
    if (waitid(P_PID, (id_t)ch->pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0)
        return errno == ECHILD;
    return si.si_pid == ch->pid;
}
