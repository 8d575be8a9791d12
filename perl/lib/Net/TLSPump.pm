package Net::TLSPump;

use strict;
use warnings;

our $VERSION = '0.1.0';

require XSLoader;
XSLoader::load('Net::TLSPump', $VERSION);

use Exporter 'import';

# DONE, WANT_READ and WANT_WRITE are constant subs made by the XS (BOOT).
our @EXPORT_OK   = qw(DONE WANT_READ WANT_WRITE spawn serve);
our %EXPORT_TAGS = (all => [@EXPORT_OK], constants => [qw(DONE WANT_READ WANT_WRITE)]);

# The C objects cannot be shared between threads: a new thread gets undef.
for my $class (qw(Net::TLSPump::Context Net::TLSPump::Conn Net::TLSPump::Child
                   Net::TLSPump::Server)) {
    no strict 'refs';
    *{"${class}::CLONE_SKIP"} = sub { 1 };
}

# Serves until stopped: Net::TLSPump::serve(listen => ..., command => [...]).
sub serve {
    my $server = Net::TLSPump::Server->new(@_);
    $server->run;
    $server->close;
    return;
}

package Net::TLSPump::Server;

# Without ctx: a server context with the ephemeral certificate.
sub new {
    my ($class, @opts) = @_;
    my %seen = @opts % 2 ? () : @opts;
    push @opts, ctx => Net::TLSPump::Context->server unless exists $seen{ctx};
    return $class->_new(@opts);
}

package Net::TLSPump::Error;

use overload
    '""'     => sub { $_[0]{message} },
    'bool'   => sub { 1 },
    fallback => 1;

sub message   { $_[0]{message} }
sub reason    { $_[0]{reason} }
sub operation { $_[0]{operation} }
sub kind      { $_[0]{kind} }
sub errno     { $_[0]{errno} }
sub truncated { ($_[0]{kind} || '') eq 'truncated' ? 1 : 0 }

package Net::TLSPump::TruncatedError;
our @ISA = ('Net::TLSPump::Error');

package Net::TLSPump::ResetError;
our @ISA = ('Net::TLSPump::Error');

package Net::TLSPump::ClosedError;
our @ISA = ('Net::TLSPump::Error');

package Net::TLSPump::Timeout;
our @ISA = ('Net::TLSPump::Error');

package Net::TLSPump;

1;

__END__

=head1 NAME

Net::TLSPump - TLS for select/poll loops done right: non-blocking handshake, draining reads, buffered writes

=head1 SYNOPSIS

    use Net::TLSPump qw(:all);
    use IO::Socket::INET;

    my $ctx  = Net::TLSPump::Context->client;             # system CAs, hostname checked
    my $sock = IO::Socket::INET->new(PeerAddr => 'example.org:443') or die $!;
    my $conn = $ctx->wrap($sock, server_hostname => 'example.org');

    # blocking style: every I/O method takes a timeout (seconds)
    $conn->handshake(timeout => 10);
    $conn->write("GET / HTTP/1.0\r\nHost: example.org\r\n\r\n", timeout => 10);
    while (length(my $data = $conn->read(undef, timeout => 10))) {
        print $data;
    }
    $conn->shutdown(timeout => 10);

=head1 DESCRIPTION

Net::TLSPump is the Perl binding of I<tlspump>, a small C library on
OpenSSL 3 that does the parts of TLS glue that are usually done wrong by
hand in a C<select> loop:

=over 4

=item *

a B<non-blocking handshake> that says exactly which readiness to wait for
(readable or writable), so the loop never spins;

=item *

a B<read that drains> everything OpenSSL has decrypted, including what it
holds internally, so a caller that waits for readability never stalls on
data the kernel no longer reports;

=item *

a B<bounded write buffer owned by the library>: C<write> copies the bytes
and sends what it can; there is no "bad write retry", no partial-write
bookkeeping, and writing to a peer that has gone away is an error, never a
C<SIGPIPE> that kills the process (the binding never touches C<$SIG{PIPE}>);

=item *

