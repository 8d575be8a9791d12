# Endings: close_notify is a clean EOF ('') both ways, a TCP close without
# close_notify is a TruncatedError (data before it is returned first), a
# half-close keeps the other direction open, and a peer that speaks HTTP or
# garbage instead of TLS gets an error that names it.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
BEGIN {
    eval { require IO::Socket::SSL; IO::Socket::SSL->import; 1 }
      or plan skip_all => 'IO::Socket::SSL not installed (Debian: libio-socket-ssl-perl)';
}
use TPTest;

use Net::TLSPump qw(:all);

test_deadline(120);

my $sctx = Net::TLSPump::Context->server;

# A server conn (handshake done) with an IO::Socket::SSL client in a forked
# child running $code->($tls, $result_fh); returns ($conn, $pid, $result_r).
sub with_peer {
    my ($code) = @_;
    my ($cli, $srv) = tcp_pair();
    pipe(my $res_r, my $res_w) or die $!;
    $res_w->autoflush(1);
    my $pid = fork_peer(sub {
        close $srv;
        close $res_r;
        my $tls = IO::Socket::SSL->start_SSL($cli, SSL_verify_mode => SSL_VERIFY_NONE)
          or die "start_SSL: $SSL_ERROR";
        $code->($tls, $res_w, $cli);
    });
    close $cli;
    close $res_w;
    my $conn = $sctx->wrap($srv);
    drive($conn, sub { $conn->handshake });
    return ($conn, $pid, $res_r, $srv);
}

sub recv_all {
    my ($tls) = @_;
    my $got = '';
    while (1) {
        my $r = sysread($tls, my $buf, 4096);
        die "sysread: $SSL_ERROR" unless defined $r;
        last unless $r;
        $got .= $buf;
    }
    return $got;
}

# The peer's close_notify is a clean EOF.
{
    my ($conn, $pid) = with_peer(sub {
        my ($tls) = @_;
        print $tls "bye";
        $tls->close(SSL_fast_shutdown => 0) or die "close: $SSL_ERROR";    # waits for ours
        1;
    });
    is(read_all($conn), 'bye', "peer's close_notify: data, then ''");
    is($conn->read, '', 'EOF stays EOF');
    ok($conn->peer_closed, 'peer_closed');
    is(drive($conn, sub { $conn->shutdown }), DONE, 'our shutdown completes');
    is(reap_peer($pid), 0, 'peer saw our close_notify');
}

# Our close_notify is a clean EOF for the peer; writing after it is an error.
{
    my ($conn, $pid, $res) = with_peer(sub {
        my ($tls, $out) = @_;
        print $out recv_all($tls), "\n";
        $tls->close(SSL_fast_shutdown => 1);
        1;
    });
    write_all($conn, 'bye');
    is(drive($conn, sub { $conn->shutdown }), DONE, 'shutdown DONE');
    is(scalar <$res>, "bye\n", 'the peer read everything, then a clean EOF');
    my $e = exception_ok(sub { $conn->write('more') }, 'Net::TLSPump::ClosedError',
                         qr/./, 'write after shutdown croaks ClosedError');
    is($e->kind, 'closed', 'kind closed') if ref $e;
    is(read_all($conn), '', "then the peer's close_notify");
    is(reap_peer($pid), 0, 'peer exited 0');
}

# TCP close without close_notify: the data first, then TruncatedError.
{
    my ($conn, $pid, $res, $srv) = with_peer(sub {
        my ($tls, $out, $raw) = @_;
        print $tls "data before the FIN";
        # A FIN under the TLS layer, no close_notify; then stay until the
        # parent closes (closing with unread tickets would send an RST).
        shutdown($raw, 1) or die "shutdown: $!";
        my $fd = fileno($raw);
        open(my $plain, '<&=', $fd) or die "fdopen: $!";
        1 while sysread($plain, my $buf, 4096);
        1;
    });
    my $got = '';
    my $e;
    while (1) {
        my $d = eval { $conn->read };
        if (!defined $d && $@) { $e = $@; last }
        if (!defined $d) { wait_for($conn); next }
        fail('EOF without close_notify reported as a clean EOF'), last if $d eq '';
        $got .= $d;
    }
    is($got, 'data before the FIN', 'data before the truncation returned first');
    isa_ok($e, 'Net::TLSPump::TruncatedError');
    isa_ok($e, 'Net::TLSPump::Error');
    is($e->kind, 'truncated', 'kind truncated');
    ok($e->truncated, '->truncated');
    is($e->operation, 'read', 'operation read');
    like("$e", qr/^read: /, "stringifies with the operation: $e");
    $conn->close;
    close $srv;
    is(reap_peer($pid), 0, 'peer exited 0');
}

# Half-close: after our close_notify the peer may still send.
{
    my ($conn, $pid, $res) = with_peer(sub {
        my ($tls, $out) = @_;
        my $got = recv_all($tls);    # until our close_notify
        print $tls "still talking after your close_notify";
        $tls->close(SSL_fast_shutdown => 1);
        print $out "$got\n";
        1;
    });
    write_all($conn, 'last from tlspump');
    is(drive($conn, sub { $conn->shutdown }), DONE, 'shutdown (half-close)');
    is(read_all($conn), 'still talking after your close_notify', 'the peer keeps talking, then EOF');
    is(scalar <$res>, "last from tlspump\n", 'the peer got ours');
    is(reap_peer($pid), 0, 'peer exited 0');
}

# TCP close during the handshake.
{
    my ($cli, $srv) = tcp_pair();
    my $conn = $sctx->wrap($srv);
    close $cli;
    my $e = exception_ok(sub { drive($conn, sub { $conn->handshake }) }, 'Net::TLSPump::Error',
                         qr/^handshake: /, 'TCP close during the handshake');
    is($e->operation, 'handshake', 'operation handshake') if ref $e;
}

# Not TLS at all.
sub server_gets {
    my ($payload) = @_;
    my ($cli, $srv) = tcp_pair();
    syswrite($cli, $payload) == length $payload or die $!;
    my $conn = $sctx->wrap($srv);
    my $ok = eval { drive($conn, sub { $conn->handshake }); 1 };
    my $e = $@;
    ok(!$ok && ref $e && $e->isa('Net::TLSPump::Error'), 'handshake croaks an Error')
      or diag("got: $e");
    return ref $e ? $e : undef;
}

my $e = server_gets("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
like($e->reason, qr/http request/, 'HTTP request instead of a ClientHello: ' . $e->reason);
is($e->operation, 'handshake', 'operation handshake');
ok(index("$e", $e->reason) >= 0, 'the reason is in the text');
ok(!$e->isa('Net::TLSPump::TruncatedError'), 'not a truncation');

$e = server_gets(join('', map { chr } 0 .. 255) x 2);
like($e->reason, qr/wrong version number/, 'random bytes: ' . $e->reason);

$e = server_gets("\x16\x03\x01\xff\xff" . ('A' x 100));
like($e->reason, qr/packet length/, 'bad record length: ' . $e->reason);

# Our client talking to a plain HTTP server.
{
    my ($cli, $srv) = tcp_pair();
    my $conn = Net::TLSPump::Context->client(verify => 0)->wrap($cli);
    my $r = $conn->handshake;
    ok($r == WANT_READ || $r == WANT_WRITE, 'ClientHello sent');
    sysread($srv, my $hello, 4096) or die $!;
    syswrite($srv, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    $e = exception_ok(sub { drive($conn, sub { $conn->handshake }) }, 'Net::TLSPump::Error',
                      qr/wrong version number/, 'HTTP response instead of a ServerHello');
}

done_testing;
