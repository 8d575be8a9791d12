#!/usr/bin/perl
# tlspump driven from Perl: the multi-connection server a script writes.
#
# An accept loop; each connection is served in a forked child (the Perl way:
# no interpreter threads) that wraps the socket, completes the handshake
# (blocking, with a deadline, inside C), spawns the command on a socketpair
# and calls $conn->forward, the C forwarding loop. The parent reaps the
# forked children, so their CPU time is counted in the server's.
#
# usage: tlspump_pl.pl HOST PORT CERT KEY -- CMD [ARGS...]
use strict;
use warnings;
use IO::Socket::INET;
use POSIX ();
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Net::TLSPump;

my ($host, $port, $cert, $key, $sep, @cmd) = @ARGV;
die "usage: tlspump_pl.pl HOST PORT CERT KEY -- CMD [ARGS...]\n"
    unless defined $sep && $sep eq '--' && @cmd;

my $ctx = Net::TLSPump::Context->server(cert => $cert, key => $key);
my $srv = IO::Socket::INET->new(
    LocalAddr => $host, LocalPort => $port, Listen => 1024, ReuseAddr => 1,
) or die "listen $host:$port: $!\n";

$SIG{CHLD} = sub { 1 while waitpid(-1, POSIX::WNOHANG()) > 0 };
$SIG{TERM} = sub { exit 0 };

while (1) {
    my $sock = $srv->accept or next;    # EINTR from SIGCHLD: accept again
    my $pid = fork;
    if (!defined $pid) { warn "fork: $!\n"; close $sock; next }
    if ($pid) { close $sock; next }
    # the connection's own process
    $SIG{CHLD} = 'DEFAULT';
    $SIG{TERM} = 'DEFAULT';
    close $srv;
    setsockopt($sock, IPPROTO_TCP, TCP_NODELAY, 1);
    eval {
        my $conn = $ctx->wrap($sock);
        $conn->handshake(timeout => 10);
        my $child = Net::TLSPump::spawn([@cmd]);
        $conn->forward($child);
        $child->wait;
        1;
    } or warn "connection: $@";
    close $sock;
    POSIX::_exit(0);
}