B<waits in C>: every I/O method takes C<< timeout => $seconds >> and then
blocks in C<poll(2)> inside the library, while Perl signal handlers
(C<alarm>, C<$SIG{INT}>) still run;

=item *

a forwarding loop between a TLS connection and a plain socket or a child
command (C<spawn>, C<forward>), running in C.

=back

Errors are exceptions (objects of class L</Net::TLSPump::Error>), never
return codes to check; return values never depend on context.

=head1 EXPORTS

Nothing by default. On request: the constants below, L</spawn> and
L</serve>; C<:all> exports all of them, C<:constants> the constants only.

    use Net::TLSPump qw(:all);          # DONE WANT_READ WANT_WRITE spawn serve

=head1 CONSTANTS

=over 4

=item DONE (0)

The operation is complete.

=item WANT_READ (1)

Wait until the socket is readable, then call the operation again.

=item WANT_WRITE (2)

Wait until the socket is writable, then call the operation again.

=back

C<< $conn->want >> may return C<WANT_READ | WANT_WRITE> (3) when both
directions wait; test it with C<&>.

C<Net::TLSPump::CORE_VERSION> is the version of the C core.

=head1 TIMEOUTS

C<handshake>, C<read>, C<write>, C<flush>, C<shutdown>, C<wait> and
C<< Net::TLSPump::Child->wait >> take an optional C<< timeout => $seconds >>:

=over 4

=item absent or C<0>

Non-blocking: the call does what it can now and returns C<WANT_READ> /
C<WANT_WRITE> (C<read>: C<undef>) when it would have to wait.

=item a positive number

Waits in C (C<poll>) for at most that many seconds in total (fractions are
fine), then croaks a L</Net::TLSPump::Timeout>. Nothing is lost: the state
of the connection is intact and the call can be made again.

=item C<undef> (given explicitly)

Waits without limit.

=back

The two C<wait> methods are the exception: they exist to block, so an
absent timeout waits without limit there (as in the Python binding).

While waiting, a Perl signal with a handler (C<alarm> with C<$SIG{ALRM}>,
C<$SIG{INT}>, ...) stops the wait and its handler runs at once. If the
handler dies, that exception propagates; if it returns, the call croaks a
L</Net::TLSPump::Error> of kind C<interrupted> (the call is not retried).

=head1 Net::TLSPump::Context

Configuration shared by many connections. Contexts are reference counted:
every connection keeps its context alive, so a context may go out of scope
while its connections are still in use.

Certificates, keys and CA bundles (C<cert>, C<key>, C<ca>, C<client_ca>)
may be given either as a path to a PEM file or as PEM text itself
(anything starting with C<-----BEGIN>). A file may hold both the
certificate and the key; then C<key> may be omitted. Unknown option names
croak, naming them; a missing or unreadable file, a key that does not match
the certificate or PEM that does not parse croaks a
L</Net::TLSPump::Error> that says so (naming the path).

=head2 server

    my $ctx = Net::TLSPump::Context->server(%options);

Options:

=over 4

=item cert => $path_or_pem, key => $path_or_pem

The server's certificate (chain) and private key. Without C<cert>, an
B<ephemeral self-signed> P-256 certificate is generated in memory (valid
for C<localhost>, C<127.0.0.1> and C<::1>); clients can trust it through
L</cert_pem> or pin L</fingerprint>.

=item client_ca => $path_or_pem

Require client certificates signed by this CA (mutual TLS).

=item alpn => [ 'h2', 'http/1.1' ]

The ALPN protocols the server accepts, in preference order.

=item min_version => 'TLSv1.3'

The lowest protocol version: C<'TLSv1.2'> (default) or C<'TLSv1.3'>.

=item write_buffer => $bytes

The per-connection limit of the plaintext write buffer (default 1 MiB).

=back

=head2 client

    my $ctx = Net::TLSPump::Context->client(%options);

Clients verify the server's certificate chain B<and> host name by default
(against the system trust store unless C<ca>/C<ca_dir> is given). Options:

=over 4

=item ca => $path_or_pem

Trust these CA certificates instead of the system store.

=item ca_dir => $path

