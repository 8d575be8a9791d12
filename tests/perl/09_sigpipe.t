# SIGPIPE: with Perl's default SIGPIPE disposition (which kills the
# process), writing to a peer that has gone away croaks and the process
# lives. The binding never touches $SIG{PIPE}. Each case runs in a forked
# child, so a SIGPIPE death is seen by the parent as a failure, not a crash.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX ();
use TPTest;

use Net::TLSPump qw(:all);

test_deadline(60);

sub pipe_disposition {
    my $old = POSIX::SigAction->new;
    POSIX::sigaction(POSIX::SIGPIPE(), undef, $old) or die "sigaction: $!";
    return $old->{HANDLER};
}

ok(!defined $SIG{PIPE} || $SIG{PIPE} eq 'DEFAULT', 'SIGPIPE has the default disposition in Perl');
is(pipe_disposition(), 'DEFAULT', 'and in the kernel');

my $sctx = Net::TLSPump::Context->server;
my $cctx = Net::TLSPump::Context->client(ca => $sctx->cert_pem);

for my $transport ('tcp', 'unix') {
    pipe(my $res_r, my $res_w) or die $!;
    $res_w->autoflush(1);
    my $pid = fork_peer(sub {
        close $res_r;
        my ($a, $b) = $transport eq 'tcp' ? tcp_pair() : unix_pair();
        my $cl = $cctx->wrap($a, server_hostname => 'localhost');
        my $sv = $sctx->wrap($b);
        handshake_pair($cl, $sv);
        # The peer goes away: its TLS state and its socket.
        $sv->close;
        close $b;
        my $err;
        for my $i (1 .. 200) {
            my $ok = eval {
                $cl->write('x' x 65536);
                $cl->flush(timeout => 5);
                1;
            };
            if (!$ok) { $err = $@; last }
        }
        my $class = ref($err) || 'none';
        my $kind  = ref($err) ? $err->kind : '';
        print $res_w join("\t", $class, $kind, "$err" =~ s/\n/ /gr, pipe_disposition()), "\n";
        1;
    });
    close $res_w;
    my $line = <$res_r> // '';
    chomp $line;
    my ($class, $kind, $msg, $disp) = split /\t/, $line;
    my $status = reap_peer($pid);
    is($status & 127, 0, "$transport: not killed by a signal (status $status)");
    is($status >> 8, 0, "$transport: the process lived and exited normally");
    ok($class && $class->isa('Net::TLSPump::Error'), "$transport: write croaked a Net::TLSPump::Error ($class, $kind)");
    like($msg // '', qr/^(write|flush): /, "$transport: message: " . ($msg // ''));
    is($disp, 'DEFAULT', "$transport: SIGPIPE disposition untouched");
}

ok(!defined $SIG{PIPE} || $SIG{PIPE} eq 'DEFAULT', '$SIG{PIPE} untouched');
done_testing;
