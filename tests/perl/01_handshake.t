# Handshake + echo against real peers, both roles: IO::Socket::SSL in a
# forked child and Python's ssl module in a subprocess. Our side is driven
# by IO::Select on $conn->want (no sleeps, no busy loop).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp ();
BEGIN {
    eval { require IO::Socket::SSL; IO::Socket::SSL->import; 1 }
      or plan skip_all => 'IO::Socket::SSL not installed (Debian: libio-socket-ssl-perl)';
}
use TPTest;

use Net::TLSPump qw(:all);

test_deadline(120);

my $pki = make_certs();

# Reads until "\n" (non-blocking reads + want).
sub read_line {
    my ($conn) = @_;
    my $buf = '';
    until ($buf =~ /\n/) {
        my $d = $conn->read;
        if (!defined $d) { wait_for($conn); next }
        last if $d eq '';
        $buf .= $d;
    }
    return $buf;
}

# Handshake, send a line, read the echo, close cleanly; returns the conn.
sub client_exchange {
    my ($conn, $line) = @_;
    drive($conn, sub { $conn->handshake });
    is(write_all($conn, $line), length $line, 'request written');
    return read_line($conn);
}

# --- our client vs an IO::Socket::SSL server --------------------------------
{
    my $l   = tcp_listener();
    my $pid = fork_peer(sub {
        my $s   = $l->accept or die "accept: $!";
        my $ssl = IO::Socket::SSL->start_SSL($s, SSL_server => 1,
            SSL_cert_file => $pki->{server_cert}, SSL_key_file => $pki->{server_key})
          or die "start_SSL: $SSL_ERROR";
        my $line = <$ssl>;
        print $ssl uc $line;
        $ssl->close(SSL_fast_shutdown => 0) or die "close: $SSL_ERROR";
        1;
    });
    my $port = $l->sockport;
    close $l;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port)
      or die "connect: $!";
    my $conn = Net::TLSPump::Context->client(ca => $pki->{ca})
                                     ->wrap($sock, server_hostname => 'localhost');
    is(client_exchange($conn, "hello io::socket::ssl\n"), "HELLO IO::SOCKET::SSL\n",
       'echo from IO::Socket::SSL server');
    like($conn->peer_cert->{subject}, qr/CN=localhost/, 'server subject');
    like($conn->peer_cert->{issuer}, qr/CN=tlspump-test-ca/, 'server issuer');
    is(read_all($conn), '', 'clean close_notify from IO::Socket::SSL');
    drive($conn, sub { $conn->shutdown });
    is(reap_peer($pid), 0, 'IO::Socket::SSL server exited cleanly');
}

# --- our server vs an IO::Socket::SSL client (TLS 1.3 and TLS 1.2) ----------
my $sctx = Net::TLSPump::Context->server;
my $eph_ca = File::Temp->new(SUFFIX => '.pem');
print $eph_ca $sctx->cert_pem;
close $eph_ca;
for my $ver ('TLSv1_3', 'TLSv1_2') {
    my $l   = tcp_listener();
    my $pid = fork_peer(sub {
        my $c = IO::Socket::SSL->new(PeerAddr => '127.0.0.1', PeerPort => $l->sockport,
            SSL_version => $ver, SSL_ca_file => "$eph_ca", SSL_verifycn_name => 'localhost',
            SSL_hostname => 'localhost', SSL_verifycn_scheme => 'http')
          or die "connect: $SSL_ERROR";
        print $c "ping $ver\n";
        my $reply = <$c>;
        die "bad reply: $reply" unless $reply eq "pong $ver\n";
        my $eof = <$c>;    # our close_notify
        die "expected EOF" if defined $eof;
        $c->close;
        1;
    });
    my $s = $l->accept or die "accept: $!";
    my $conn = $sctx->wrap($s);
    drive($conn, sub { $conn->handshake });
    (my $want_ver = $ver) =~ s/_/./;
    is($conn->version, $want_ver, "server handshake with IO::Socket::SSL $ver");
    is(read_line($conn), "ping $ver\n", "$ver: request");
    write_all($conn, "pong $ver\n");
    drive($conn, sub { $conn->shutdown });
    is(read_all($conn), '', "$ver: client's close_notify");
    is(reap_peer($pid), 0, "$ver: IO::Socket::SSL client satisfied");
}

