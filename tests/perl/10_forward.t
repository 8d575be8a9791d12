# spawn + forward: a TLS peer (socat, a real external client) talks to a
# command through $conn->forward($child): `cat` echoes 16 MiB (digests
# equal), `wc -c` answers after the half-close. Also the child object, a
# plain socket as the target, the idle timeout, signals during forward.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Digest::SHA;
use File::Temp ();
use TPTest;

use Net::TLSPump qw(:all);

test_deadline(240);

my $socat = `command -v socat 2>/dev/null`;
chomp $socat;
plan skip_all => 'socat not installed' unless $socat;

my $tmp  = File::Temp::tempdir('tlspump-fwd-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $sctx = Net::TLSPump::Context->server;

# A TLS client: socat with stdin from $in, its stdout to a file (a pipe
# nobody reads while forward runs would stall it). It sends close_notify at
# the end of its input and waits (-t) for the rest. Returns (pid, out path).
my $nclients = 0;
sub tls_client {
    my ($l, $in) = @_;
    my $path = "$tmp/out" . $nclients++;
    my ($pid) = start_cmd({ stdin => $in, stdout => $path, stderr => "$tmp/socat.err" },
                          $socat, '-t', '60', '-', 'OPENSSL:127.0.0.1:' . $l->sockport . ',verify=0');
    return ($pid, $path);
}

# The client's output, once it has exited.
sub output {
    my ($pid, $path) = @_;
    is(reap_peer($pid), 0, 'socat exited 0');
    open my $fh, '<', $path or die "$path: $!";
    local $/;
    return scalar(<$fh>) // '';
}

sub write_file {
    my ($path, $data) = @_;
    open my $fh, '>', $path or die "$path: $!";
    print $fh $data;
    close $fh or die $!;
}

# ---- cat: 16 MiB through the child and back ---------------------------------
{
    my $size = 16 << 20;
    my $block = join '', map { sprintf "%07d\n", $_ } 0 .. 8191;    # 64 KiB
    my $data  = $block x ($size / length $block);
    write_file("$tmp/in.bin", $data);
    my $want = Digest::SHA::sha256_hex($data);
    undef $data;

    my $child = Net::TLSPump::spawn(['cat']);
    isa_ok($child, 'Net::TLSPump::Child');
    ok($child->pid > 0, 'child pid');
    ok($child->fileno > 2, 'child fd');
    my $l = tcp_listener();
    my ($cpid, $out) = tls_client($l, "$tmp/in.bin");
    my $s = $l->accept or die "accept: $!";
    my $conn = $sctx->wrap($s);
    my $st = $conn->forward($child);
    is(ref $st, 'HASH', 'forward returns a hash of stats');
    is($st->{to_target}, $size, 'to_target = 16 MiB');
    is($st->{to_tls}, $size, 'to_tls = 16 MiB');
    is($st->{tls_end}, 'clean', 'TLS side ended with close_notify');
    is($st->{target_end}, 'clean', 'cat ended with EOF');
    is($st->{tls_error}, undef, 'no TLS error');
    is($st->{target_error}, undef, 'no target error');
    ok($st->{seconds} > 0, "seconds $st->{seconds}");
    is($st->{exit_status}, 0, 'cat exited 0');
    is(Digest::SHA::sha256_hex(output($cpid, $out)), $want, 'the 16 MiB came back, sha256 equal');
    is($child->wait(timeout => 5), 0, 'child->wait: status 0');
}

# ---- wc -c: the half-close reaches the command ------------------------------
{
    write_file("$tmp/wc.txt", 'x' x 100_000);
    my $child = Net::TLSPump::spawn(['wc', '-c']);
    my $l = tcp_listener();
    my ($cpid, $out) = tls_client($l, "$tmp/wc.txt");
    my $conn = $sctx->wrap(scalar $l->accept);
    my $st = $conn->forward($child, idle_timeout => 30);
    is($st->{to_target}, 100_000, 'wc: 100000 bytes in');
    is($st->{tls_end}, 'clean', 'wc: clean close_notify passed on as EOF');
    like(output($cpid, $out), qr/^\s*100000\s*$/, 'wc -c answered after the half-close');
    is($st->{exit_status}, 0, 'wc exited 0');
}

# ---- env and cwd ------------------------------------------------------------------
{
    my $child = Net::TLSPump::spawn(['sh', '-c', 'echo "$GREETING from $(pwd)"; exit 3'],
                                    env => { GREETING => 'hi', PATH => $ENV{PATH} }, cwd => $tmp);
    my $l = tcp_listener();
    my ($cpid, $out) = tls_client($l, '/dev/null');
    my $conn = $sctx->wrap(scalar $l->accept);
    my $st = $conn->forward($child);
    is(output($cpid, $out), "hi from $tmp\n", 'env and cwd reach the command');
    ok(defined $st->{exit_status} && ($st->{exit_status} >> 8) == 3, 'exit_status is a wait status ($?)');
}

# ---- a plain socket as the target (a backend) -----------------------------------
{
    my ($a, $b) = unix_pair();
    my $echo = fork_peer(sub {
        close $a;
        my $got = '';
        while (sysread($b, my $buf, 65536)) { $got .= $buf }
        syswrite($b, uc $got);
        1;
    });
    close $b;
    write_file("$tmp/lower.txt", "hello backend\n");
    my $l = tcp_listener();
    my ($cpid, $out) = tls_client($l, "$tmp/lower.txt");
    my $conn = $sctx->wrap(scalar $l->accept);
    my $st = $conn->forward($a);
    is(output($cpid, $out), "HELLO BACKEND\n", 'forward to a socket handle');
    ok(!exists $st->{exit_status}, 'no exit_status without a child');
    is(reap_peer($echo), 0, 'backend saw the half-close');
    ok(defined fileno($a), 'the target handle stays open');
}

# ---- idle timeout; signals during forward ------------------------------------
{
    pipe(my $r, my $w) or die $!;    # the client's stdin: never written
    my $child = Net::TLSPump::spawn(['cat']);
    my $l = tcp_listener();
    my ($cpid, $out) = tls_client($l, $r);
    my $conn = $sctx->wrap(scalar $l->accept);
    my $st = $conn->forward($child, idle_timeout => 0.3);
    ok(grep({ $_ eq 'timeout' } $st->{tls_end}, $st->{target_end}), "idle timeout ends the pump ($st->{tls_end}/$st->{target_end})");
    ok($st->{seconds} >= 0.25, 'after about the idle time');
    stop_cmd($cpid);
}
{
    pipe(my $r, my $w) or die $!;
    my $child = Net::TLSPump::spawn(['cat']);
    my $l = tcp_listener();
    my ($cpid, $out) = tls_client($l, $r);
    my $conn = $sctx->wrap(scalar $l->accept);
    local $SIG{ALRM} = sub { die "alarm in forward\n" };
    alarm 1;
    my $ok = eval { $conn->forward($child); 1 };
    alarm 0;
    is($@, "alarm in forward\n", "a dying \$SIG{ALRM} handler stops forward");
    # A handler that returns: forward croaks "forward interrupted".
    my $ran = 0;
    local $SIG{USR1} = sub { $ran++ };
    my $kpid = fork_peer(sub { select(undef, undef, undef, 0.3); kill 'USR1', getppid(); 1 });
    my $e = exception_ok(sub { $conn->forward($child) }, 'Net::TLSPump::Error',
                         qr/^forward interrupted$/, 'a returning handler: forward interrupted');
    is($e->kind, 'interrupted', 'kind interrupted') if ref $e;
    is($ran, 1, 'the handler ran');
    reap_peer($kpid);
    test_deadline(240);
    stop_cmd($cpid);
    $child->kill('TERM');
    my $status = $child->wait(timeout => 5);
    is($status & 127, 15, 'kill TERM: the child died of SIGTERM');
}

# ---- the child object ------------------------------------------------------------
{
    my $child = Net::TLSPump::spawn(['cat']);
    my $pid = $child->pid;
    my $e = exception_ok(sub { $child->wait(timeout => 0.1) }, 'Net::TLSPump::Timeout',
                         qr/^wait: process $pid did not exit within 0\.1 s$/, 'child wait timeout');
    ok($child->kill('SIGKILL'), 'kill by name with SIG');
    is($child->wait(timeout => 5) & 127, 9, 'died of SIGKILL');
    ok(eval { $child->kill(0); 1 } || 1, 'kill(0) after reaping does not crash');
    my $c2 = Net::TLSPump::spawn(['cat']);
    ok($c2->kill(15), 'kill by number');
    is($c2->wait & 127, 15, 'wait without timeout');
    eval { $c2->kill('NOPE') };
    like($@, qr/^Net::TLSPump::Child::kill: unknown signal 'NOPE'/, 'unknown signal name');
    is($c2->wait, $c2->wait, 'the status is kept');

    # close: EOF on stdin, then reaped; pid stays, fileno does not.
    my $c3 = Net::TLSPump::spawn(['cat']);
    my $pid3 = $c3->pid;
    $c3->close;
    is($c3->pid, $pid3, 'pid after close');
    ok(!kill(0, $pid3), 'closed: the child is gone (reaped)');
    is($c3->kill, 0, 'kill after close: nothing to signal');
    eval { $c3->fileno };
    like($@, qr/the child was closed/, 'fileno after close croaks');
    $c3->close;    # twice is fine
}

# ---- a pair of pipes as the target (close_target_write) ------------------------
{
    # A child process reading a pipe and writing another: `tr a-z A-Z`.
    pipe(my $to_r, my $to_w) or die $!;
    pipe(my $from_r, my $from_w) or die $!;
    my $tr = fork_peer(sub {
        close $to_w;
        close $from_r;
        open STDIN, '<&', $to_r or die $!;
        open STDOUT, '>&', $from_w or die $!;
        exec 'tr', 'a-z', 'A-Z' or die "exec: $!";
    });
    close $to_r;
    close $from_w;
    write_file("$tmp/pipes.txt", "through two pipes\n");
    my $l = tcp_listener();
    my ($cpid, $out) = tls_client($l, "$tmp/pipes.txt");
    my $conn = $sctx->wrap(scalar $l->accept);
    my $st = $conn->forward([$from_r, $to_w], close_target_write => 1);
    is(output($cpid, $out), "THROUGH TWO PIPES\n", '[read, write] pipes with close_target_write');
    is($st->{tls_end}, 'clean', 'pipes: clean TLS end');
    is($st->{target_end}, 'clean', 'pipes: clean target end');
    is(reap_peer($tr), 0, 'tr got EOF through the closed pipe and exited');
    eval { $conn->forward([$from_r]) };
    like($@, qr/a target array must be \[read handle, write handle\]/, 'a one-element target array');
}
{
    my $e = exception_ok(sub { Net::TLSPump::spawn(['/nonexistent/prog']) }, 'Net::TLSPump::Error',
                         qr{/nonexistent/prog.*No such file}, 'spawn of a missing program');
    for my $bad ([undef, qr/must be an array reference/], ['cat', qr/must be an array reference/],
                 [[], qr/must not be empty/], [[undef], qr/must be a byte string, not undef/],
                 [["a\0b"], qr/must not contain NUL/], [[''], qr/program name must not be empty/]) {
        eval { Net::TLSPump::spawn($bad->[0]) };
        like($@, qr/^Net::TLSPump::spawn: .*$bad->[1]/, "spawn bad command: $bad->[1]");
    }
    eval { Net::TLSPump::spawn(['cat'], env => 'x') };
    like($@, qr/env must be a hash reference/, 'spawn bad env');
    eval { Net::TLSPump::spawn(['cat'], env => { 'A=B' => 1 }) };
    like($@, qr/invalid env name 'A=B'/, 'spawn env name with =');
    eval { Net::TLSPump::spawn(['cat'], bogus => 1) };
    like($@, qr/unknown option 'bogus'/, 'spawn unknown option');
    my ($a, $b) = unix_pair();
    my $conn = $sctx->wrap($a);
    eval { $conn->forward('not a handle') };
    like($@, qr/^Net::TLSPump::Conn::forward: expected a socket handle/, 'forward to a string');
    eval { $conn->forward($b, idle => 1) };
    like($@, qr/unknown option 'idle'/, 'forward unknown option');
    eval { Net::TLSPump::Child::pid($conn) };
    like($@, qr/Expected a Net::TLSPump::Child object/, 'Child method on a Conn');
    $conn->close;
    eval { $conn->forward($b) };
    like("$@", qr/^connection is closed$/, 'forward on a closed conn');
}

done_testing;
