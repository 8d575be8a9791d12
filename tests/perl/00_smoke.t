# Smoke test: load, constants, error classes, and a full handshake + echo
# between two Net::TLSPump connections over loopback TCP, driven by
# IO::Select on $conn->want.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Digest::SHA qw(sha256_hex);
use TPTest;

use Net::TLSPump qw(:all);

test_deadline(60);

is(DONE,       0, 'DONE');
is(WANT_READ,  1, 'WANT_READ');
is(WANT_WRITE, 2, 'WANT_WRITE');
ok(defined $Net::TLSPump::VERSION, 'VERSION');
for my $c (qw(TruncatedError ResetError ClosedError Timeout)) {
    ok("Net::TLSPump::$c"->isa('Net::TLSPump::Error'), "$c isa Error");
}

my $sctx = Net::TLSPump::Context->server(alpn => ['h2', 'http/1.1']);
isa_ok($sctx, 'Net::TLSPump::Context');
like($sctx->fingerprint, qr/\A[0-9a-f]{64}\z/, 'fingerprint is sha256 hex');
like($sctx->cert_pem, qr/\A-----BEGIN CERTIFICATE-----/, 'cert_pem');
ok($sctx->ephemeral, 'no cert: ephemeral');
is($sctx->role, 'server', 'role server');

my $cctx = Net::TLSPump::Context->client(ca => $sctx->cert_pem, alpn => ['http/1.1']);
is($cctx->role, 'client', 'role client');
ok(!$cctx->ephemeral, 'client not ephemeral');
is($cctx->fingerprint, undef, 'client without cert: no fingerprint');

my ($cs, $ss) = tcp_pair();
my $server = $sctx->wrap($ss);
my $client = $cctx->wrap($cs, server_hostname => 'localhost');
isa_ok($client, 'Net::TLSPump::Conn');
is($client->fileno, fileno($cs), 'fileno is the socket fd');
ok(!$client->handshake_done, 'not done before');

my $first = $client->handshake;
ok($first == WANT_READ || $first == WANT_WRITE, 'first client step wants I/O');
ok(handshake_pair($client, $server), 'handshake completes');
is($client->handshake, DONE, 'handshake DONE again');
ok($client->handshake_done, 'handshake_done');
is($client->version, 'TLSv1.3', 'version');
like($client->cipher, qr/^TLS_/, 'cipher');
is($client->alpn, 'http/1.1', 'client alpn');
is($server->alpn, 'http/1.1', 'server alpn');
is($client->verify_result, 'ok', 'verify ok');
is($server->server_name, 'localhost', 'SNI seen by server');
my $pc = $client->peer_cert;
is(ref $pc, 'HASH', 'peer_cert hash');
is($pc->{fingerprint}, $sctx->fingerprint, 'peer fingerprint = server ctx fingerprint');
like($pc->{pem}, qr/BEGIN CERTIFICATE/, 'peer pem');
is($server->peer_cert, undef, 'no client cert');

is($client->read, undef, 'nothing to read: undef');
my $msg = join '', map { chr(($_ * 7) & 255) } 0 .. 99_999;
is($client->write($msg), length $msg, 'write accepts all');
my $got = '';
while (length $got < length $msg) {
    my $d = $server->read;
    if (defined $d) { $got .= $d; next }
    wait_for($server);
    $client->flush;
}
is(sha256_hex($got), sha256_hex($msg), 'server got the bytes');
is($server->write("pong"), 4, 'server writes');
$server->flush;
wait_for($client) if !defined(my $r = $client->read);
$r //= $client->read;
is($r, 'pong', 'client reads');

drive($client, sub { $client->shutdown });
is(read_all($server), '', 'server sees clean EOF');
ok($server->peer_closed, 'peer_closed');
drive($server, sub { $server->shutdown });
is(read_all($client), '', 'client sees clean EOF');

$client->close;
$client->close;    # twice is fine
my $e = exception_ok(sub { $client->read }, 'Net::TLSPump::ClosedError',
                     qr/^connection is closed$/, 'read after close');