# min_version => TLSv1.3 refuses a TLS 1.2-only client.
{
    my $ctx13 = Net::TLSPump::Context->server(min_version => 'TLSv1.3');
    my $l   = tcp_listener();
    my $pid = fork_peer(sub {
        my $c = IO::Socket::SSL->new(PeerAddr => '127.0.0.1', PeerPort => $l->sockport,
            SSL_version => 'TLSv1_2', SSL_verify_mode => SSL_VERIFY_NONE);
        !$c;    # success = the handshake failed
    });
    my $s = $l->accept or die "accept: $!";
    my $conn = $ctx13->wrap($s);
    my $e = exception_ok(sub { drive($conn, sub { $conn->handshake }) },
                         'Net::TLSPump::Error', qr/unsupported protocol|version/i,
                         'TLS 1.2 client refused by min_version TLSv1.3');
    is($e->operation, 'handshake', 'operation handshake') if ref $e;
    is(reap_peer($pid), 0, 'the TLS 1.2 client failed too');
}

# --- Python's ssl module ------------------------------------------------------
SKIP: {
    my $py = python3() or skip 'python3 not installed', 8;

    # our client vs a Python ssl server
    my $server_py = <<'PY';
import socket, ssl, sys
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
print(ls.getsockname()[1], flush=True)
ls.settimeout(30)
s, _ = ls.accept(); s.settimeout(30)
t = ctx.wrap_socket(s, server_side=True)
data = b""
while not data.endswith(b"\n"):
    data += t.recv(1024)
t.sendall(data[::-1][1:] + b"\n")
t.unwrap()
t.close()
PY
    my ($pid, $out) = start_cmd($py, '-c', $server_py, $pki->{server_cert}, $pki->{server_key});
    my $port = <$out>;
    ok($port && $port =~ /^\d+$/, 'python server listening') or diag("got: " . ($port // 'EOF'));
    chomp $port;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port) or die $!;
    my $conn = Net::TLSPump::Context->client(ca => $pki->{ca})
                                     ->wrap($sock, server_hostname => 'localhost');
    is(client_exchange($conn, "abc python\n"), "nohtyp cba\n", 'echo from python ssl server');
    drive($conn, sub { $conn->shutdown });
    is(read_all($conn), '', 'python unwrap() = clean close');
    is(reap_peer($pid), 0, 'python server exited 0');

    # our server vs a Python ssl client
    my $client_py = <<'PY';
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
t = ctx.wrap_socket(s, server_hostname="localhost")
t.sendall(b"from python\n")
data = b""
while True:
    d = t.recv(65536)
    if not d:
        break
    data += d
print(t.version(), data.decode().strip(), flush=True)
t.close()
PY
    my $l = tcp_listener();
    ($pid, $out) = start_cmd($py, '-c', $client_py, $l->sockport, "$eph_ca");
    my $s = $l->accept or die "accept: $!";
    $conn = $sctx->wrap($s);
    drive($conn, sub { $conn->handshake });
    is(read_line($conn), "from python\n", 'python client request');
    write_all($conn, "to python\n");
    drive($conn, sub { $conn->shutdown });
    my $line = <$out>;
    is($line, "TLSv1.3 to python\n", 'python client got the reply and a clean EOF');
    is(reap_peer($pid), 0, 'python client exited 0');
}

# --- a peer that accepts TCP and never speaks: handshake timeout --------------
{
    my ($a, $b) = tcp_pair();
    my $conn = Net::TLSPump::Context->client(verify => 0)->wrap($a);
    my $e = exception_ok(sub { $conn->handshake(timeout => 0.5) }, 'Net::TLSPump::Timeout',
                         qr/^handshake timed out after 0\.5 s$/, 'handshake timeout');
    is($conn->want, WANT_READ, 'still waiting for the ServerHello');
}

done_testing;
