# read drains: after ONE readiness event, one read returns everything that
# has arrived, including what OpenSSL holds already decrypted or read from
# the socket -- so a select() loop never stalls on data the kernel no longer
# reports. The peer is IO::Socket::SSL in a forked child (one syswrite = one
# TLS record); it reports over a pipe once its bytes are in our receive
# queue (AF_UNIX: when syswrite returns; TCP: when its send queue is empty).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp ();
use IO::Select;
BEGIN {
    eval { require IO::Socket::SSL; IO::Socket::SSL->import; 1 }
      or plan skip_all => 'IO::Socket::SSL not installed (Debian: libio-socket-ssl-perl)';
}
use Socket qw(SOL_SOCKET SO_SNDBUF SO_RCVBUF);
use Time::HiRes ();
use TPTest;

use Net::TLSPump qw(:all);

test_deadline(120);

use constant RECORD   => 16 * 1024;
use constant TIOCOUTQ => 0x5411;

my $sctx   = Net::TLSPump::Context->server;
my $eph_ca = File::Temp->new(SUFFIX => '.pem');
print $eph_ca $sctx->cert_pem;
close $eph_ca;

sub pattern {
    my ($n, $seed) = @_;
    my $s = '';
    my $i = $seed;
    $s .= pack('N', $i++ * 2654435761 % 4294967296) while length $s < $n;
    return substr($s, 0, $n);
}

my $BIG  = pattern(4 * RECORD, 1);
my $TINY = join '', map { chr } 0 .. 59;
my $LAST = pattern(5000, 2);
my $ONE  = pattern(RECORD, 3);
my $ORD  = pattern(3 * RECORD + 123, 4);

# The peer: runs commands read from $cmd_r, answers "ok" on $ack_w.
sub peer {
    my ($sock, $transport, $cmd_r, $ack_w) = @_;
    my $tls = IO::Socket::SSL->start_SSL($sock, SSL_ca_file => "$eph_ca",
        SSL_hostname => 'localhost', SSL_verifycn_name => 'localhost',
        SSL_verifycn_scheme => 'http')
      or die "start_SSL: $SSL_ERROR";
    my $delivered = sub {
        return if $transport eq 'unix';
        my $end = Time::HiRes::time() + 5;
        while (1) {
            my $buf = pack('i', 0);
            ioctl($sock, TIOCOUTQ, $buf) or die "ioctl: $!";
            last unless unpack('i', $buf);
            die "not delivered in 5 s\n" if Time::HiRes::time() > $end;
            Time::HiRes::sleep(0.001);    # the kernel acks asynchronously
        }
    };
    my $send = sub {
        my ($d) = @_;
        my $off = 0;
        while ($off < length $d) {
            my $n = syswrite($tls, $d, RECORD, $off);
            die "syswrite: $SSL_ERROR" unless $n;
            $off += $n;
        }
    };
    while (my $cmd = <$cmd_r>) {
        chomp $cmd;
        if ($cmd eq 'burst') {
            $send->($BIG);
            $send->($_) for split //, $TINY;
            $send->($LAST);
        } elsif ($cmd eq 'one') {
            $send->($ONE);
        } elsif ($cmd eq 'order') {
            $send->($ORD);
        } elsif ($cmd eq 'close') {
            # data, close_notify, then wait for ours (no ack: the parent
            # reads until EOF)
            $send->('last words');
            $tls->close(SSL_fast_shutdown => 0) or die "close: $SSL_ERROR";
            return 1;
        }
        $delivered->();
        print $ack_w "ok\n";
    }
    return 1;
}

sub one_event {
    my ($conn) = @_;
    ok(IO::Select->new($conn->fileno)->can_read(10), 'one readiness event');
}

sub readable_now { scalar IO::Select->new($_[0])->can_read(0) }

for my $transport ('unix', 'tcp') {
    my ($a, $b) = $transport eq 'unix' ? unix_pair() : tcp_pair();
    for my $s ($a, $b) {
        setsockopt($s, SOL_SOCKET, SO_SNDBUF, 1 << 20) or die $!;
        setsockopt($s, SOL_SOCKET, SO_RCVBUF, 1 << 20) or die $!;
    }
    pipe(my $cmd_r, my $cmd_w) or die $!;
    pipe(my $ack_r, my $ack_w) or die $!;
    $cmd_w->autoflush(1);
    $ack_w->autoflush(1);
    my $pid = fork_peer(sub { close $b; close $cmd_w; close $ack_r;
                              peer($a, $transport, $cmd_r, $ack_w) });
    close $a;
    close $cmd_r;
    close $ack_w;
    my $conn = $sctx->wrap($b);
    drive($conn, sub { $conn->handshake });
    my $cmd = sub { print $cmd_w "$_[0]\n"; is(scalar <$ack_r>, "ok\n", "$transport: peer did $_[0]") };

    # Four 16 KiB records, 60 one-byte records, a 5000-byte record.
    $cmd->('burst');
    one_event($conn);
    my $got = $conn->read;
    is(length($got // ''), 4 * RECORD + 60 + 5000, "$transport: one read got every byte");
    ok(defined $got && $got eq $BIG . $TINY . $LAST, "$transport: in order");
    ok(!readable_now($conn->fileno), "$transport: nothing left in the kernel");
    ok(!$conn->pending, "$transport: nothing left in OpenSSL");
    is($conn->read, undef, "$transport: then would block");
    is($conn->want, WANT_READ, "$transport: want READ");

    # read(1000) of a 16 KiB record: the rest is in OpenSSL, not the kernel.
    $cmd->('one');
    one_event($conn);
    is($conn->read(1000), substr($ONE, 0, 1000), "$transport: read(1000)");
    ok(!readable_now($conn->fileno), "$transport: the kernel reports nothing");
    ok($conn->pending, "$transport: OpenSSL holds the rest");
    my $rest = $conn->read;
    is(length $rest, 15384, "$transport: the rest without a new readiness");
    ok($rest eq substr($ONE, 1000), "$transport: rest content");
    ok(!$conn->pending, "$transport: drained");

    # read($n) limits and keeps the stream in order.
    $cmd->('order');
    one_event($conn);
    my $acc = '';
    for my $n (1, 17, RECORD, 5000) {
        my $d = $conn->read($n);
        ok(defined $d && length $d > 0 && length $d <= $n, "$transport: read($n) bounded");
        $acc .= $d // '';
    }
    $acc .= $conn->read // '';
    ok($acc eq $ORD, "$transport: successive reads see the stream in order");
    is($conn->read, undef, "$transport: empty again");

    # Data and close_notify in one burst: data first, then ''.
    print $cmd_w "close\n";
    my $all = read_all($conn);
    is($all, 'last words', "$transport: data before the clean EOF");
    is($conn->read, '', "$transport: EOF stays EOF");
    drive($conn, sub { $conn->shutdown });
    close $cmd_w;
    is(reap_peer($pid), 0, "$transport: peer exited cleanly");
}

done_testing;
