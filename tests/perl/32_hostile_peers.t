# Issue 7, cases 4, 5, 6, 8 for the Perl binding (mirrors
# tests/python/test_32_hostile_peers.py): a RST after the ClientHello and
# after 1 MB -> ResetError within 1 s; a FIN without close_notify after
# whole records -> the data, then TruncatedError; 16 KiB of random bytes or
# an HTTP request -> a handshake error naming it within 1 s; plaintext
# before the handshake -> never delivered.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use Socket qw(SOL_SOCKET SO_LINGER AF_UNIX SOCK_STREAM PF_UNSPEC SHUT_WR);
use Time::HiRes ();
use TPTest;

use Net::TLSPump qw(:all);

test_deadline(60);

sub open_fds { opendir(my $d, '/proc/self/fd') or die $!; scalar grep { /^\d+$/ } readdir $d }

sub rst_close {
    my ($sock) = @_;
    setsockopt($sock, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0)) or die $!;
    close $sock;
}

my $sctx = Net::TLSPump::Context->server;
my $cctx = Net::TLSPump::Context->client(ca => $sctx->cert_pem);
my $fds0 = open_fds();

# ---- 4: RST after the ClientHello ----------------------------------------------
{
    my ($c, $s) = tcp_pair();
    my $client = $cctx->wrap($c, server_hostname => 'localhost');
    my $server = $sctx->wrap($s);
    is($client->handshake, WANT_READ, 'the ClientHello is out');
    $client->close;
    rst_close($c);
    my $t0 = Time::HiRes::time();
    ok(!eval { $server->handshake(timeout => 5); 1 }, 'the server handshake croaks');
    my $e = $@;
    ok(Time::HiRes::time() - $t0 < 1, 'within 1 s');
    ok(ref $e && $e->isa('Net::TLSPump::ResetError'), 'a ResetError') or diag "$e";
    like("$e", qr/reset/, "it says reset: $e");
    $server->close;
    close $s;
}

# ---- 4: RST after 1 MB ---------------------------------------------------------
{
    my ($c, $s) = tcp_pair();
    my $client = $cctx->wrap($c, server_hostname => 'localhost');
    my $server = $sctx->wrap($s);
    handshake_pair($client, $server);
    my $data = join '', map { chr(($_ * 131) & 255) } 0 .. 65535;
    $data x= 16;    # 1 MiB
    my ($off, $got) = (0, '');
    my $end = Time::HiRes::time() + 20;
    while (length($got) < length($data) && Time::HiRes::time() < $end) {
        if ($off < length $data) { $off += $client->write(substr($data, $off, 65536)) }
        elsif ($client->buffered) { $client->flush }
        my $d = $server->read;
        if (defined $d && length $d) {
            $got .= $d;
            $server->write(substr($d, 0, 10));    # unread answers
            next;
        }
        IO::Select->new($s)->can_read(0.05);
    }
    ok($got eq $data, '1 MiB arrived in order');
    $client->close;
    rst_close($c);
    my $t0 = Time::HiRes::time();
    my $ok = eval { $server->write('x' x 65536, timeout => 5) while 1; 1 };
    my $e = $@;
    ok(!$ok && ref $e && $e->isa('Net::TLSPump::ResetError'), 'writing croaks ResetError')
      or diag "$e";
    ok(Time::HiRes::time() - $t0 < 1, 'within 1 s');
    ok(!eval { $server->read; 1 } && $@->isa('Net::TLSPump::ResetError'), 'reading says the same');
    $server->close;
    close $s;
}

# ---- 5: FIN after whole records --------------------------------------------------
{
    socketpair(my $a, my $b, AF_UNIX, SOCK_STREAM, PF_UNSPEC) or die $!;
    my $server = $sctx->wrap($a);
    my $client = $cctx->wrap($b, server_hostname => 'localhost');
    handshake_pair($client, $server);
    $client->write('A' x 5000);
    shutdown($b, SHUT_WR);
    my $got = '';
    my $ok = eval {
        while (1) {
            my $d = $server->read(undef, timeout => 5);
            die "clean EOF without close_notify\n" if $d eq '';
            $got .= $d;
        }
        1;
    };
    my $e = $@;
    is($got, 'A' x 5000, 'the whole records are delivered first');
    ok(!$ok && ref $e && $e->isa('Net::TLSPump::TruncatedError'), 'then TruncatedError')
      or diag "$e";
    like("$e", qr/close_notify/, 'naming the missing close_notify');
    ok(!$server->peer_closed, 'not a clean close');
    $server->close;
    $client->close;
}

# ---- 6, 8: junk and plaintext to the server ---------------------------------------
my $random = join '', map { chr(int(rand(256))) } 1 .. 16384;
for my $case ([random => $random, qr/./],
              [http => "GET / HTTP/1.1\r\nHost: x\r\n\r\n", qr/http request/],
              [plaintext => "hello, plaintext\n", qr/./]) {
    my ($name, $bytes, $re) = @$case;
    socketpair(my $a, my $b, AF_UNIX, SOCK_STREAM, PF_UNSPEC) or die $!;
    my $server = $sctx->wrap($a);
    syswrite($b, $bytes);
    shutdown($b, SHUT_WR);
    my $t0 = Time::HiRes::time();
    my $d;
    my $ok = eval { $d = $server->read(undef, timeout => 5); 1 };
    my $e = $@;
    ok(!$ok, "$name: read croaks, nothing delivered") or diag "got " . length($d // '');
    like("$e", $re, "$name: $e");
    ok(Time::HiRes::time() - $t0 < 1, "$name: within 1 s");
    ok(!eval { $server->read; 1 }, "$name: and again");
    $server->close;
}

is(open_fds(), $fds0, 'no fd leaked');
done_testing;
