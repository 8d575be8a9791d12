# Bad input: every wrong argument croaks with a clear message before any I/O
# (undef, a string where a handle is wanted, a closed handle, a wrong object
# class, bad options), and nothing leaks an fd.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp ();
use IO::Select;
use TPTest;

use Net::TLSPump qw(:all);

test_deadline(60);

sub open_fds { opendir(my $d, '/proc/self/fd') or die $!; scalar grep { /^\d+$/ } readdir $d }
my $fds_before = open_fds();

# croaks_like(sub, qr/message/, name): a plain croak or an Error object.
sub croaks_like {
    my ($code, $re, $name) = @_;
    my $ok = eval { $code->(); 1 };
    my $e  = $@;
    ok(!$ok && "$e" =~ $re, $name) or diag('got: ' . ($ok ? 'no error' : "$e"));
    return $e;
}

sub nothing_sent {
    my ($peer, $name) = @_;
    ok(!IO::Select->new($peer)->can_read(0), "$name: nothing was sent");
}

my $sctx = Net::TLSPump::Context->server;
my $tmp  = File::Temp::tempdir(CLEANUP => 1);

# ---- Context constructors ------------------------------------------------------
croaks_like(sub { Net::TLSPump::Context->server(cert => '/nonexistent.pem') },
            qr{/nonexistent\.pem}, 'missing cert names the path');
my $e = $@;
ok(ref $e && $e->isa('Net::TLSPump::Error'), 'a missing file is a Net::TLSPump::Error');
{
    open my $fh, '>', "$tmp/cert.pem" or die $!;
    print $fh $sctx->cert_pem;
    close $fh;
}
croaks_like(sub { Net::TLSPump::Context->server(cert => "$tmp/cert.pem", key => '/nonexistent-key.pem') },
            qr{/nonexistent-key\.pem}, 'missing key names the path');
croaks_like(sub { Net::TLSPump::Context->client(ca => '/nonexistent-ca.pem') },
            qr{/nonexistent-ca\.pem}, 'missing CA names the path');
{
    my $pki = make_certs();
    croaks_like(sub { Net::TLSPump::Context->server(cert => $pki->{server_cert}, key => $pki->{self_key}) },
                qr/does not match/, 'key/cert mismatch');
}
croaks_like(sub { Net::TLSPump::Context->server(
                      cert => "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n") },
            qr/./, 'garbage PEM');

my @server_bad = (
    [{ cert => '' },              qr/cert must not be empty/],
    [{ cert => "a\0b" },          qr/cert must not contain NUL/],
    [{ cert => [1] },             qr/cert must be a byte string, not a ARRAY reference/],
    [{ key => { k => 1 } },       qr/key must be a byte string/],
    [{ cert => "\x{263a}" },      qr/cert contains wide characters/],
    [{ alpn => 'h2' },            qr/alpn must be an array reference/],
    [{ alpn => [''] },            qr/invalid alpn protocol name/],
    [{ alpn => ['a,b'] },         qr/invalid alpn protocol name 'a,b'/],
    [{ alpn => [undef] },         qr/alpn protocol name must be a byte string, not undef/],
    [{ alpn => [] },              qr/alpn must not be empty/],
    [{ min_version => 'SSLv3' },  qr/min_version must be 'TLSv1\.2' or 'TLSv1\.3', not 'SSLv3'/],
    [{ min_version => 'TLSv1.1' }, qr/min_version must be/],
    [{ write_buffer => 0 },       qr/write_buffer must be a positive number/],
    [{ write_buffer => -1 },      qr/write_buffer must be a positive number/],
    [{ write_buffer => '1M' },    qr/write_buffer must be a positive number/],
    [{ bogus => 1 },              qr/unknown option 'bogus'/],
    [{ ca => 'x' },               qr/unknown option 'ca'/],
    [{ verify => 0 },             qr/unknown option 'verify'/],
);
for my $case (@server_bad) {
    my ($opts, $re) = @$case;
    croaks_like(sub { Net::TLSPump::Context->server(%$opts) },
                qr/^Net::TLSPump::Context->server: .*$re/s, "server: $re");
}
croaks_like(sub { Net::TLSPump::Context->server(bogus => 1, other => 2) },
            qr/unknown options ('bogus', 'other'|'other', 'bogus')/, 'every unknown option is named');
croaks_like(sub { Net::TLSPump::Context->server('cert') }, qr/name => value pairs/, 'odd options');

my @client_bad = (
    [{ ca_dir => "a\0b" },       qr/ca_dir must not contain NUL/],
    [{ ca => \'x' },             qr/ca must be a byte string, not a SCALAR reference/],
    [{ alpn => 'h2' },           qr/alpn must be an array reference/],
    [{ min_version => 'SSLv3' }, qr/min_version must be/],
    [{ client_ca => 'x' },       qr/unknown option 'client_ca'/],
    [{ server_hostname => 'x' }, qr/unknown option 'server_hostname'/],
);
for my $case (@client_bad) {
    my ($opts, $re) = @$case;
    croaks_like(sub { Net::TLSPump::Context->client(%$opts) },
                qr/^Net::TLSPump::Context->client: .*$re/s, "client: $re");
}
croaks_like(sub { Net::TLSPump::Context::server('cert', 'x') }, qr/call it as a class method/,
            'server called as a function');
