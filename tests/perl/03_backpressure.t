# Write backpressure: while the peer reads nothing, write accepts into the
# bounded C buffer until it is full, then returns less than asked; flush
# says WANT_WRITE and so does want. When the peer reads again, everything
# arrives in order (count and SHA-256 equal).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Digest::SHA;
BEGIN {
    eval { require IO::Socket::SSL; IO::Socket::SSL->import; 1 }
      or plan skip_all => 'IO::Socket::SSL not installed (Debian: libio-socket-ssl-perl)';
}
use Socket qw(SOL_SOCKET SO_SNDBUF SO_RCVBUF);
use TPTest;

use Net::TLSPump qw(:all);

test_deadline(180);

use constant CHUNK      => 64 * 1024;
use constant KERNEL_BUF => 64 * 1024;

sub stream {
    my ($n) = @_;
    my $block = join '', map { sprintf "%07d\n", $_ } 0 .. 8191;    # 64 KiB
    my $s = $block x (int($n / length $block) + 1);
    return substr($s, 0, $n);
}

for my $write_buffer (256 * 1024, undef) {
    my $limit = $write_buffer // (1 << 20);    # the documented default
    my $label = "write_buffer " . ($write_buffer // 'default');
    my $ctx = Net::TLSPump::Context->server(defined $write_buffer ? (write_buffer => $write_buffer) : ());
    my ($cli, $srv) = tcp_pair();
    setsockopt($cli, SOL_SOCKET, SO_RCVBUF, KERNEL_BUF) or die $!;
    setsockopt($srv, SOL_SOCKET, SO_SNDBUF, KERNEL_BUF) or die $!;
    pipe(my $go_r, my $go_w) or die $!;
    pipe(my $res_r, my $res_w) or die $!;
    $go_w->autoflush(1);
    $res_w->autoflush(1);

    # The stalled reader: handshake, then nothing until "go", then everything
    # until our close_notify; reports "count sha256".
    my $pid = fork_peer(sub {
        close $srv;
        my $tls = IO::Socket::SSL->start_SSL($cli, SSL_verify_mode => SSL_VERIFY_NONE)
          or die "start_SSL: $SSL_ERROR";
        <$go_r>;
        my $sha = Digest::SHA->new(256);
        my $n   = 0;
        while (1) {
            my $r = sysread($tls, my $buf, 1 << 16);
            die "sysread: $SSL_ERROR" unless defined $r;
            last unless $r;
            $n += $r;
            $sha->add($buf);
        }
        $tls->close(SSL_fast_shutdown => 1);
        print $res_w "$n ", $sha->hexdigest, "\n";
        1;
    });
    close $cli;
    close $go_r;
    close $res_w;

    my $conn = $ctx->wrap($srv);
    drive($conn, sub { $conn->handshake });

    my $data = stream($limit + (2 << 20));
    my $off  = 0;
    my $n;
    while (1) {
        die "never pushed back after $off bytes" if $off + CHUNK > length $data;
        $n = $conn->write(substr($data, $off, CHUNK));
        $off += $n;
        last if $n < CHUNK;
    }
    ok($n >= 0 && $n < CHUNK, "$label: a partial count ($n of " . CHUNK . ")");
    ok($off >= $limit, "$label: accepted at least the buffer limit ($off)");
    my $buffered = $conn->buffered;
    ok($buffered <= $limit && $buffered >= $limit - 2 * CHUNK,
       "$label: buffered $buffered is near the limit $limit");
    is($conn->flush, WANT_WRITE, "$label: flush says WANT_WRITE");
    ok($conn->want & WANT_WRITE, "$label: want has WANT_WRITE");
    my $more = $conn->write(substr($data, $off, CHUNK));
    ok($more < CHUNK, "$label: still full while the peer does not read");
    $off += $more;

    print $go_w "go\n";
    is(write_all($conn, substr($data, $off), 60), length($data) - $off,
       "$label: the rest is accepted once the peer reads");
    is($conn->buffered, 0, "$label: buffer empty after flush");
    drive($conn, sub { $conn->shutdown });
    my $res = <$res_r>;
    is($res, length($data) . ' ' . Digest::SHA::sha256_hex($data) . "\n",
       "$label: everything arrived, digest equal");
    is(reap_peer($pid), 0, "$label: reader exited 0");
}

done_testing;
