#!/usr/bin/env perl
# A non-blocking TLS client on Net::TLSPump: a non-blocking connect, one
# small IO::Select dispatcher driven by $conn->want (no busy wait, no $!
# string matching), a request written with partial progress, the reply read
# with draining reads, and a clean close_notify. SIGPIPE cannot kill it.
#
#   examples/nonblock_client.pl [--ca FILE | --insecure] [--path /] HOST PORT
use strict;
use warnings;
use Getopt::Long;
use IO::Select;
use IO::Socket::INET;
use Net::TLSPump qw(:all);

my ($ca, $insecure, $path, $timeout) = (undef, 0, '/', 10);
GetOptions('ca=s' => \$ca, 'insecure' => \$insecure, 'path=s' => \$path,
           'timeout=f' => \$timeout) && @ARGV == 2
  or die "usage: $0 [--ca FILE | --insecure] [--path /] HOST PORT\n";
my ($host, $port) = @ARGV;
my ($sock, $conn);

# The dispatcher: sleeps until the socket is ready for what TLS wants next.
sub wait_for {
    my $want = $conn->want or return;
    my ($r, $w) = (IO::Select->new, IO::Select->new);
    $r->add($sock) if $want & WANT_READ;
    $w->add($sock) if $want & WANT_WRITE;
    IO::Select->select($r, $w, undef, $timeout) or die "timed out after $timeout s\n";
}

sub main {
    $sock = IO::Socket::INET->new(PeerHost => $host, PeerPort => $port, Blocking => 0)
      or die "connect $host:$port: $!\n";
    # No --ca: the system trust store. --insecure: any certificate.
    my $ctx = Net::TLSPump::Context->client($insecure ? (verify => 0) : (ca => $ca));
    $conn = $ctx->wrap($sock, server_hostname => $host);

    # The handshake's first write also completes the non-blocking connect.
    wait_for() while $conn->handshake != DONE;
    warn "connected: ", $conn->version, " ", $conn->cipher,
      ($insecure ? " (INSECURE: certificate not verified)" : ''), "\n";

    my $request = "GET $path HTTP/1.0\r\nHost: $host\r\nConnection: close\r\n\r\n";
    while (length $request) {
        substr($request, 0, $conn->write($request), '');    # drop what was accepted
        wait_for() if length $request;
    }
    wait_for() while $conn->flush != DONE;

    # Each read returns everything that has arrived; '' is the server's
    # close_notify (a close without it croaks: the reply may be cut short).
    while (1) {
        my $data = $conn->read;
        if (!defined $data) { wait_for(); next }
        last if $data eq '';
        print $data;
    }
    # Our close_notify; the server may be gone already, which is fine here.
    eval { wait_for() while $conn->shutdown != DONE };
}

# Errors are Net::TLSPump::Error objects whose text says what failed.
eval { main(); 1 } or die "nonblock_client: $@\n";
