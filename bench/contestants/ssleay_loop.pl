#!/usr/bin/perl
# A hand-written Net::SSLeay select loop: what a careful Perl user writes
# today to serve a command over TLS, as a benchmark contestant.
#
# Fork per connection (the usual Perl server shape); in the connection's
# process a blocking SSL_accept, then the command on a socketpair and an
# IO::Select loop that moves up to 16 KiB at a time each way. Unlike the
# seed's loop it does the known pitfalls right: it drains what OpenSSL has
# already decrypted (pending) before going back to select, it half-closes
# (the client's close_notify shuts down the child's input, the child's
# output still flows until its EOF), it sends close_notify at the end, it
# reaps every child, and TCP_NODELAY is set.
#
# usage: ssleay_loop.pl HOST PORT CERT KEY -- CMD [ARGS...]
use strict;
use warnings;
use IO::Socket::INET;
use IO::Select;
use POSIX ();
use Socket qw(AF_UNIX SOCK_STREAM PF_UNSPEC IPPROTO_TCP TCP_NODELAY SHUT_WR);
use Net::SSLeay ();

my ($host, $port, $cert, $key, $sep, @cmd) = @ARGV;
die "usage: ssleay_loop.pl HOST PORT CERT KEY -- CMD [ARGS...]\n"
    unless defined $sep && $sep eq '--' && @cmd;

Net::SSLeay::load_error_strings();
Net::SSLeay::SSLeay_add_ssl_algorithms();
Net::SSLeay::randomize();

my $ctx = Net::SSLeay::CTX_new() or die "CTX_new failed\n";
Net::SSLeay::CTX_set_options($ctx, Net::SSLeay::OP_ALL());
Net::SSLeay::CTX_use_certificate_chain_file($ctx, $cert)
    or die "cert $cert: " . Net::SSLeay::ERR_error_string(Net::SSLeay::ERR_get_error()) . "\n";
Net::SSLeay::CTX_use_PrivateKey_file($ctx, $key, Net::SSLeay::FILETYPE_PEM())
    or die "key $key: " . Net::SSLeay::ERR_error_string(Net::SSLeay::ERR_get_error()) . "\n";

my $srv = IO::Socket::INET->new(
    LocalAddr => $host, LocalPort => $port, Listen => 1024, ReuseAddr => 1,
) or die "listen $host:$port: $!\n";

$SIG{PIPE} = 'IGNORE';
$SIG{CHLD} = sub { 1 while waitpid(-1, POSIX::WNOHANG()) > 0 };
$SIG{TERM} = sub { exit 0 };

while (1) {
    my $sock = $srv->accept or next;    # EINTR from SIGCHLD: accept again
    my $pid = fork;
    if (!defined $pid) { warn "fork: $!\n"; close $sock; next }
    if ($pid) { close $sock; next }
    $SIG{CHLD} = 'DEFAULT';
    $SIG{TERM} = 'DEFAULT';
    close $srv;
    serve($sock);
    POSIX::_exit(0);
}

sub ssl_error {
    my $e = Net::SSLeay::ERR_get_error();
    return $e ? Net::SSLeay::ERR_error_string($e) : "$!";
}

sub write_plain {
    my ($fh, $data) = @_;
    while (length $data) {
        my $n = syswrite($fh, $data);
        return 0 unless defined $n;
        substr($data, 0, $n) = '';
    }
    return 1;
}

sub serve {
    my ($sock) = @_;
    setsockopt($sock, IPPROTO_TCP, TCP_NODELAY, 1);
    my $ssl = Net::SSLeay::new($ctx);
    Net::SSLeay::set_fd($ssl, fileno $sock);
    if (Net::SSLeay::accept($ssl) <= 0) {
        warn "handshake: " . ssl_error() . "\n";
        Net::SSLeay::free($ssl);
        return;
    }
    socketpair(my $mine, my $theirs, AF_UNIX, SOCK_STREAM, PF_UNSPEC)
        or die "socketpair: $!\n";
    my $kid = fork;
    die "fork: $!\n" unless defined $kid;
    if (!$kid) {
        close $mine;
        open(STDIN, '<&', $theirs) or POSIX::_exit(127);
        open(STDOUT, '>&', $theirs) or POSIX::_exit(127);
        close $theirs;
        exec { $cmd[0] } @cmd or POSIX::_exit(127);
    }
    close $theirs;

    my $sel = IO::Select->new($sock, $mine);
    my $child_eof = 0;
  LOOP:
    while (!$child_eof) {
        for my $fh ($sel->can_read) {
            if ($fh == $sock) {
                # One record per read; drain what OpenSSL already holds.
                do {
                    my $data = Net::SSLeay::read($ssl, 16384);
                    if (!defined $data || !length $data) {
                        # close_notify or error: pass the EOF to the child,
                        # keep sending its output.
                        $sel->remove($sock);
                        shutdown($mine, SHUT_WR);
                        next LOOP;
                    }
                    write_plain($mine, $data) or last LOOP;
                } while (Net::SSLeay::pending($ssl) > 0);
            } else {
                my $n = sysread($mine, my $buf, 16384);
                if (!$n) { $child_eof = 1; last }
                Net::SSLeay::ssl_write_all($ssl, $buf) or last LOOP;
            }
        }
    }
    Net::SSLeay::shutdown($ssl);    # our close_notify
    Net::SSLeay::free($ssl);
    close $sock;
    close $mine;
    waitpid($kid, 0);
}
