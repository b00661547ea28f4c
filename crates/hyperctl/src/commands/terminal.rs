//! The terminal side of attach, exec and run: copying a hijacked stream to and from
//! the terminal, raw mode, window sizes.
use hyper::Method;
use hyperctl::client::{parse_stdcopy, Client};
use std::io::Write;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Copies a hijacked connection to the terminal (stdcopy frames to stdout and stderr,
/// or raw with a tty, the terminal in raw mode meanwhile) and, with `stdin`, standard
/// input to the connection. Returns when the daemon closes the connection.
pub(crate) async fn pump(
    conn: hyperctl::client::Hijacked,
    tty: bool,
    stdin: bool,
) -> anyhow::Result<()> {
    let _raw = if tty { RawTerminal::enter() } else { None };
    let (mut rd, mut wr) = tokio::io::split(conn);
    if stdin {
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 8192];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if wr.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = wr.shutdown().await;
        });
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        let n = rd.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return Ok(());
        }
        if tty {
            let mut out = std::io::stdout();
            out.write_all(&chunk[..n])?;
            out.flush()?;
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        let (frames, used) = parse_stdcopy(&buf);
        for (stream, data) in frames {
            if stream == 2 {
                let mut e = std::io::stderr();
                e.write_all(data)?;
                e.flush()?;
            } else {
                let mut o = std::io::stdout();
                o.write_all(data)?;
                o.flush()?;
            }
        }
        buf.drain(..used);
    }
}

/// The local terminal's size (rows, columns), if standard output is a terminal.
pub(crate) fn window_size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the local, which outlives the call.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Sends the terminal's size now and after every SIGWINCH (`target` is
/// `container=ID` or `exec=ID`).
pub(crate) async fn forward_window_size(client: Client, target: String) {
    let Ok(mut winch) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
    else {
        return;
    };
    loop {
        if let Some((h, w)) = window_size() {
            let _ = client
                .json(
                    Method::POST,
                    &format!("/tty/resize?{target}&h={h}&w={w}"),
                    None,
                )
                .await;
        }
        if winch.recv().await.is_none() {
            return;
        }
    }
}

/// Puts the local terminal in raw mode while a `-t` container is attached.
pub(crate) struct RawTerminal(nix::sys::termios::Termios);

impl RawTerminal {
    pub(crate) fn enter() -> Option<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}
