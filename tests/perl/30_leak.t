# No leaks: 10,000 wrap/handshake/exchange/free cycles (and error paths) keep
# the RSS within a small bound after a warm-up, and -- where Test::LeakTrace
# is installed (Debian: libtest-leaktrace-perl) -- no Perl value is leaked.
# The two ends are driven in turn over an AF_UNIX socketpair: each step
# consumes what the other one produced, so no waiting is needed.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use TPTest;

use Net::TLSPump qw(:all);

test_deadline(300);

use constant CYCLES       => 10_000;
use constant WARMUP       => 1_000;
use constant MAX_GROWTH_KB => 4 * 1024;

my $sctx = Net::TLSPump::Context->server;
my $cctx = Net::TLSPump::Context->client(ca => $sctx->cert_pem);

sub under_asan {
    open my $fh, '<', '/proc/self/maps' or return 0;
    while (<$fh>) { return 1 if m{/libasan[.\w]*\.so} }
    return 0;
}

sub cycle {
    my ($a, $b) = unix_pair();
    my $c = $cctx->wrap($a, server_hostname => 'localhost');
    my $s = $sctx->wrap($b);
    for (1 .. 20) {
        my $x = $c->handshake;
        my $y = $s->handshake;
        last if $x == DONE && $y == DONE;
    }
    $c->handshake == DONE or die "handshake did not complete\n";
    $c->write('ping') == 4 or die "write\n";
    $s->read eq 'ping' or die "read\n";
    my $pc = $c->peer_cert;    # a hash per cycle
    $c->version;
    $c->shutdown;
    $s->read eq '' or die "close_notify\n";
    $s->close;                 # explicit close; $c is freed by going out of scope
}

sub error_cycle {
    my ($a, $b) = unix_pair();
    my $c = $sctx->wrap($a);
    eval { $c->read(undef, timeout => 0.001) };    # Timeout object
    $@ && $@->isa('Net::TLSPump::Timeout') or die "expected a Timeout: $@\n";
    $c->close;
    eval { $c->read };                               # ClosedError object
    $@ && $@->isa('Net::TLSPump::ClosedError') or die "expected ClosedError\n";
    eval { Net::TLSPump::Context->server(cert => '/nonexistent.pem') };
    $@ or die "expected an error\n";
    eval { $sctx->wrap('not a handle') };            # plain croak
    $@ or die "expected a croak\n";
}

cycle() for 1 .. WARMUP;
error_cycle() for 1 .. 200;
my $rss0 = rss_kb();
my $t0   = time;
cycle() for 1 .. CYCLES;
my $rss1 = rss_kb();
error_cycle() for 1 .. 2000;
my $rss2 = rss_kb();
my $growth = $rss1 - $rss0;
diag(sprintf '%d cycles in %d s: RSS %d kB -> %d kB (%+d kB); 2000 error cycles: %+d kB',
             CYCLES, time - $t0, $rss0, $rss1, $growth, $rss2 - $rss1);
SKIP: {
    # Under AddressSanitizer (tests/run --sanitize) freed memory sits in a
    # quarantine: RSS says nothing there (ASan checks the memory itself).
    skip 'RSS bounds are meaningless under AddressSanitizer', 2 if under_asan();
    ok($growth < MAX_GROWTH_KB, "RSS growth over " . CYCLES . " cycles: $growth kB < " . MAX_GROWTH_KB . ' kB');
    ok($rss2 - $rss1 < 1024, 'RSS growth over 2000 error cycles: ' . ($rss2 - $rss1) . ' kB < 1024 kB');
}

SKIP: {
    eval { require Test::LeakTrace; Test::LeakTrace->import; 1 }
      or skip 'Test::LeakTrace not installed (Debian: libtest-leaktrace-perl)', 2;
    no_leaks_ok(sub { cycle() for 1 .. 5 }, 'no Perl value leaked by wrap/handshake/free');
    no_leaks_ok(sub { error_cycle() for 1 .. 5 }, 'no Perl value leaked by the error paths');
}

done_testing;
