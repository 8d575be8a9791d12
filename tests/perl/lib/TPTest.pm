package TPTest;
# Helpers shared by tests/perl/*.t: loopback sockets, forked peers that are
# always reaped, certificates made with the openssl CLI, and a small
# IO::Select loop driven by $conn->want. No sleeps as synchronisation.
use strict;
use warnings;

use Exporter 'import';
use File::Temp ();
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Socket qw(AF_UNIX SOCK_STREAM PF_UNSPEC);
use Test::More;
use Time::HiRes ();

use Net::TLSPump qw(:all);

our @EXPORT = qw(test_deadline tcp_listener tcp_pair unix_pair fork_peer
  reap_peer start_cmd stop_cmd make_certs wait_for drive drive_pair
  handshake_pair read_all write_all rss_kb python3 exception_ok);

our %PIDS;    # children to kill and reap at exit

# Bounds the whole test file: SIGALRM with a dying handler. Tests that use
# alarm themselves re-arm it afterwards.
sub test_deadline {
    my ($secs) = @_;
    $SIG{ALRM} = sub { die "test deadline of $secs s passed\n" };
    alarm $secs;
}

sub tcp_listener {
    my %o = @_;
    my $l = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1',
        LocalPort => 0,
        Listen    => 16,
        ReuseAddr => 1,
        %o,
    ) or die "listen: $!";
    return $l;
}

# A connected pair of loopback TCP sockets: (client, server).
sub tcp_pair {
    my $l = tcp_listener();
    my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $l->sockport)
      or die "connect: $!";
    my $s = $l->accept or die "accept: $!";
    return ($c, $s);
}

sub unix_pair {
    socketpair(my $a, my $b, AF_UNIX, SOCK_STREAM, PF_UNSPEC) or die "socketpair: $!";
    return ($a, $b);
}

# Forks a peer that runs $code->() and exits (0 if it returned true).
# The parent gets the pid; END kills and reaps whatever is left.
sub fork_peer {
    my ($code) = @_;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        %PIDS = ();
        $SIG{ALRM} = sub { POSIX::_exit(3) };
        alarm 60;
        my $ok = eval { $code->() };
        if (!$ok) {
            my $e = $@;
            print STDERR "# peer $$ failed: $e" if length($e // '');
        }
        POSIX::_exit($ok ? 0 : 1);
    }
    $PIDS{$pid} = 1;
    return $pid;
}

# Waits (bounded) for a peer; returns its $? (or kills it after $secs).
sub reap_peer {
    my ($pid, $secs) = @_;
    $secs //= 20;
    my $end = Time::HiRes::time() + $secs;
    while (Time::HiRes::time() < $end) {
        my $r = waitpid($pid, POSIX::WNOHANG());
        if ($r == $pid) { delete $PIDS{$pid}; return $? }
        if ($r < 0) { delete $PIDS{$pid}; return -1 }
        Time::HiRes::sleep(0.02);    # polling a child's exit: no fd to wait on
    }
    kill 'KILL', $pid;
    waitpid($pid, 0);
    delete $PIDS{$pid};
    return -1;
}

# Starts a command with its stdout on a pipe; returns (pid, stdout handle).
# An optional first hashref: stdin => path or handle (default /dev/null),
# stdout => path (then the handle returned is undef), stderr => path
# (default: inherited).
sub start_cmd {
    my $o = ref $_[0] eq 'HASH' ? shift : {};
    my (@argv) = @_;
    my ($r, $w);
    if ($o->{stdout}) {
        open($w, '>', $o->{stdout}) or die "$o->{stdout}: $!";
    } else {
        pipe($r, $w) or die "pipe: $!";
    }
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        close $r if $r;
        open STDOUT, '>&', $w or POSIX::_exit(127);
        my $in = $o->{stdin} // '/dev/null';
        (ref $in ? open(STDIN, '<&', $in) : open(STDIN, '<', $in)) or POSIX::_exit(127);
        if ($o->{stderr}) { open STDERR, '>', $o->{stderr} or POSIX::_exit(127) }
        exec @argv or POSIX::_exit(127);
    }
    close $w;
    $PIDS{$pid} = 1;
    return ($pid, $r);
}

sub stop_cmd {
    my ($pid) = @_;
    kill 'TERM', $pid;
    return reap_peer($pid, 10);
}

END {
    my $status = $?;
    for my $pid (keys %PIDS) {
        kill 'KILL', $pid;
        waitpid($pid, 0);
    }
    $? = $status;
}

sub python3 {
    my $p = `command -v python3 2>/dev/null`;
    chomp $p;
    return $p;
}

