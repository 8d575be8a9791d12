# Issue 7, cases 1-3 for the Perl binding (mirrors
# tests/python/test_30_hostile_args.py and test_31_lifecycle.py):
#  1. every entry point, each argument in turn replaced by a hostile value
#     (undef, wrong types, references, globs, objects of another class, fd
#     -1, a closed fd, huge and negative numbers, NaN, wide characters,
#     NUL bytes): it croaks or works, never crashes, and the open-fd count
#     is unchanged;
#  2. read(0), read(-1), write(''), a huge size: a clean croak or 0;
#  3. use after close, double close, use in a forked child: a clear
#     "closed" error, no double free (tests/run --sanitize runs this under
#     ASan).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX ();
use Socket qw(AF_UNIX SOCK_STREAM PF_UNSPEC);
use TPTest;

use Net::TLSPump qw(:all);

test_deadline(120);

sub open_fds { opendir(my $d, '/proc/self/fd') or die $!; scalar grep { /^\d+$/ } readdir $d }

package Hostile::Other { sub new { bless {}, shift } }

package main;

my $closed_fd = 3999;
ok(!defined POSIX::dup($closed_fd) || 1, 'closed fd chosen');
open(my $closed_fh, '<', '/dev/null') or die $!;
close $closed_fh;

# Never small ints: they could name our own fds (stdout is TAP's pipe).
my @HOSTILE = (
    undef, '', "\0", 'abc', "x" x 70000, "\x{263A}", -1, -2**31 - 1, 2**31,
    2**64, -2**64, 1e300, -1e300, 0.5, 9**9**9, -9**9**9, (9**9**9) / (9**9**9),
    [], [undef], ['x', 'y'], {}, { a => 1 }, sub { 1 }, \"x", \\1,
    *STDERR, \*STDERR, Hostile::Other->new, $closed_fh, $closed_fd,
);

my $sctx = Net::TLSPump::Context->server;
my $cctx = Net::TLSPump::Context->client(verify => 0);

# Runs $code->($v) for each hostile value: croak or return, nothing else.
sub each_hostile {
    my ($name, $code) = @_;
    my ($croaked, $returned) = (0, 0);
    local $SIG{__WARN__} = sub { };    # warnings about hostile values are fine
    for my $v (@HOSTILE) {
        my @r = eval { $code->($v) };
        if ($@) { $croaked++ } else { $returned++ }
        for my $o (@r) {
            $o->close if ref($o) && Scalar::Util::blessed($o) && $o->can('close');
        }
    }
    pass("$name: $croaked croaked, $returned returned, no crash");
}
use Scalar::Util ();

# A Conn whose peer is gone: nothing can block, even without timeouts.
sub dead_conn {
    socketpair(my $a, my $b, AF_UNIX, SOCK_STREAM, PF_UNSPEC) or die $!;
    close $b;
    return ($cctx->wrap($a), $a);
}

my $fds0 = open_fds();

# ---- 1 ------------------------------------------------------------------------
for my $opt (qw(cert key client_ca alpn min_version write_buffer)) {
    each_hostile("Context->server($opt)", sub { Net::TLSPump::Context->server($opt => $_[0]) });
}
each_hostile('Context->server(odd list)', sub { Net::TLSPump::Context->server($_[0]) });
for my $opt (qw(ca verify cert key ca_dir alpn min_version write_buffer)) {
    each_hostile("Context->client($opt)", sub { Net::TLSPump::Context->client($opt => $_[0]) });
}
each_hostile('Context->server as a function', sub { Net::TLSPump::Context::server($_[0]) });
each_hostile('wrap(handle)', sub { $sctx->wrap($_[0]) });
{
    socketpair(my $a, my $b, AF_UNIX, SOCK_STREAM, PF_UNSPEC) or die $!;
    each_hostile('wrap(server_hostname)', sub { $cctx->wrap($a, server_hostname => $_[0]) });
    my $vctx = Net::TLSPump::Context->client(ca => $sctx->cert_pem);
    each_hostile('verifying wrap(server_hostname)', sub { $vctx->wrap($a, server_hostname => $_[0]) });
    each_hostile('wrap on a wrong invocant', sub { Net::TLSPump::Context::wrap($_[0], $a) });
}
for my $m (qw(handshake flush shutdown wait)) {
    each_hostile("Conn->$m(timeout)", sub {
        my ($c, $s) = dead_conn();
        my @r = eval { $c->$m(timeout => $_[0]) };
        $c->close;
        die $@ if $@;
        @r;
    });
    each_hostile("Conn::$m on a wrong invocant", sub { no strict 'refs'; &{"Net::TLSPump::Conn::$m"}($_[0]) });
}
each_hostile('Conn->read(max)', sub {
    my ($c, $s) = dead_conn();
    my @r = eval { $c->read($_[0]) };
    $c->close;
    die $@ if $@;
    @r;
});
each_hostile('Conn->read(timeout)', sub {
    my ($c, $s) = dead_conn();
    my @r = eval { $c->read(undef, timeout => $_[0]) };
    $c->close;
    die $@ if $@;
    @r;
});
each_hostile('Conn->write(data)', sub {
    my ($c, $s) = dead_conn();
    my @r = eval { $c->write($_[0]) };
    $c->close;
    die $@ if $@;
    @r;
});
each_hostile('Conn->forward(target)', sub {
    my ($c, $s) = dead_conn();
    my @r = eval { $c->forward($_[0]) };
    $c->close;
    die $@ if $@;
    @r;
});
{
    socketpair(my $t1, my $t2, AF_UNIX, SOCK_STREAM, PF_UNSPEC) or die $!;
    for my $opt (qw(idle_timeout close_target_write)) {
        each_hostile("Conn->forward($opt)", sub {
            my ($c, $s) = dead_conn();
            my @r = eval { $c->forward($t1, $opt => $_[0]) };
            $c->close;
            die $@ if $@;
            @r;
        });
    }
}
each_hostile('spawn(argv)', sub { Net::TLSPump::spawn($_[0]) });
each_hostile('spawn([prog])', sub { Net::TLSPump::spawn([$_[0]]) });
each_hostile('spawn([true, arg])', sub { Net::TLSPump::spawn(['true', $_[0]]) });
for my $opt (qw(env cwd stderr)) {
    each_hostile("spawn($opt)", sub { Net::TLSPump::spawn(['true'], $opt => $_[0]) });
}
{
    my $ch = Net::TLSPump::spawn(['true']);
    $ch->wait(timeout => 10);    # exited: no wait below blocks
    each_hostile('Child->wait(timeout)', sub { $ch->wait(timeout => $_[0]) });
    each_hostile('Child->kill(sig)', sub {
        my $v = $_[0];
        # real signals are not sent at random (only already-reaped: no-op)
        $ch->kill($v);
    });
    $ch->close;
}
for my $opt (qw(listen ctx command backend max_conns workers handshake_timeout
                idle_timeout grace log log_json)) {
    each_hostile("Server->new($opt)", sub {
        my %o = (listen => '127.0.0.1:0', ctx => $sctx, command => ['true'], log => undef);
        delete $o{command} if $opt eq 'backend';
        $o{$opt} = $_[0];
        Net::TLSPump::Server->new(%o);
    });
}
is(open_fds(), $fds0, 'case 1: the open-fd count is unchanged');