croaks_like(sub { $sctx->server }, qr/call it as a class method/, 'server called on an object');

ok(Net::TLSPump::Context->server(alpn => ['h2', 'http/1.1'], min_version => 'TLSv1.3',
                                 write_buffer => 4096), 'good server options');
ok(Net::TLSPump::Context->client(ca => $sctx->cert_pem, verify => 0, min_version => 'TLSv1.2',
                                 cert => undef, alpn => undef), 'good client options (undef = default)');

# ---- wrap ------------------------------------------------------------------------
my ($a, $b) = unix_pair();
my $wrap_re = qr/^Net::TLSPump::Context::wrap: expected a socket handle or a file descriptor number/;
croaks_like(sub { $sctx->wrap(undef) }, qr/$wrap_re, got undef/, 'wrap(undef)');
croaks_like(sub { $sctx->wrap('not a handle') }, qr/$wrap_re, got the string 'not a handle'/,
            'wrap(a string)');
croaks_like(sub { $sctx->wrap('STDIN') }, qr/got the string 'STDIN'/, 'a handle name is not a handle');
croaks_like(sub { $sctx->wrap(3.5) }, qr/invalid file descriptor 3\.5/, 'wrap(3.5)');
croaks_like(sub { $sctx->wrap(-1) }, qr/invalid file descriptor -1/, 'wrap(-1)');
croaks_like(sub { $sctx->wrap({}) }, qr/$wrap_re, got a HASH reference/, 'wrap({})');
croaks_like(sub { $sctx->wrap(sub {}) }, qr/got a CODE reference/, 'wrap(sub {})');
{
    my ($x, $y) = unix_pair();
    close $x;
    croaks_like(sub { $sctx->wrap($x) }, qr/the handle is closed/, 'wrap(closed handle)');
    my $fd = fileno($y);
    close $y;
    croaks_like(sub { $sctx->wrap($fd) }, qr/\b$fd\b.*not open|not open.*\b$fd\b/,
                'wrap(closed fd number) names it');
    ok(ref $@ && $@->isa('Net::TLSPump::Error'), 'a closed fd is a Net::TLSPump::Error');
}
{
    pipe(my $r, my $w) or die $!;
    croaks_like(sub { $sctx->wrap($r) }, qr/not a socket/, 'a pipe is not a socket');
}
croaks_like(sub { $sctx->wrap($a, server_hostname => "local\0host") }, qr/server_hostname must not contain NUL/,
            'NUL in server_hostname');
croaks_like(sub { $sctx->wrap($a, server_hostname => 'x', bogus => 1) }, qr/unknown option 'bogus'/,
            'wrap: unknown option');
croaks_like(sub { $sctx->wrap($a, 'localhost') }, qr/name => value pairs/, 'wrap: odd options');
{
    my $cctx = Net::TLSPump::Context->client(ca => $sctx->cert_pem);
    croaks_like(sub { $cctx->wrap($a) }, qr/server_hostname/, 'a verifying client needs server_hostname');
    nothing_sent($b, 'failed wrap');
}
# Accepted handle forms: IO::Socket, glob, globref, IO ref, fd number.
{
    no strict 'refs';
    open(SOCKGLOB, '+<&', $a) or die $!;
    for my $h ([$a, 'IO::Socket'], [*SOCKGLOB, 'glob'], [\*SOCKGLOB, 'globref'],
               [*SOCKGLOB{IO}, 'IO ref'], [fileno($a), 'fd number'], ['' . fileno($a), 'fd string']) {
        my $c = $sctx->wrap($h->[0]);
        ok($c, "wrap accepts a $h->[1]");
    }
    close SOCKGLOB;
}

# ---- wrong object class ---------------------------------------------------------
my $conn = Net::TLSPump::Context->client(ca => $sctx->cert_pem)->wrap($a, server_hostname => 'localhost');
for my $m (qw(handshake read write flush shutdown wait want fileno version cipher alpn
              peer_cert verify_result buffered pending handshake_done peer_closed server_name
              forward close)) {
    my $fn = \&{"Net::TLSPump::Conn::$m"};
    croaks_like(sub { $fn->($sctx, $m eq 'write' || $m eq 'forward' ? ('x') : ()) }, qr/^Net::TLSPump::Conn::$m: Expected a Net::TLSPump::Conn object/,
                "Conn::$m on a Context");
}
croaks_like(sub { Net::TLSPump::Conn::read(undef) }, qr/Expected a Net::TLSPump::Conn object/, 'read(undef)');
croaks_like(sub { Net::TLSPump::Conn::read('Net::TLSPump::Conn') }, qr/Expected a Net::TLSPump::Conn object/,
            'class name as the object');