# A CA, a server cert for localhost/127.0.0.1 and a client cert signed by
# it, and an unrelated self-signed cert, in a fresh temp dir.
sub make_certs {
    my $dir = File::Temp::tempdir('tlspump-perl-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    my $run = sub {
        my $cmd = join ' ', @_;
        system("$cmd >/dev/null 2>&1") == 0 or die "failed: $cmd\n";
    };
    my $key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    $run->("openssl req -x509 $key -keyout $dir/ca.key -out $dir/ca.pem -days 2"
          . " -subj /CN=tlspump-test-ca -addext basicConstraints=critical,CA:TRUE"
          . " -addext keyUsage=critical,keyCertSign,cRLSign");
    for my $who (['server', 'localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
                 ['client', 'tlspump-test-client', 'extendedKeyUsage=clientAuth']) {
        my ($n, $cn, $ext) = @$who;
        open my $fh, '>', "$dir/$n.ext" or die $!;
        print $fh "$ext\n";
        close $fh;
        $run->("openssl req -new $key -keyout $dir/$n.key -out $dir/$n.csr -subj /CN=$cn");
        $run->("openssl x509 -req -in $dir/$n.csr -CA $dir/ca.pem -CAkey $dir/ca.key"
              . " -CAcreateserial -days 2 -out $dir/$n.pem -extfile $dir/$n.ext");
    }
    $run->("openssl req -x509 $key -keyout $dir/self.key -out $dir/self.pem -days 2"
          . " -subj /CN=localhost -addext subjectAltName=DNS:localhost");
    # One file holding both certificate and key.
    system("cat $dir/server.pem $dir/server.key > $dir/server_cert_and_key.pem") == 0 or die;
    chmod 0600, glob("$dir/*.key"), "$dir/server_cert_and_key.pem";
    return {
        dir         => $dir,
        ca          => "$dir/ca.pem",
        server_cert => "$dir/server.pem",
        server_key  => "$dir/server.key",
        server_both => "$dir/server_cert_and_key.pem",
        client_cert => "$dir/client.pem",
        client_key  => "$dir/client.key",
        self_cert   => "$dir/self.pem",
        self_key    => "$dir/self.key",
    };
}

# Waits (IO::Select) for what $conn->want says; dies after $secs.
sub wait_for {
    my ($conn, $secs) = @_;
    my $want = $conn->want or return;
    my ($r, $w) = (IO::Select->new, IO::Select->new);
    $r->add($conn->fileno) if $want & WANT_READ;
    $w->add($conn->fileno) if $want & WANT_WRITE;
    my @ready = IO::Select->select($r, $w, undef, $secs // 20);
    die "wait_for: nothing ready in time (want=$want)\n" unless @ready;
}

# Calls $step->() until it returns DONE, waiting on want in between.
sub drive {
    my ($conn, $step, $secs) = @_;
    my $end = Time::HiRes::time() + ($secs // 20);
    while (1) {
        my $r = $step->();
        return $r if $r == DONE;
        my $left = $end - Time::HiRes::time();
        die "drive: did not finish in time\n" if $left <= 0;
        wait_for($conn, $left);
    }
}

# Runs the steps of several connections at once (each a [conn, step]) in
# one IO::Select loop until every step returned DONE. Dies with the first
# error (the exception object), annotated in $TPTest::FAILED (index).
our $FAILED;
sub drive_pair {
    my (@jobs) = @_;
    my $secs = 20;
    my $end  = Time::HiRes::time() + $secs;
    my %done;
    $FAILED = undef;
    while (keys %done < @jobs) {
        my ($r, $w) = (IO::Select->new, IO::Select->new);
        for my $i (0 .. $#jobs) {
            next if $done{$i};
            my ($conn, $step) = @{ $jobs[$i] };
            my $res = eval { $step->() };
            if (!defined $res) { $FAILED = $i; die $@ }
            if ($res == DONE) { $done{$i} = 1; next }
            my $want = $conn->want;
            $r->add($conn->fileno) if $want & WANT_READ;
            $w->add($conn->fileno) if $want & WANT_WRITE;
        }
        last if keys %done == @jobs;
        my $left = $end - Time::HiRes::time();
        die "drive_pair: did not finish in time\n" if $left <= 0;
        IO::Select->select($r, $w, undef, $left);
    }
    return 1;
}

sub handshake_pair {
    my (@conns) = @_;
    return drive_pair(map { my $c = $_; [$c, sub { $c->handshake }] } @conns);
}

# Reads until clean EOF (or $limit bytes), waiting on want; returns the data.
sub read_all {
    my ($conn, $limit, $secs) = @_;
    my $end = Time::HiRes::time() + ($secs // 30);
    my $buf = '';
    while (!defined $limit || length($buf) < $limit) {
        my $d = $conn->read;
        if (!defined $d) {
            my $left = $end - Time::HiRes::time();
            die "read_all: timed out with " . length($buf) . " bytes\n" if $left <= 0;
            wait_for($conn, $left);
            next;
        }
        last if $d eq '';
        $buf .= $d;
    }
    return $buf;
}

# Writes everything (partial counts), then flushes.
sub write_all {
    my ($conn, $data, $secs) = @_;
    my $end = Time::HiRes::time() + ($secs // 30);
    my $off = 0;
    while ($off < length $data) {
        my $n = $conn->write(substr($data, $off, 1 << 20));
        $off += $n;
        next if $n;
        my $left = $end - Time::HiRes::time();
        die "write_all: timed out at $off\n" if $left <= 0;
        wait_for($conn, $left);
    }
    drive($conn, sub { $conn->flush }, $end - Time::HiRes::time());
    return $off;
}

sub rss_kb {
    open my $fh, '<', '/proc/self/status' or return undef;
    while (<$fh>) { return $1 if /^VmRSS:\s+(\d+)\s+kB/ }
    return undef;
}

# exception_ok(sub {...}, 'Class', qr/text/, 'name'): the code croaks an
# object of Class whose text matches.
sub exception_ok {
    my ($code, $class, $re, $name) = @_;
    my $ok = eval { $code->(); 1 };
    my $e  = $@;
    if ($ok) {
        fail("$name: no exception");
        return undef;
    }
    my $good = ref($e) && $e->isa($class) && "$e" =~ $re;
    ok($good, $name) or diag("got: " . (ref($e) || 'plain') . ": $e");
    return $e;
}

1;
