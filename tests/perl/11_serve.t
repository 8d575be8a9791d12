# Net::TLSPump::Server / serve: the core's multi-connection server for a
# command or a backend, run in a forked child and stopped by a signal
# (graceful stop), with Net::TLSPump clients.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp ();
use TPTest;

use Net::TLSPump qw(:all);

test_deadline(120);

my $tmp = File::Temp::tempdir('tlspump-serve-XXXXXX', TMPDIR => 1, CLEANUP => 1);

# Runs $server->run in a child that stops gracefully on SIGTERM.
sub run_in_child {
    my ($server) = @_;
    return fork_peer(sub {
        $SIG{TERM} = sub { };    # a handler: the pending signal stops the loop
        $server->run;
        1;
    });
}

sub port_of { my ($addr) = @_; $addr =~ /:(\d+)$/ or die "no port in $addr"; $1 }

# One client session: send $data, half-close, read the answer until EOF.
sub session {
    my ($ctx, $port, $data) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port) or die "connect: $!";
    my $conn = $ctx->wrap($sock, server_hostname => 'localhost');
    drive($conn, sub { $conn->handshake });
    write_all($conn, $data);
    drive($conn, sub { $conn->shutdown });
    return read_all($conn);
}

# ---- a command per connection -------------------------------------------------
{
    open my $log, '>', "$tmp/log.txt" or die $!;
    my $server = Net::TLSPump::Server->new(listen => '127.0.0.1:0', command => ['wc', '-c'],
                                           log => $log, idle_timeout => 30);
    isa_ok($server, 'Net::TLSPump::Server');
    my $addrs = $server->addresses;
    is(ref $addrs, 'ARRAY', 'addresses is an array reference');
    like($addrs->[0], qr/^127\.0\.0\.1:\d+$/, "bound to $addrs->[0]");
    my $sctx = $server->context;
    ok($sctx->ephemeral, 'without ctx: the ephemeral certificate');
    my $pid = run_in_child($server);
    my $cctx = Net::TLSPump::Context->client(ca => $sctx->cert_pem);
    my $port = port_of($addrs->[0]);
    like(session($cctx, $port, 'x' x 100_000), qr/^\s*100000\s*$/, 'wc -c over TLS: 100000');
    like(session($cctx, $port, "abc"), qr/^\s*3\s*$/, 'a second connection: 3');
    kill 'TERM', $pid;
    is(reap_peer($pid), 0, 'SIGTERM: graceful stop, run returned');
    close $log;
    open $log, '<', "$tmp/log.txt" or die $!;
    my $text = do { local $/; <$log> };
    like($text, qr/listening on 127\.0\.0\.1:$port/, 'log: listening line');
    like($text, qr/in=100000 .*exit=0/, 'log: the connection line');
    like($text, qr/stopped/, 'log: stopped');
}

# ---- the environment the command sees -------------------------------------------
{
    my $server = Net::TLSPump::Server->new(listen => ['127.0.0.1:0'], log => undef,
        command => ['sh', '-c', 'cat >/dev/null; echo "$TLSPUMP_VERSION $TLSPUMP_SNI"']);
    my $pid  = run_in_child($server);
    my $cctx = Net::TLSPump::Context->client(ca => $server->context->cert_pem);
    is(session($cctx, port_of($server->addresses->[0]), 'hi'), "TLSv1.3 localhost\n",
       'TLSPUMP_VERSION and TLSPUMP_SNI');
    kill 'TERM', $pid;
    is(reap_peer($pid), 0, 'stopped');
}

# ---- a backend, a listening handle, serve() ------------------------------------------
{
    my $bl = tcp_listener();
    my $backend = fork_peer(sub {
        my $s = $bl->accept or die "accept: $!";
        my $got = '';
        while (sysread($s, my $buf, 65536)) { $got .= $buf }
        syswrite($s, uc $got);
        1;
    });
    my $l    = tcp_listener();
    my $sctx = Net::TLSPump::Context->server;
    my $pid  = fork_peer(sub {
        $SIG{TERM} = sub { };
        Net::TLSPump::serve(listen => $l, ctx => $sctx, backend => '127.0.0.1:' . $bl->sockport,
                            log => undef);
        1;
    });
    my $cctx = Net::TLSPump::Context->client(ca => $sctx->cert_pem);
    is(session($cctx, $l->sockport, "hello backend\n"), "HELLO BACKEND\n",
       'serve(): a backend behind a listening handle');
    is(reap_peer($backend), 0, 'the backend saw the half-close');
    kill 'TERM', $pid;
    is(reap_peer($pid), 0, 'serve() returned after SIGTERM');
}

# ---- stop before run; bad options ----------------------------------------------------
{
    my $server = Net::TLSPump::Server->new(listen => '127.0.0.1:0', command => ['cat'], log => undef);
    $server->stop;
    $server->run;
    pass('stop before run: run returns at once');
    $server->close;
    $server->close;
    my $e = exception_ok(sub { $server->addresses }, 'Net::TLSPump::ClosedError',
                         qr/^server is closed$/, 'addresses after close');
}
my $new = sub { Net::TLSPump::Server->new(listen => '127.0.0.1:0', log => undef, @_) };
for my $case (
    [[], qr/a command or a backend is required/],
    [[command => ['cat'], ctx => Net::TLSPump::Context->client], qr/server context/],
    [[command => ['cat'], ctx => 'x'], qr/Expected a Net::TLSPump::Context object/],
    [[command => []], qr/the command must not be empty/],
    [[command => 'cat'], qr/the command must be an array reference/],
    [[command => ['cat'], max_conns => 0], qr/max_conns must be a positive integer/],
    [[command => ['cat'], grace => -1], qr/grace must not be negative/],
    [[command => ['cat'], bogus => 1], qr/unknown option 'bogus'/],
    [[command => ['cat'], listen => 'nope'], qr/cannot listen on nope/],
    [[command => ['cat'], listen => []], qr/listen must not be empty/],
) {
    my ($opts, $re) = @$case;
    eval { $new->(@$opts) };
    like("$@", $re, "Server->new: $re");
}
{
    my $busy = tcp_listener();
    eval { $new->(command => ['cat'], listen => '127.0.0.1:' . $busy->sockport) };
    like("$@", qr/Address already in use/, 'port in use');
    isa_ok($@, 'Net::TLSPump::Error');
}

done_testing;