croaks_like(sub { (bless \(my $x = 1234), 'Net::TLSPump::Conn')->read }, qr/Expected a Net::TLSPump::Conn object/,
            'a hand-blessed scalar is not a Conn');
croaks_like(sub { (bless {}, 'Net::TLSPump::Conn')->read }, qr/Expected a Net::TLSPump::Conn object/,
            'a hand-blessed hash is not a Conn');
for my $m (qw(wrap fingerprint cert_pem ephemeral role)) {
    my $fn = \&{"Net::TLSPump::Context::$m"};
    croaks_like(sub { $fn->($conn, $m eq 'wrap' ? ($a) : ()) }, qr/^Net::TLSPump::Context::$m: Expected a Net::TLSPump::Context object/,
                "Context::$m on a Conn");
}
croaks_like(sub { Net::TLSPump::Context->wrap($a) }, qr/Expected a Net::TLSPump::Context object/,
            'wrap as a class method');
for my $m (qw(run stop addresses context close)) {
    my $fn = \&{"Net::TLSPump::Server::$m"};
    croaks_like(sub { $fn->($conn) }, qr/^Net::TLSPump::Server::$m: Expected a Net::TLSPump::Server object/,
                "Server::$m on a Conn");
}
for my $m (qw(pid fileno wait kill close)) {
    my $fn = \&{"Net::TLSPump::Child::$m"};
    croaks_like(sub { $fn->($sctx) }, qr/^Net::TLSPump::Child::$m: Expected a Net::TLSPump::Child object/,
                "Child::$m on a Context");
}

# ---- Conn method arguments -------------------------------------------------------
my $write_re = qr/^Net::TLSPump::Conn::write: data/;
croaks_like(sub { $conn->write(undef) }, qr/$write_re must be a byte string, not undef/, 'write(undef)');
croaks_like(sub { $conn->write(['x']) }, qr/$write_re must be a byte string, not a ARRAY reference/, 'write([])');
croaks_like(sub { $conn->write("snow \x{2603}") }, qr/$write_re contains wide characters/, 'write(wide)');
croaks_like(sub { $conn->write() }, qr/Usage|Too few|write/, 'write() without data');
for my $bad (0, -1, 'x', 1.5, [1]) {
    croaks_like(sub { $conn->read($bad) }, qr/^Net::TLSPump::Conn::read: max must be a positive number/,
                'read(' . (ref $bad || $bad) . ')');
}
for my $m (qw(handshake read write flush shutdown wait)) {
    my @args = $m eq 'write' ? ('x') : $m eq 'read' ? (undef) : ();
    for my $bad (-1, -0.5, 'NaN', 'x', [1]) {
        croaks_like(sub { $conn->$m(@args, timeout => $bad) },
                    qr/^Net::TLSPump::Conn::$m: timeout must (not be negative|be a number of seconds or undef)/,
                    "$m(timeout => " . (ref $bad || $bad) . ')');
    }
    croaks_like(sub { $conn->$m(@args, tiemout => 1) }, qr/unknown option 'tiemout'/, "$m: unknown option");
}
croaks_like(sub { $conn->read(size => 3) }, qr/unknown option 'size'/, 'read(size => 3)');
croaks_like(sub { $conn->handshake(1, 2) }, qr/unknown option '1'/, 'handshake(1, 2)');
croaks_like(sub { $conn->handshake(1) }, qr/name => value pairs/, 'handshake(1)');
nothing_sent($b, 'bad method arguments');
is($conn->write(''), 0, 'empty write is 0');
ok(utf8::upgrade(my $up = "caf\x{e9}"), 'an upgraded string of bytes');
is($conn->write($up), 4, 'is written as its 4 bytes');

# ---- use after close ---------------------------------------------------------------
$conn->close;
$conn->close;
for my $m (qw(handshake read flush shutdown wait want fileno version cipher alpn peer_cert
              verify_result server_name buffered pending handshake_done peer_closed)) {
    my $err = croaks_like(sub { $conn->$m }, qr/^connection is closed$/, "$m after close");
    ok(ref $err && $err->isa('Net::TLSPump::ClosedError') && $err->kind eq 'closed', "$m: ClosedError");
}
croaks_like(sub { $conn->write('x') }, qr/^connection is closed$/, 'write after close');

# ---- no fd leak ----------------------------------------------------------------------
{
    pipe(my $r, my $w) or die $!;
    open my $fh, '>', "$tmp/bad.key" or die $!;
    print $fh "not a key\n";
    close $fh;
    for (1 .. 20) {
        eval { Net::TLSPump::Context->server(cert => '/nonexistent.pem') };
        eval { Net::TLSPump::Context->server(cert => "$tmp/cert.pem", key => "$tmp/bad.key") };
        eval { $sctx->wrap($r) };
    }
}
undef $conn;
close $a;
close $b;
is(open_fds(), $fds_before, 'no fd leaked');

done_testing;
