# Certificate verification: failure messages, hostname mismatch, IP SANs,
# CA as path / PEM text / hashed directory, verify => 0, mutual TLS, ALPN.
# Certificates are made with the openssl CLI into a temp dir.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Copy qw(copy);
use TPTest;

use Net::TLSPump qw(:all);

test_deadline(120);

my $pki = make_certs();
sub slurp { open my $fh, '<', $_[0] or die "$_[0]: $!"; local $/; <$fh> }

my $srv_ctx = Net::TLSPump::Context->server(cert => $pki->{server_cert}, key => $pki->{server_key});
ok(!$srv_ctx->ephemeral, 'file cert is not ephemeral');

# Handshakes a fresh pair; returns (client conn, server conn, error, side).
sub try_pair {
    my ($cctx, $sctx, %wrap) = @_;
    my ($a, $b) = tcp_pair();
    my $cl = $cctx->wrap($a, %wrap);
    my $sv = $sctx->wrap($b);
    my $ok = eval { handshake_pair($cl, $sv); 1 };
    my $err = $ok ? undef : $@;
    my $side = $ok ? undef : ($TPTest::FAILED // -1) == 0 ? 'client' : 'server';
    return ($cl, $sv, $err, $side, $a, $b);
}

sub pair_ok {
    my ($name, @args) = @_;
    my ($cl, $sv, $err) = try_pair(@args);
    ok(!$err, $name) or diag("error: $err");
    return ($cl, $sv);
}

sub pair_fails {
    my ($name, $side, $re, @args) = @_;
    my ($cl, $sv, $err, $got_side) = try_pair(@args);
    ok($err && ref $err && $err->isa('Net::TLSPump::Error'), "$name: croaks an Error")
      or return;
    is($got_side, $side, "$name: on the $side side");
    like("$err", $re, "$name: $err");
    return $err;
}

# The system trust store does not know the ephemeral certificate.
my $e = pair_fails('ephemeral cert, system CAs', 'client', qr/certificate verify failed/,
                   Net::TLSPump::Context->client, Net::TLSPump::Context->server,
                   server_hostname => 'localhost');
like($e->reason, qr/verify/, 'reason says verify') if $e;
is($e->kind, 'tls', 'kind tls') if $e;
is($e->operation, 'handshake', 'operation handshake') if $e;

my $cctx = Net::TLSPump::Context->client(ca => $pki->{ca});
$e = pair_fails('wrong hostname', 'client', qr/hostname mismatch.*wrong\.example/,
                $cctx, $srv_ctx, server_hostname => 'wrong.example');

my ($cl, $sv) = pair_ok('right hostname', $cctx, $srv_ctx, server_hostname => 'localhost');
is($cl->verify_result, 'ok', 'verify_result ok');
my $pc = $cl->peer_cert;
like($pc->{subject}, qr/CN=localhost/, 'peer subject');
like($pc->{issuer}, qr/CN=tlspump-test-ca/, 'peer issuer');
my $fp = lc `openssl x509 -in $pki->{server_cert} -noout -fingerprint -sha256`;
$fp =~ s/.*=//s;
$fp =~ s/[:\s]//g;
is($pc->{fingerprint}, $fp, 'peer fingerprint = openssl x509 -fingerprint -sha256');
is($srv_ctx->fingerprint, $fp, 'server context fingerprint');
is($pc->{pem}, slurp($pki->{server_cert}), 'peer pem');

pair_ok('IP address checked against IP SANs', $cctx, $srv_ctx, server_hostname => '127.0.0.1');
pair_fails('IP address not in the SANs', 'client', qr/mismatch|127\.0\.0\.2/,
           $cctx, $srv_ctx, server_hostname => '127.0.0.2');

# Certificates as PEM text, and one file holding certificate and key.
pair_ok('CA, cert and key as PEM text',
        Net::TLSPump::Context->client(ca => slurp($pki->{ca})),
        Net::TLSPump::Context->server(cert => slurp($pki->{server_cert}),
                                      key => slurp($pki->{server_key})),
        server_hostname => 'localhost');
pair_ok('cert and key in one file', $cctx,
        Net::TLSPump::Context->server(cert => $pki->{server_both}),
        server_hostname => 'localhost');

# A hashed CA directory.
{
    my $dir = "$pki->{dir}/cadir";
    mkdir $dir or die $!;
    copy($pki->{ca}, "$dir/ca.pem") or die $!;
    system("openssl rehash $dir >/dev/null 2>&1") == 0 or die 'openssl rehash failed';
    pair_ok('ca_dir', Net::TLSPump::Context->client(ca_dir => $dir), $srv_ctx,
            server_hostname => 'localhost');
}

# An unrelated CA.
pair_fails('unrelated CA', 'client', qr/certificate verify failed/,
           Net::TLSPump::Context->client(ca => $pki->{self_cert}), $srv_ctx,
           server_hostname => 'localhost');

# verify => 0 is insecure and says so in verify_result.
($cl, $sv) = pair_ok('verify => 0 accepts the ephemeral cert',
                     Net::TLSPump::Context->client(verify => 0), Net::TLSPump::Context->server);
isnt($cl->verify_result, 'ok', 'verify_result still tells: ' . $cl->verify_result);
($cl, $sv) = pair_ok('verify => undef keeps verification on ... (trusted CA)',
                     Net::TLSPump::Context->client(ca => $pki->{ca}, verify => undef), $srv_ctx,
                     server_hostname => 'localhost');
pair_fails('verify => undef keeps verification on', 'client', qr/verify failed/,
           Net::TLSPump::Context->client(verify => undef), Net::TLSPump::Context->server,
           server_hostname => 'localhost');

# Mutual TLS.
my $mtls = Net::TLSPump::Context->server(cert => $pki->{server_cert}, key => $pki->{server_key},
                                         client_ca => $pki->{ca});
($cl, $sv) = pair_ok('mutual TLS',
    Net::TLSPump::Context->client(ca => $pki->{ca}, cert => $pki->{client_cert},
                                  key => $pki->{client_key}),
    $mtls, server_hostname => 'localhost');
like($sv->peer_cert->{subject}, qr/CN=tlspump-test-client/, 'server sees the client cert');
is($sv->verify_result, 'ok', 'client cert verified');

# Without a client certificate: the server refuses (TLS 1.3: the client may
# finish first and learn it from the alert on its first read).
{
    my ($cl, $sv, $err, $side) = try_pair($cctx, $mtls, server_hostname => 'localhost');
    if (!$err) {
        $err = eval { drive_pair([$sv, sub { $sv->read; DONE }]); undef } // $@;
    }
    ok($err && ref $err && $err->isa('Net::TLSPump::Error'), 'no client cert: refused');
    like("$err", qr/certificate/, "no client cert: $err");
}
pair_fails('client cert from another CA', 'server', qr/certificate verify failed|unknown ca|certificate/,
           Net::TLSPump::Context->client(ca => $pki->{ca}, cert => $pki->{self_cert},
                                         key => $pki->{self_key}),
           $mtls, server_hostname => 'localhost');

# ALPN.
my $alpn_srv = Net::TLSPump::Context->server(alpn => ['h2', 'http/1.1']);
my $alpn_ca  = $alpn_srv->cert_pem;
for my $case ([['http/1.1'], 'http/1.1'], [['h2', 'http/1.1'], 'h2'], [undef, undef]) {
    my ($protos, $expect) = @$case;
    my ($c, $s) = pair_ok('alpn ' . ($protos ? "@$protos" : 'none'),
        Net::TLSPump::Context->client(ca => $alpn_ca, alpn => $protos), $alpn_srv,
        server_hostname => 'localhost');
    is($c->alpn, $expect, 'client alpn ' . ($expect // 'undef'));
    is($s->alpn, $expect, 'server alpn ' . ($expect // 'undef'));
}
{
    my ($c, $s, $err) = try_pair(Net::TLSPump::Context->client(ca => $alpn_ca, alpn => ['spdy/1']),
                                 $alpn_srv, server_hostname => 'localhost');
    if ($err) {
        like("$err", qr/application protocol|alpn/i, "no common ALPN protocol: $err");
    } else {
        is($c->alpn, undef, 'no common ALPN protocol: none negotiated');
    }
}

done_testing;