# ---- 2 ------------------------------------------------------------------------
{
    socketpair(my $a, my $b, AF_UNIX, SOCK_STREAM, PF_UNSPEC) or die $!;
    my $s = $sctx->wrap($a);
    my $c = Net::TLSPump::Context->client(verify => 0)->wrap($b);
    handshake_pair($c, $s);
    for my $n (0, -1, -2**63) {
        my $ok = eval { $c->read($n); 1 };
        ok(!$ok, "read($n) croaks") or diag "returned";
    }
    is($c->read, undef, 'the connection is unharmed: would block');
    is($c->write(''), 0, "write('') is 0");
    is($c->buffered, 0, 'nothing buffered');
    $s->write('abc');
    is($c->read(2**62, timeout => 5), 'abc', 'a huge max is clamped, not wrapped');
    $s->write('def');
    is($c->read(1e300, timeout => 5), 'def', 'a float max too');
    # a 64 MiB string: the count accepted is the buffer's, never truncated
    my $big = "\0" x (64 << 20);
    my $n = $c->write($big);
    ok($n > 0 && $n <= (64 << 20), "64 MiB write accepted $n");
    $c->close;
    $s->close;
}

# ---- 3 ------------------------------------------------------------------------
{
    socketpair(my $a, my $b, AF_UNIX, SOCK_STREAM, PF_UNSPEC) or die $!;
    my $s = $sctx->wrap($a);
    my $c = Net::TLSPump::Context->client(ca => $sctx->cert_pem)->wrap($b, server_hostname => 'localhost');
    handshake_pair($c, $s);
    pipe(my $r, my $w) or die $!;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        close $r;
        my $bad = 0;
        for my $m (qw(write read flush shutdown)) {
            my $ok = eval { $m eq 'write' ? $c->write('from the child') : $c->$m; 1 };
            my $e = $@;
            if ($ok) { $bad |= 1 }
            elsif ("$e" !~ /fork/) { $bad |= 2; print $w "$m: $e\n" }
        }
        $c->close;    # the child's copy only
        $s->close;
        close $w;
        POSIX::_exit($bad);
    }
    close $w;
    waitpid($pid, 0);
    my $msg = do { local $/; <$r> } // '';
    is($? >> 8, 0, 'in a forked child every call croaks naming the fork') or diag $msg;
    is($c->write('from the parent'), 15, 'the parent is unaffected');
    is($s->read(undef, timeout => 5), 'from the parent', '... nothing of the child came');
    $c->close;
    $c->close;
    pass('double close is a no-op');
    for my $m (qw(handshake read flush shutdown wait fileno want buffered)) {
        my $ok = eval { $c->$m; 1 };
        like("$@", qr/closed/, "$m after close croaks 'closed'") if !$ok;
        ok(!$ok, "$m after close croaks");
    }
    my $ok = eval { $c->write('x'); 1 };
    ok(!$ok && "$@" =~ /closed/, 'write after close croaks "closed"');
    $s->close;
    my $ch = Net::TLSPump::spawn(['cat']);
    $ch->close;
    $ch->close;
    pass('Child double close');
    ok(!eval { $ch->fileno; 1 }, 'Child fileno after close croaks');
    my $srv = Net::TLSPump::Server->new(listen => '127.0.0.1:0', ctx => $sctx,
                                        command => ['true'], log => undef);
    $srv->close;
    $srv->close;
    ok(!eval { $srv->run; 1 }, 'Server run after close croaks');
    like("$@", qr/closed/, '... saying closed');
}
is(open_fds(), $fds0, 'the open-fd count is unchanged at the end');
done_testing;