A hashed CA directory (C<openssl rehash>).

=item verify => 0

B<Insecure>: accept any certificate (the verification result is still
available as L</verify_result>). C<undef> keeps verification on.

=item cert => ..., key => ...

A client certificate for mutual TLS.

=item alpn => [...], min_version => ..., write_buffer => ...

As for L</server>.

=back

=head2 fingerprint

SHA-256 of the context's certificate (DER) as 64 lowercase hex digits;
C<undef> for a client context without a certificate.

=head2 cert_pem

The context's certificate in PEM, e.g. for a client to trust an ephemeral
server certificate: C<< Net::TLSPump::Context->client(ca => $srv->cert_pem) >>.

=head2 ephemeral

True if the certificate is the generated ephemeral one.

=head2 role

C<'server'> or C<'client'>.

=head2 wrap

    my $conn = $ctx->wrap($fh_or_fd, server_hostname => $host);

Wraps a connected socket: an L<IO::Socket> object, a glob (C<*SOCK>), a
glob reference (C<\*SOCK>) or a file descriptor number. The socket is set
to non-blocking mode; it is B<never closed> by Net::TLSPump (the connection
keeps a reference to the handle so it stays open while the connection
exists; closing it is the caller's business).

C<server_hostname> (clients) is sent as SNI and checked against the
certificate (an IP address is checked against the IP SANs); a verifying
client needs it. C<undef>, a string that is not a number, a closed handle
or an fd that is not a socket croaks.

=head1 Net::TLSPump::Conn

One TLS connection. Methods that do I/O take C<< timeout => >> (see
L</TIMEOUTS>) and croak on errors.

=head2 handshake

    my $r = $conn->handshake;                 # DONE, WANT_READ or WANT_WRITE
    $conn->handshake(timeout => 5);           # DONE or croak

One handshake step; C<DONE> again once complete. Calling it is optional:
C<read>, C<write> and C<shutdown> complete the handshake first.

=head2 read

    my $data = $conn->read;                   # everything available
    my $data = $conn->read($max);             # at most $max bytes
    my $data = $conn->read(undef, timeout => 5);

Returns the bytes available (one call drains B<everything> that has
arrived: the socket and OpenSSL's internal buffers, up to C<$max> bytes;
with C<$max> it may stop earlier, and the rest is returned by the next call
without any new readiness), C<''> at the peer's clean close (C<close_notify>),
or C<undef> when nothing is available yet (non-blocking; wait for
C<< $conn->want >>). With a timeout it waits for at least one byte.

An EOF without C<close_notify> is a L</Net::TLSPump::TruncatedError>,
never a silent C<''>. Bytes that arrived before an error are returned
first; the error croaks on the next call.

=head2 write

    my $n = $conn->write($bytes);
    $conn->write($bytes, timeout => 5);       # all accepted, or croak

Copies the bytes into the connection's bounded write buffer and sends what
the socket takes now. Returns the number of bytes accepted: all of them, or
fewer only when the buffer is full (then C<< $conn->want >> says what
flushing waits for; offer the rest again later). With a timeout it waits
until all bytes are accepted. The data must be bytes: a string with wide
characters (above C<\xFF>) croaks; encode it first.

=head2 flush

Sends buffered bytes: C<DONE> when the buffer is empty, C<WANT_READ> or
C<WANT_WRITE> otherwise.

=head2 shutdown

Flushes the buffer and sends C<close_notify>: C<DONE> once it is out, or
C<WANT_*>. Reading may continue until the peer's C<close_notify>
(half-close); writing afterwards croaks a L</Net::TLSPump::ClosedError>.
It does not close the socket.

=head2 wait

    $conn->wait;                    # without limit
    $conn->wait(timeout => 5);

Waits in C until the readiness in L</want> is there and returns C<DONE>;
croaks a L</Net::TLSPump::Timeout> when it is not there in time
(C<< timeout => 0 >>: a non-blocking check). C<DONE> at once when nothing
waits.

=head2 want

The readiness to wait for next: C<WANT_READ>, C<WANT_WRITE>, both
(C<WANT_READ | WANT_WRITE>) or C<0> when nothing waits. A read may need
C<WANT_WRITE> and a write C<WANT_READ> (TLS 1.3 key updates and session
tickets), so drive your loop with C<want>, not with what you just called.

=head2 buffered

The number of bytes accepted by C<write> and not yet handed to the socket.

=head2 fileno

The socket's file descriptor.

=head2 version, cipher, alpn

After the handshake: the protocol (C<'TLSv1.3'>), the cipher
(C<'TLS_AES_256_GCM_SHA384'>) and the negotiated ALPN protocol; C<undef>
before or when absent.

=head2 pending, handshake_done, peer_closed

True if OpenSSL holds decrypted or partly read data (a C<read> returns it
without any new readiness); once the handshake is complete; once the peer's
C<close_notify> has been read.

=head2 server_name

Server side: the name the client sent as SNI, or C<undef>.

=head2 peer_cert

A hash reference C<< { pem, subject, issuer, fingerprint } >> (subject and
issuer in RFC 2253 form, fingerprint SHA-256 hex), or C<undef> when the
peer sent no certificate.

=head2 verify_result

C<'ok'>, or why verification failed (also with C<< verify => 0 >>).

=head2 forward

    my $stats = $conn->forward($child_or_handle_or_fd, idle_timeout => 60);
    my $stats = $conn->forward([$read_fh, $write_fh], close_target_write => 1);

Pumps bytes both ways between the TLS connection and a target until both
directions have ended, in C (the handshake is completed first if needed):
decrypted input goes to the target, the target's output is encrypted to the
peer. The target is a L</Net::TLSPump::Child> (its stdin/stdout), a
connected socket handle or an fd number (a TCP backend, a socketpair end),
or an array reference C<[$read, $write]> of two handles or fds (pipes). The
target is set non-blocking and never closed (but see
C<close_target_write>). Half-close is passed on: the peer's C<close_notify>
becomes C<shutdown(SHUT_WR)> on a socket target (the command sees EOF on
stdin), and the target's EOF becomes our C<close_notify> once everything
is sent.

Options: C<idle_timeout> (seconds without a byte either way that end the
pump; default none), C<close_target_write> (true: the write handle of a
C<[$read, $write]> pair belongs to the pump, which closes it to pass the
peer's EOF on -- a pipe cannot be shut down otherwise).

Returns a hash reference:

=over 4

=item to_target, to_tls

Plaintext bytes forwarded each way (C<to_target> counts bytes delivered).

=item discarded

TLS input dropped because the target stopped reading or the peer kept
sending after our close.

=item tls_end, target_end

How each side's input ended: C<'clean'> (close_notify / EOF),
C<'truncated'>, C<'reset'>, C<'timeout'> (the idle timeout), C<'error'>,
C<'aborted'>.

=item tls_error, target_error

The error text of a side that failed, else C<undef>.

=item seconds

The duration.

=item exit_status

Only for a child: its wait status as in C<$?> (C<<< $status >> 8 >>> is
the exit code, C<$status & 127> the signal), or C<undef> if it had not
exited within a second after the pump ended (it normally exits at the EOF
the pump passed on; L</wait> gets the status later).

=back

A failing side ends the pump and is reported in the stats, not croaked.
Perl signals are checked while the pump runs: a C<%SIG> handler runs at
once; if it dies (C<alarm>, C<$SIG{INT}>), that exception propagates; if
it returns, C<forward> croaks C<forward interrupted> (see L</TIMEOUTS>).

=head2 close

Frees the TLS state at once (no I/O: call L</shutdown> first for a clean
close) and drops the references to the handle and the context. The socket
itself is not closed. Later calls croak a L</Net::TLSPump::ClosedError>.
Dropping the last reference to the object does the same.

=head1 Net::TLSPump::Child

=head2 spawn

    my $child = Net::TLSPump::spawn(['./cmd.pl', '--flag'],
                                    env => { PATH => '/usr/bin' }, cwd => '/srv');
    my $stats = $conn->forward($child);

Starts a command (the program is searched in C<PATH>) with its stdin and
stdout on one end of a socketpair, for L</forward>. Options: C<env> (a hash
reference: the command's B<whole> environment; default: inherited),
C<cwd> (the directory to run in), C<stderr> (a handle or fd for its
stderr; default: inherited). All other file descriptors are closed in the
command. A program that cannot be started croaks with the reason, e.g.
C<spawn ./nope: No such file or directory>.

=head2 pid, fileno

The process id, and our end of the socketpair (croaks after L</close>).

=head2 wait

    my $status = $child->wait;                  # without limit
    my $status = $child->wait(timeout => 5);

Waits for the command to exit and returns its wait status as in C<$?>
(C<undef> if it cannot be had because C<SIGCHLD> is ignored); croaks a
L</Net::TLSPump::Timeout> (C<wait: process PID did not exit within 5 s>)
when it has not exited in time. Once known, the status is kept: later
calls return it at once.

=head2 kill

    $child->kill;            # SIGTERM
    $child->kill('KILL');    # a name (with or without SIG) or a number

Returns 1, or 0 after L</close> (the child is reaped: nothing to signal).

=head2 close

Closes our end of the socketpair (the command sees EOF on stdin) and reaps
the command: after a short grace it is sent C<SIGTERM>, then C<SIGKILL>, so
no zombie is left. Dropping the last reference (C<DESTROY>) does the same.

=head1 Net::TLSPump::Server

The core's multi-connection server ("serve this command over TLS"): one
C<epoll> loop in C accepts, handshakes and forwards each connection to a
command (started per connection, see L</spawn>) or to a backend, with
half-close, backpressure and graceful stop. The command's environment
carries C<TLSPUMP_PEER>, C<TLSPUMP_VERSION>, C<TLSPUMP_CIPHER>,
C<TLSPUMP_ALPN>, C<TLSPUMP_SNI> and, with a client certificate,
C<TLSPUMP_CLIENT_SUBJECT> and C<TLSPUMP_CLIENT_FINGERPRINT>.

=head2 serve

    use Net::TLSPump qw(serve);
    $SIG{TERM} = $SIG{INT} = sub { };     # stop gracefully instead of dying
    serve(listen => ':8443', ctx => $ctx, command => ['./cmd.pl']);

C<< Net::TLSPump::Server->new(@options) >>, L</run>, L</close>: serves
until stopped.

=head2 new

    my $server = Net::TLSPump::Server->new(
        listen  => '127.0.0.1:0',         # or [ ... ], or a listening handle
        ctx     => $ctx,                  # default: the ephemeral certificate
        command => ['wc', '-c'],          # or backend => '127.0.0.1:9000'
    );

Binds the listening sockets at once (errors croak, e.g. C<cannot listen
on 127.0.0.1:8443: Address already in use>). Options:

=over 4

=item listen

C<'HOST:PORT'>, C<'[::1]:PORT'>, C<':PORT'> (all interfaces),
C<'unix:/path'>, a listening socket handle (kept open, never closed), or an
array reference of those. Port 0 binds a free port: see L</addresses>.

=item ctx

A server L</Net::TLSPump::Context>; default: a new one with an ephemeral
certificate (L</context> returns it).

=item command => [...], backend => 'HOST:PORT'

What each connection is forwarded to (one of them is required).

=item max_conns, workers

Connections per process (default 1024); processes (default 1; more fork in
L</run>).

=item handshake_timeout, idle_timeout, grace

Seconds: the handshake bound (default 10), the idle time that ends a
connection (default none), the time running sessions get to finish when
the server stops (default 10).

=item log, log_json

A handle or fd for the log (default STDERR; C<undef>: no log), and JSON
lines instead of text.

=back

=head2 run

Runs the loop in C until the server is stopped, then stops gracefully
(running sessions get C<grace> seconds, children are reaped). Perl signals
with a handler stop it: the handler runs after the graceful stop (if it
dies, C<run> croaks with that). With the default disposition, C<SIGTERM>
and C<SIGINT> end the process at once instead.

=head2 stop

Asks the loop to stop gracefully (before L</run>: run returns at once).

=head2 addresses

The bound addresses as an array reference (C<['127.0.0.1:40123']>).

=head2 context

The server's context (e.g. for C<cert_pem> of the ephemeral certificate).

=head2 close

Closes the listening sockets and frees the server (also on C<DESTROY>).

=head1 ERRORS

Failures croak an exception object. It stringifies to the same text the
Python binding's exception has, e.g.
C<handshake: certificate verify failed: self-signed certificate>.

=head2 Net::TLSPump::Error

Methods: C<message> (the text), C<reason> (OpenSSL's reason alone, e.g.
C<'wrong version number'>), C<operation> (C<'handshake'>, C<'read'>,
C<'write'>, C<'shutdown'>, ...), C<kind> (C<'tls'>, C<'truncated'>,
C<'reset'>, C<'sys'>, C<'closed'>, C<'arg'>, C<'timeout'>,
C<'interrupted'>), C<errno> (the system error number or 0) and
C<truncated> (true for a truncation).

Subclasses, for C<< $@->isa(...) >>:

=over 4

=item Net::TLSPump::TruncatedError

The peer's EOF came without C<close_notify>: the data may be cut short.

=item Net::TLSPump::ResetError

The connection was reset (RST, C<EPIPE>).

=item Net::TLSPump::ClosedError

Use of a connection after a fatal error, after C<shutdown> (writing) or
after C<close>.

=item Net::TLSPump::Timeout

A C<timeout> passed. Nothing was lost; the call can be made again.

=back

Wrong arguments (a wrong object class, C<undef> or a string where a handle
is wanted, unknown option names, wide characters) croak with a plain
message naming the method and what was expected, e.g.
C<Net::TLSPump::Conn::read: Expected a Net::TLSPump::Conn object>.

=head1 EXAMPLE: A NON-BLOCKING CLIENT WITH IO::Select

    use strict;
    use warnings;
    use IO::Select;
    use IO::Socket::INET;
    use Net::TLSPump qw(:all);

    my ($host, $port) = ('localhost', 4433);
    my $sock = IO::Socket::INET->new(PeerHost => $host, PeerPort => $port,
                                     Blocking => 0) or die "connect: $!";
    my $ctx  = Net::TLSPump::Context->client(ca => 'ca.pem');
    my $conn = $ctx->wrap($sock, server_hostname => $host);

    # Waits for what the connection wants; no busy loop.
    sub wait_for {
        my ($conn) = @_;
        my $want = $conn->want or return;
        my $r = IO::Select->new; my $w = IO::Select->new;
        $r->add($sock) if $want & WANT_READ;
        $w->add($sock) if $want & WANT_WRITE;
        IO::Select->select($r, $w, undef, 10) or die "timed out\n";
    }

    # The non-blocking connect finishes with the handshake's first write.
    wait_for($conn) while $conn->handshake != DONE;

    my $request = "GET / HTTP/1.0\r\n\r\n";
    while (length $request) {
        substr($request, 0, $conn->write($request), '');   # partial progress
        wait_for($conn) if length $request;
    }
    wait_for($conn) while $conn->flush != DONE;

    my $reply = '';
    while (1) {
        my $data = $conn->read;          # drained: all that has arrived
        if (!defined $data) { wait_for($conn); next }
        last if $data eq '';             # the server's close_notify
        $reply .= $data;
    }
    wait_for($conn) while $conn->shutdown != DONE;
    print $reply;

See F<examples/nonblock_client.pl> in the distribution for the complete
program.

=head1 SIGNALS AND SIGPIPE

Net::TLSPump never changes signal dispositions. Writes use
C<send(MSG_NOSIGNAL)>, so with Perl's default C<SIGPIPE> disposition a
write to a peer that has gone away croaks (a L</Net::TLSPump::ResetError>
or L</Net::TLSPump::Error>) and the process lives.

=head1 SEE ALSO

L<IO::Socket::SSL>, L<Net::SSLeay>; the tlspump C header
F<csrc/include/tlspump.h> and F<DESIGN.md>.

=head1 LICENSE

MIT.

=cut
