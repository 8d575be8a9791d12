# The POD parses and documents every public method of every class.
use strict;
use warnings;
use Test::More;
use Pod::Simple::Checker;
use Net::TLSPump;

my $pm = $INC{'Net/TLSPump.pm'};
my $checker = Pod::Simple::Checker->new;
my $report  = '';
$checker->output_string(\$report);
$checker->parse_file($pm);
ok($checker->content_seen, 'the module has POD');
is($report, '', 'the POD has no errors') or diag($report);

open my $fh, '<', $pm or die $!;
my $pod = do { local $/; <$fh> };
my %documented;
$documented{$1} = 1 while $pod =~ /^=(?:head\d|item)\s+(.+)$/mg;
my $doc_text = join "\n", keys %documented;

for my $class (qw(Net::TLSPump Net::TLSPump::Context Net::TLSPump::Conn Net::TLSPump::Child
                  Net::TLSPump::Server Net::TLSPump::Error)) {
    no strict 'refs';
    my @subs = grep { defined &{"${class}::$_"} && !/^(?:DESTROY|CLONE_SKIP|BEGIN|END|import|isa|can|AUTOLOAD|bootstrap|\(.*)$/ && !/^_/ }
               keys %{"${class}::"};
    @subs = grep { !/^(?:CORE_VERSION|DONE|WANT_READ|WANT_WRITE)$/ } @subs if $class eq 'Net::TLSPump';
    ok(@subs, "$class has methods");
    for my $m (sort @subs) {
        ok($doc_text =~ /(?:^|[\s,])\Q$m\E(?:$|[\s,(])/m || $pod =~ /C<\Q$m\E>/, "$class\::$m is documented");
    }
}
ok($pod =~ /^=(?:head\d|item) .*\Q$_\E/m, "class $_ has a section")
  for qw(Net::TLSPump::Context Net::TLSPump::Conn Net::TLSPump::Child Net::TLSPump::Server
         Net::TLSPump::Error
         Net::TLSPump::TruncatedError Net::TLSPump::ResetError Net::TLSPump::ClosedError Net::TLSPump::Timeout);

done_testing;