is($e->kind, 'closed', 'kind closed');
ok(defined fileno($cs), 'close leaves the socket open');

# The context may go away before its connections.
{
    my $c2 = do {
        my $ctx = Net::TLSPump::Context->client(verify => 0);
        my ($a, $b) = tcp_pair();
        my $srv = $sctx->wrap($b);
        my $cl  = $ctx->wrap($a);
        [$cl, $srv, $a, $b];
    };
    ok(handshake_pair($c2->[0], $c2->[1]), 'handshake after the client context is gone');
}

# Blocking style with the core's own waits (the server side is driven
# non-blocking, the client uses timeouts where that is safe).
{
    my ($a, $b) = tcp_pair();
    my $srv = $sctx->wrap($b);
    my $cl  = $cctx->wrap($a, server_hostname => 'localhost');
    handshake_pair($cl, $srv);
    is($cl->write("ping\n", timeout => 5), 5, 'write with timeout');
    is($cl->flush(timeout => 5), DONE, 'flush with timeout');
    is($srv->read(undef, timeout => 5), "ping\n", 'read(undef, timeout)');
    is($srv->write("pong\n"), 5, 'server write');
    is($cl->read(4, timeout => 5), 'pong', 'read(4, timeout) limits');
    is($cl->read(timeout => 5), "\n", 'read(timeout => 5) without max');
    is($cl->read, undef, 'then nothing');
    my $e = exception_ok(sub { $cl->read(timeout => 0.05) }, 'Net::TLSPump::Timeout',
                         qr/^read timed out after 0\.05 s$/, 'read timeout croaks Timeout');
    is($e->operation, 'read', 'timeout operation');
    is($e->kind, 'timeout', 'timeout kind');
    is($e->reason, 'timed out', 'timeout reason');
    ok($e->isa('Net::TLSPump::Error'), 'Timeout isa Error');
    $e = exception_ok(sub { $cl->wait(timeout => 0.05) }, 'Net::TLSPump::Timeout',
                      qr/^wait timed out/, 'wait timeout');
    is($srv->write('x'), 1, 'server writes one byte');
    is($cl->wait, DONE, 'wait without timeout waits until readable');
    is($cl->read, 'x', 'and the byte is there');

    # A read waiting without limit still runs Perl signal handlers; a dying
    # handler's exception comes out, the connection stays intact.
    local $SIG{USR1} = sub { die "usr1 handler\n" };
    my $pid = fork_peer(sub {
        select(undef, undef, undef, 0.2);
        kill 'USR1', getppid();
        1;
    });
    my $ok = eval { $cl->read(undef, timeout => undef); 1 };
    is($@, "usr1 handler\n", 'signal handler ran and its die came out');
    ok(!$ok, 'read did not return');
    is(reap_peer($pid), 0, 'signaller exited');

    # A handler that returns: the call croaks "interrupted".
    my $ran = 0;
    local $SIG{USR1} = sub { $ran++ };
    $pid = fork_peer(sub {
        select(undef, undef, undef, 0.2);
        kill 'USR1', getppid();
        1;
    });
    $e = exception_ok(sub { $cl->read(undef, timeout => 10) }, 'Net::TLSPump::Error',
                      qr/^interrupted$/, 'returning handler: interrupted');
    is($ran, 1, 'handler ran once');
    is($e->kind, 'interrupted', 'kind interrupted');
    is(reap_peer($pid), 0, 'signaller exited');

    # alarm with a dying handler bounds a blocking handshake-free wait too.
    local $SIG{ALRM} = sub { die "alarm\n" };
    alarm 1;
    $ok = eval { $cl->read(undef, timeout => undef); 1 };
    alarm 0;
    is($@, "alarm\n", 'alarm interrupts a blocking read');
    test_deadline(60);

    is($srv->write("after"), 5, 'server writes after the interruptions');
    is($cl->read(undef, timeout => 5), 'after', 'connection intact');
}

done_testing;
