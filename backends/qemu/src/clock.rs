//! The clock link: a virtio-serial port on which a small shell loop in the
//! guest sets the guest's clock to the time the host writes, and answers.
//!
//! After a `loadvm` the guest's clock is where the snapshot left it, and
//! dep8 must set it before anything runs. Over ssh that took about 0.5 s
//! under TCG: `loadvm` throws away every translated block, so sshd's
//! code, its fork and a login shell all run cold. This loop, idle in the
//! snapshot, answers in about 0.1 s, and tells the host the guest is back.
//!
//! The host's side stays connected for the VM's life: a guest that reads
//! the port while nothing is connected on the host reads end of file.

use dep8_backend_ssh::transport::CLOCK_STALE_AFTER;
use dep8_testbed::{Result, TestbedError};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// The clock link's virtio-serial port name.
pub const CLOCK_PORT: &str = "org.dep8.clock";

/// `start_clock NAME`: (re)starts the loop on the guest's virtio-serial
/// port NAME, in a session of its own recorded in /run, ending the one a
/// previous call started. Each line the host writes is a time in seconds
/// since the epoch; the loop sets the clock to it and answers `set TIME`
/// (or `failed TIME`).
///
/// Where the kernel's `clock_settime` number is known, the loop is perl
/// (`perl-base` is essential in Debian) calling it, so that no process
/// starts after a `loadvm`: a cold `fork` and `exec` of `date` cost about
/// 0.1 s under TCG. Elsewhere it is a shell loop running `date`.
pub const START_CLOCK: &str = r##"start_clock() {
  pid=/run/dep8-clock.pid
  [ -s $pid ] && kill -KILL -- -$(cat $pid) 2>/dev/null
  rm -f $pid
  name=$(grep -lx "$1" /sys/class/virtio-ports/*/name) || return 1
  dir=${name%/name} port=/dev/${dir##*/}
  case $(uname -m) in x86_64) nr=227;; aarch64|riscv64) nr=112;; *) nr=;; esac
  if [ -n "$nr" ] && command -v perl >/dev/null; then
    cat > /run/dep8-clock.pl <<'EOF'
open(my $port, "+<", $ARGV[0]) or die "$ARGV[0]: $!\n";
my $buf = "";
while (sysread($port, $buf, 4096, length $buf)) {
    while ($buf =~ s/^([^\n]*)\n//) {
        my $t = $1;
        my ($s, $f) = $t =~ /^([0-9]+)(?:\.([0-9]{0,9}))?$/ or next;
        my $ns = substr(($f // "") . "000000000", 0, 9);
        my $ok = syscall($ARGV[1], 0, pack("qq", $s, $ns)) == 0;
        syswrite($port, ($ok ? "set" : "failed") . " $t\n");
    }
}
EOF
    loop='exec perl /run/dep8-clock.pl "$2" "$3"'
  else
    loop='exec 3<>"$2"; while read -r t <&3; do
      if date -u -s "@$t" >/dev/null 2>&1; then echo "set $t"; else echo "failed $t"; fi >&3
    done'
  fi
  setsid sh -c "echo \$\$ > \"\$1\"; $loop" sh $pid $port "$nr" </dev/null >/dev/null 2>&1 &
  i=0
  until [ -s $pid ]; do
    [ $i -lt 100 ] || { echo "the clock loop on $1 did not start" >&2; return 1; }
    sleep 0.05; i=$((i+1))
  done
}"##;

/// The host's side of the clock link.
pub struct ClockLink {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

fn link_error(err: impl std::fmt::Display) -> TestbedError {
    TestbedError::failure("the guest's clock link", err)
}

impl ClockLink {
    /// Connects to the socket of a QEMU that is already listening on it.
    pub async fn connect(socket: &Path) -> Result<Self> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| link_error(format!("{}: {e}", socket.display())))?;
        let (reader, writer) = stream.into_split();
        Ok(ClockLink {
            lines: BufReader::new(reader).lines(),
            writer,
        })
    }

    /// Sets the guest's clock to the host's, waiting up to `limit` for the
    /// loop's answer. The guest sets the time the host sent, so it is
    /// behind by however long the request took to reach the loop: an
    /// answer that took longer than [`CLOCK_STALE_AFTER`] (a guest starved of CPU
    /// right after `loadvm`) means setting it once more, which then takes
    /// milliseconds.
    pub async fn set(&mut self, limit: Duration) -> Result<()> {
        let started = tokio::time::Instant::now();
        self.set_once(limit).await?;
        if started.elapsed() > CLOCK_STALE_AFTER {
            self.set_once(limit).await?;
        }
        Ok(())
    }

    /// One request and its answer. Answers to earlier requests that came
    /// too late are skipped: each request carries its own time.
    async fn set_once(&mut self, limit: Duration) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(link_error)?;
        let time = format!("{:.3}", now.as_secs_f64());
        let (set, failed) = (format!("set {time}"), format!("failed {time}"));
        let exchange = async {
            self.writer
                .write_all(format!("{time}\n").as_bytes())
                .await
                .map_err(link_error)?;
            loop {
                match self.lines.next_line().await.map_err(link_error)? {
                    Some(line) if line == set => return Ok(()),
                    Some(line) if line == failed => {
                        return Err(link_error("the guest could not set its clock"))
                    }
                    Some(_) => continue,
                    None => return Err(link_error("qemu closed it")),
                }
            }
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| link_error(format!("no answer within {limit:?}")))?
    }
}
