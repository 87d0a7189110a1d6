//! The exec channel between `dep8 virt-server`'s auxverb (`dep8 virt-exec
//! SOCKET ARGV...`, this module's [`client`]) and the server, over a unix
//! socket in the server's private temporary dir.
//!
//! Frames are `KIND (1 byte) | LENGTH (u32, big endian) | PAYLOAD`, so any
//! bytes pass. The client sends one [`ARGV`] frame (arguments separated by
//! NUL bytes), then its stdin as [`STDIN`] frames, an empty one meaning end
//! of file. The server streams [`STDOUT`] and [`STDERR`] frames as output
//! arrives and ends with [`EXIT`] (`exit N` or `signal N`) or [`FAIL`] (a
//! message: the testbed failed). A client that disconnects early has its
//! command killed.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const ARGV: u8 = b'A';
pub const STDIN: u8 = b'0';
pub const STDOUT: u8 = b'1';
pub const STDERR: u8 = b'2';
pub const EXIT: u8 = b'X';
pub const FAIL: u8 = b'F';

/// Data frames carry at most this much; larger reads are split.
pub const CHUNK: usize = 64 * 1024;
/// No frame may be larger (an argv frame is the only big one).
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// The auxverb's status when the channel itself fails, as the protocol says.
const TRANSPORT_FAILURE: i32 = 255;

pub async fn write_frame(
    to: &mut (impl AsyncWrite + Unpin),
    kind: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| std::io::Error::other("frame payload too large"))?;
    let mut header = [0u8; 5];
    header[0] = kind;
    header[1..].copy_from_slice(&len.to_be_bytes());
    to.write_all(&header).await?;
    to.write_all(payload).await?;
    to.flush().await
}

/// The next frame, or `None` at a clean end of stream between frames.
pub async fn read_frame(
    from: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match from.read_exact(&mut header[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    from.read_exact(&mut header[1..]).await?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is larger than {MAX_FRAME}"),
        ));
    }
    let mut payload = vec![0u8; len];
    from.read_exact(&mut payload).await?;
    Ok(Some((header[0], payload)))
}

/// An argv as one [`ARGV`] payload.
pub fn encode_argv(argv: &[OsString]) -> Vec<u8> {
    argv.iter()
        .map(|a| a.as_bytes())
        .collect::<Vec<_>>()
        .join(&0u8)
}

pub fn decode_argv(payload: &[u8]) -> Vec<OsString> {
    if payload.is_empty() {
        return Vec::new();
    }
    payload
        .split(|b| *b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect()
}

/// `dep8 virt-exec SOCKET ARGV...`: runs ARGV in the testbed of the server
/// listening on SOCKET, plumbing stdin, stdout and stderr, and exits with
/// its status (or dies by its signal). Exits 255 if the channel fails.
pub async fn client(socket: &Path, argv: &[OsString]) -> ! {
    let fail = |what: String| -> ! {
        eprintln!("dep8 virt-exec: {what}");
        std::process::exit(TRANSPORT_FAILURE)
    };
    if argv.is_empty() {
        fail("no command given".into());
    }
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) => fail(format!("cannot connect to {}: {e}", socket.display())),
    };
    let (mut from_server, mut to_server) = stream.into_split();
    if let Err(e) = write_frame(&mut to_server, ARGV, &encode_argv(argv)).await {
        fail(format!("sending the command: {e}"));
    }
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; CHUNK];
        loop {
            // An unreadable stdin counts as empty.
            let n = stdin.read(&mut buf).await.unwrap_or(0);
            if write_frame(&mut to_server, STDIN, &buf[..n]).await.is_err() || n == 0 {
                break;
            }
        }
        // Keep the socket open: closing it would mean "kill the command".
        std::future::pending::<()>().await;
    });
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    loop {
        match read_frame(&mut from_server).await {
            // A reader that went away does not stop the command.
            Ok(Some((STDOUT, data))) => {
                let _ = async {
                    stdout.write_all(&data).await?;
                    stdout.flush().await
                }
                .await;
            }
            Ok(Some((STDERR, data))) => {
                let _ = async {
                    stderr.write_all(&data).await?;
                    stderr.flush().await
                }
                .await;
            }
            Ok(Some((EXIT, status))) => exit_like(&String::from_utf8_lossy(&status)),
            Ok(Some((FAIL, message))) => fail(String::from_utf8_lossy(&message).into_owned()),
            Ok(Some((kind, _))) => fail(format!(
                "unexpected frame {:?} from the server",
                kind as char
            )),
            Ok(None) => fail("the virt server closed the connection".into()),
            Err(e) => fail(format!("reading from the virt server: {e}")),
        }
    }
}

/// Exits with `exit N`, or dies by the signal of `signal N`.
fn exit_like(status: &str) -> ! {
    match status.split_once(' ') {
        Some(("exit", code)) => std::process::exit(code.parse().unwrap_or(TRANSPORT_FAILURE)),
        Some(("signal", sig)) => {
            let sig: i32 = sig.parse().unwrap_or(0);
            dep8_testbed::exec::die_by_signal(sig);
            std::process::exit(128 + sig)
        }
        _ => {
            eprintln!("dep8 virt-exec: bad exit status {status:?} from the virt server");
            std::process::exit(TRANSPORT_FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_round_trip() {
        let argv: Vec<OsString> = ["sh", "-c", "", "a b\n", "\u{fc}"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(decode_argv(&encode_argv(&argv)), argv);
        assert!(decode_argv(b"").is_empty());
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, STDOUT, &[0, 255, 10]).await.unwrap();
        write_frame(&mut a, STDIN, b"").await.unwrap();
        drop(a);
        assert_eq!(
            read_frame(&mut b).await.unwrap(),
            Some((STDOUT, vec![0, 255, 10]))
        );
        assert_eq!(read_frame(&mut b).await.unwrap(), Some((STDIN, vec![])));
        assert_eq!(read_frame(&mut b).await.unwrap(), None);
    }
}
