# examples/nonblock_client.pl fetches a reply from `openssl s_server -www`
# (started on a free port, one connection each), verifying with --ca,
# accepting anything with --insecure, and failing loudly without trust.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use TPTest;

test_deadline(120);

my $example = "$FindBin::Bin/../../examples/nonblock_client.pl";
ok(-f $example, 'the example exists');
my $pki = make_certs();
my @perl = ($^X, map { "-I$_" } grep { !ref } @INC);

# Starts s_server -www for one connection; returns (pid, port).
sub s_server {
    my ($pid, $out) = start_cmd({ stderr => '/dev/null' }, 'openssl', 's_server', '-accept', '127.0.0.1:0', '-www',
        '-naccept', '1', '-cert', $pki->{server_cert}, '-key', $pki->{server_key});
    while (my $line = <$out>) {
        return ($pid, $1) if $line =~ /^ACCEPT .*:(\d+)\s*$/;
    }
    stop_cmd($pid);
    die "s_server did not start\n";
}

# Runs the example; returns (exit status, stdout, stderr).
sub run_example {
    my (@args) = @_;
    my $err = "$pki->{dir}/stderr.txt";
    my $pid = open(my $out, '-|') // die "fork: $!";
    if (!$pid) {
        open STDERR, '>', $err or die $!;
        exec 'timeout', '60', @perl, $example, @args or POSIX::_exit(127);
    }
    local $/;
    my $stdout = <$out> // '';
    close $out;
    my $status = $?;
    open my $fh, '<', $err or die $!;
    my $stderr = <$fh> // '';
    return ($status, $stdout, $stderr);
}

{
    my ($pid, $port) = s_server();
    my ($status, $out, $err) = run_example('--ca', $pki->{ca}, 'localhost', $port);
    is($status, 0, '--ca: exit 0') or diag($err);
    like($out, qr{\AHTTP/1\.0 200 ok\r?\n}, '--ca: HTTP status line');
    like($out, qr{</HTML>}, '--ca: the whole page (read until close_notify)');
    like($err, qr/connected: TLSv1\.3/, '--ca: reports the protocol');
    is(reap_peer($pid, 20), 0, 's_server served one connection and exited');
}
{
    my ($pid, $port) = s_server();
    my ($status, $out, $err) = run_example('--insecure', '--path', '/x', 'localhost', $port);
    is($status, 0, '--insecure: exit 0') or diag($err);
    like($out, qr{</HTML>}, '--insecure: the page');
    like($err, qr/INSECURE/, '--insecure says so');
    reap_peer($pid, 20);
}
{
    my ($pid, $port) = s_server();
    my ($status, $out, $err) = run_example('localhost', $port);    # system CAs: not trusted
    isnt($status, 0, 'untrusted certificate: non-zero exit');
    like($err, qr/^nonblock_client: handshake: certificate verify failed/m, "the reason: $err");
    is($out, '', 'no output');
    stop_cmd($pid);
}
{
    # A listener that never answers: the dispatcher's own timeout.
    my $l = tcp_listener();
    my ($status, $out, $err) = run_example('--timeout', '0.5', '--insecure', '127.0.0.1', $l->sockport);
    isnt($status, 0, 'silent server: non-zero exit');
    like($err, qr/timed out after 0\.5 s/, 'silent server: timed out');
    # Nobody listening: the non-blocking connect fails in the handshake.
    my $port = $l->sockport;
    close $l;
    ($status, $out, $err) = run_example('--insecure', '127.0.0.1', $port);
    isnt($status, 0, 'refused: non-zero exit');
    like($err, qr/^nonblock_client: handshake: .*refused/mi, "refused: $err");
}

done_testing;
